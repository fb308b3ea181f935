"""Django MongoDB Backend's Queryable Encryption, end to end through markd (issue 6).

    Django ORM -> django-mongodb-backend -> pymongo auto-encryption -> libmongocrypt
        -> markd, both ways (the `stack` fixture's parameter):
           daemon:       a real process, `mongocryptd_uri` + `mongocryptd_bypass_spawn`
           crypt_shared: in-process, the howto's own settings with markd's library,
                         `crypt_shared_lib_path=markd.crypt_shared.library_path()`,
                         `crypt_shared_lib_required=True`
        -> the stand-in mongod (tests/support/fake_mongod.py with `emulate_database`)

The project is examples/django_qe (the backend's QE howto: Patient / PatientRecord / Billing, the
EncryptedRouter, `migrate --database encrypted`), configured through its environment overrides to
use the stand-in and a markd on free ports.

What is checked: the migration's `create` carries encryptedFields; saved documents reach the
stand-in with the encrypted fields as BinData 6 ciphertext and no plaintext; equality and range
queries reach it as encrypted find payloads (and, because the stand-in matches QE tokens the way
mongod does, they return the right rows); the queries the backend documents as unsupported fail
with the messages its own encryption tests expect, word for word.

django-mongodb-backend has Queryable Encryption from 6.0.1 on, which needs Django 6 and, on paper,
Python >= 3.12.  On Python 3.11 it is installed with `pip install --ignore-requires-python` and the
one missing piece Django 6 imports from the standard library, `inspect.markcoroutinefunction`, is
supplied from asgiref (which has it for exactly this purpose) before Django is imported.
"""

from __future__ import annotations

import datetime
import decimal
import inspect
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.codec_options import CodecOptions, DatetimeConversion

from tests.support.fake_mongod import FakeMongod, emulate_database, fle2_payload
from tests.support.process import MarkdProcess

if sys.version_info < (3, 12) and not hasattr(inspect, "markcoroutinefunction"):
    try:
        from asgiref.sync import markcoroutinefunction
    except ImportError:
        pass
    else:
        inspect.markcoroutinefunction = markcoroutinefunction  # type: ignore[attr-defined]

django = pytest.importorskip("django", reason="django-mongodb-backend[encryption] is not installed")
backend_fields = pytest.importorskip("django_mongodb_backend.fields",
                                     reason="django-mongodb-backend[encryption] is not installed")
if not hasattr(backend_fields, "EncryptedCharField"):
    pytest.skip("this django-mongodb-backend has no Queryable Encryption (needs >= 6.0.1)", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_qe"
ENCRYPTED_DB = "markd_qe_encrypted"
PLAIN_DB = "markd_qe_plain"
SSN = "123-45-6789"
CARD = "4111111111111111"

# FLE2 blob subtypes (first byte of the BinData 6 payload), libmongocrypt's names.
INSERT_UPDATE_PAYLOAD = 11  # FLE2InsertUpdatePayloadV2: an indexed (equality/range) value written
FIND_EQUALITY_PAYLOAD = 12  # FLE2FindEqualityPayloadV2
FIND_RANGE_PAYLOAD = 13  # FLE2FindRangePayloadV2
UNINDEXED_VALUE = 16  # FLE2UnindexedEncryptedValueV2: an unindexed value written
OPTIONS = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)


MODES = ["daemon", "crypt_shared"]


class Stack:
    def __init__(self, mode: str, mongod: FakeMongod, markd: MarkdProcess | None) -> None:
        self.mode = mode
        self.mongod = mongod
        self.markd = markd
        # What libmongocrypt asked markd, and markd's reply (a document) or error (a string).
        self.exchanges: list[tuple[dict[str, Any], dict[str, Any] | str]] = []

    def record_markd_exchanges(self) -> Any:
        """Wrap pymongo's call to mongocryptd (markd) to keep each command and its answer."""
        from pymongo.synchronous.encryption import _EncryptionIO

        original = _EncryptionIO.mark_command
        exchanges = self.exchanges

        def mark_command(io: Any, database: str, command: bytes) -> Any:
            sent = bson.decode(bytes(command), OPTIONS)
            try:
                reply = original(io, database, command)
            except Exception as error:
                exchanges.append((sent, str(error)))
                raise
            exchanges.append((sent, bson.decode(bytes(reply), OPTIONS)))
            return reply

        _EncryptionIO.mark_command = mark_command  # type: ignore[method-assign]
        return original

    def markd_answers(self, name: str, collection: str) -> list[dict[str, Any] | str]:
        return [answer for sent, answer in self.exchanges if sent.get(name) == collection]

    def assert_marked_by_markd(self, name: str, collection: str) -> None:
        """markd made the markings: the daemon's answer had placeholders, or (in-process) nothing was
        asked of a mongocryptd at all, so libmongocrypt's markings came from the library the settings name."""
        if self.mode == "daemon":
            answer = self.markd_answers(name, collection)[-1]
            assert isinstance(answer, dict) and answer["hasEncryptionPlaceholders"] is True, answer
        else:
            assert self.exchanges == []

    def commands(self, name: str, collection: str | None = None) -> list[dict[str, Any]]:
        return [c.body for c in self.mongod.received(name)
                if c.database == ENCRYPTED_DB and (collection is None or c.body.get(name) == collection)]

    def last(self, name: str, collection: str) -> dict[str, Any]:
        found = self.commands(name, collection)
        assert found, f"no {name} on {collection} reached the stand-in"
        return found[-1]

    def stored(self, collection: str) -> list[dict[str, Any]]:
        return self.mongod.documents(f"{ENCRYPTED_DB}.{collection}")


# Django is set up once per process, by the first mode; the second reloads the example's settings.
_django_set_up_here = False
# What the backend's connections cache about their MongoClient, dropped with it between modes.
_CONNECTION_CACHES = ("auto_encryption_opts", "client_encryption", "key_vault", "kms_provider", "kms_credentials")


def _configure_django() -> None:
    global _django_set_up_here
    if not _django_set_up_here:
        django.setup()
        _django_set_up_here = True
        return
    import importlib

    from django.conf import settings
    from qe_project import settings as example_settings

    importlib.reload(example_settings)
    # In place: the connections hold these very dicts (with Django's defaults filled in).
    for alias, database in example_settings.DATABASES.items():
        settings.DATABASES[alias].update(database)


def _close_connections() -> None:
    """Close the backend's MongoClients (connections.close_all() leaves them open): libmongocrypt lets
    go of the crypt_shared library only when its last client is gone."""
    from django.db import connections

    for connection in connections.all():
        connection.close_pool()
        for cached in _CONNECTION_CACHES:
            connection.__dict__.pop(cached, None)


@pytest.fixture(scope="module", params=MODES)
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    from django.conf import settings

    mode = request.param
    if settings.configured and not _django_set_up_here:
        pytest.skip("Django settings were configured by another test module")
    if mode == "crypt_shared":
        try:
            import markd.crypt_shared

            markd.crypt_shared.library_path()
        except markd.crypt_shared.LibraryUnavailable as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(str(exc))
    mongod = emulate_database(FakeMongod()).start()
    markd_process = MarkdProcess().start() if mode == "daemon" else None
    environment = {
        "DJANGO_SETTINGS_MODULE": "qe_project.settings",
        "MONGODB_URI": f"{mongod.uri}/?directConnection=true&serverSelectionTimeoutMS=30000",
        "MARKD_URI": markd_process.uri if markd_process else "mongodb://127.0.0.1:1",  # never asked
        "MARKD_CRYPT_SHARED": "1" if mode == "crypt_shared" else "",
        "QE_DB_NAME": PLAIN_DB,
        "QE_ENCRYPTED_DB_NAME": ENCRYPTED_DB,
    }
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    sys.path.insert(0, str(EXAMPLE))
    stack = Stack(mode, mongod, markd_process)
    original_mark_command = stack.record_markd_exchanges()
    try:
        _configure_django()
        from django.core.management import call_command

        call_command("migrate", database="encrypted", verbosity=0)
        yield stack
    finally:
        from pymongo.synchronous.encryption import _EncryptionIO

        _close_connections()
        _EncryptionIO.mark_command = original_mark_command  # type: ignore[method-assign]
        if markd_process is not None:
            markd_process.cleanup()
        mongod.stop()
        sys.path.remove(str(EXAMPLE))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_settings_are_the_howtos(stack: Stack) -> None:
    from django.db import connections

    options = connections["encrypted"].auto_encryption_opts
    if stack.mode == "crypt_shared":
        import markd.crypt_shared

        assert options._crypt_shared_lib_path == markd.crypt_shared.library_path()
        assert options._crypt_shared_lib_required is True
    else:
        assert options._mongocryptd_uri == stack.markd.uri and options._mongocryptd_bypass_spawn is True


def encrypted(value: Any, *blob_subtypes: int) -> bool:
    return isinstance(value, Binary) and value.subtype == 6 and len(value) > 1 and value[0] in blob_subtypes


def values_at(node: Any, path: str) -> list[Any]:
    """Every operand a filter compares the field `path` with (through $and/$or/$nor/$eq/$in/$gt...)."""
    found: list[Any] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == path:
                if isinstance(value, dict) and value and all(str(k).startswith("$") for k in value):
                    for operand in value.values():
                        found.extend(operand if isinstance(operand, list) else [operand])
                else:
                    found.append(value)
            else:
                found.extend(values_at(value, path))
    elif isinstance(node, list):
        for item in node:
            found.extend(values_at(item, path))
    return found


def match_stage(command: dict[str, Any]) -> dict[str, Any]:
    stages = [stage["$match"] for stage in command["pipeline"] if "$match" in stage]
    assert stages, f"no $match in {command['pipeline']}"
    return stages[0]


def assert_no_plaintext(command: dict[str, Any], *secrets: str) -> None:
    raw = bson.encode(command)
    for secret in secrets:
        assert secret.encode() not in raw, f"plaintext {secret!r} reached the stand-in"


# --- migrate ---------------------------------------------------------------------------------

def test_migrate_creates_the_encrypted_collection(stack: Stack) -> None:
    create = stack.last("create", "medical_patient")
    fields = {field["path"]: field for field in create["encryptedFields"]["fields"]}
    assert set(fields) == {"patient_record.ssn", "patient_record.billing"}
    assert fields["patient_record.ssn"]["queries"] == {"queryType": "equality"}
    assert fields["patient_record.ssn"]["bsonType"] == "string"
    assert "queries" not in fields["patient_record.billing"]
    assert fields["patient_record.billing"]["bsonType"] == "object"
    for field in fields.values():
        assert isinstance(field["keyId"], Binary) and field["keyId"].subtype == 4
    # pymongo's create_collection(encryptedFields=...) made the state collections and the index too.
    created = [c["create"] for c in stack.commands("create")]
    assert "enxcol_.medical_patient.esc" in created and "enxcol_.medical_patient.ecoc" in created
    indexes = stack.last("createIndexes", "medical_patient")["indexes"]
    assert [index["key"] for index in indexes] == [{"__safeContent__": 1}]
    # Every model with encrypted fields got its encrypted collection, with the field's query type.
    expected = {"medical_integersample": ("long", "range"), "medical_datesample": ("date", "range"),
                "medical_decimalsample": ("decimal", "range"), "medical_floatsample": ("double", "range"),
                "medical_smallintegersample": ("int", "range"), "medical_uuidsample": ("string", "equality"),
                "medical_binarysample": ("binData", "equality"), "medical_booleansample": ("bool", "equality")}
    for collection, (bson_type, query_type) in expected.items():
        (field,) = stack.last("create", collection)["encryptedFields"]["fields"]
        assert (field["path"], field["bsonType"], field["queries"]["queryType"]) == ("value", bson_type, query_type)


# --- the howto: save a Patient, find it by SSN -------------------------------------------------

@pytest.fixture(scope="module")
def patients(stack: Stack) -> list[Any]:
    from medical.models import Billing, Patient, PatientRecord

    john = Patient(name="John Doe", patient_id=1001, patient_record=PatientRecord(
        ssn=SSN, billing=Billing(cc_type="Visa", cc_number=CARD), bill_amount=decimal.Decimal("250.75")))
    john.save()
    jane = Patient.objects.create(name="Jane Roe", patient_id=1002, patient_record=PatientRecord(
        ssn="987-65-4321", billing=Billing(cc_type="Amex", cc_number="378282246310005"),
        bill_amount=decimal.Decimal("12.00")))
    return [john, jane]


def test_saved_patient_reaches_mongod_as_ciphertext(stack: Stack, patients: list[Any]) -> None:
    inserts = stack.commands("insert", "medical_patient")
    assert len(inserts) == 2
    (document,) = inserts[0]["documents"]
    assert document["name"] == "John Doe"  # plain fields stay plain
    record = document["patient_record"]
    assert encrypted(record["ssn"], INSERT_UPDATE_PAYLOAD), record["ssn"]
    assert encrypted(record["billing"], UNINDEXED_VALUE), record["billing"]
    assert record["bill_amount"] == bson.Decimal128("250.75")
    assert_no_plaintext(inserts[0], SSN, CARD, "Visa")
    # It was markd that marked the fields for libmongocrypt to encrypt.
    stack.assert_marked_by_markd("insert", "medical_patient")
    # What the stand-in stored is what it was sent: ciphertext.
    stored = stack.stored("medical_patient")
    assert all(encrypted(d["patient_record"]["ssn"], INSERT_UPDATE_PAYLOAD) for d in stored)


def test_get_patient_by_ssn(stack: Stack, patients: list[Any]) -> None:
    from medical.models import Patient

    patient = Patient.objects.get(patient_record__ssn=SSN)
    assert patient == patients[0]
    assert patient.name == "John Doe"
    assert patient.patient_record.ssn == SSN
    assert patient.patient_record.billing.cc_number == CARD
    query = stack.last("aggregate", "medical_patient")
    operands = values_at(match_stage(query), "patient_record.ssn")
    assert operands and all(encrypted(value, FIND_EQUALITY_PAYLOAD) for value in operands), operands
    assert_no_plaintext(query, SSN)
    stack.assert_marked_by_markd("aggregate", "medical_patient")
    assert Patient.objects.get(patient_record__ssn="987-65-4321").name == "Jane Roe"
    assert not Patient.objects.filter(patient_record__ssn="000-00-0000").exists()


def test_update_and_delete_a_patient(stack: Stack, patients: list[Any]) -> None:
    from medical.models import Billing, Patient

    jane = Patient.objects.get(patient_record__ssn="987-65-4321")
    jane.name = "Jane Q. Roe"
    jane.patient_record.billing = Billing(cc_type="Visa", cc_number="4000056655665556")
    jane.save()
    update = stack.last("update", "medical_patient")
    (statement,) = update["updates"]
    new_record = statement["u"]["$set"]["patient_record"]
    assert encrypted(new_record["ssn"], INSERT_UPDATE_PAYLOAD) and encrypted(new_record["billing"], UNINDEXED_VALUE)
    assert_no_plaintext(update, "987-65-4321", "4000056655665556")
    again = Patient.objects.get(patient_record__ssn="987-65-4321")
    assert (again.name, again.patient_record.billing.cc_number) == ("Jane Q. Roe", "4000056655665556")
    again.delete()
    assert stack.commands("delete", "medical_patient")
    assert not Patient.objects.filter(patient_record__ssn="987-65-4321").exists()
    assert [p.name for p in Patient.objects.all()] == ["John Doe"]


# --- equality-queryable field types -----------------------------------------------------------

EQUALITY_VALUES = [
    ("BinarySample", b"\x00\x01\x02", b"\x09\x08"),
    ("BooleanSample", True, False),
    ("CharSample", "hello", "world"),
    ("EmailSample", "patient@example.com", "doctor@example.com"),
    ("GenericIPAddressSample", "192.168.0.1", "10.0.0.7"),
    ("ObjectIdSample", bson.ObjectId("65f0a1b2c3d4e5f6a7b8c9d0"), bson.ObjectId("65f0a1b2c3d4e5f6a7b8c9d1")),
    ("TextSample", "some text", "other text"),
    ("URLSample", "https://example.com", "https://example.org"),
    ("UUIDSample", uuid.UUID("12345678-1234-5678-1234-567812345678"),
     uuid.UUID("87654321-4321-8765-4321-876543218765")),
]


@pytest.mark.parametrize(("model_name", "value", "other"), EQUALITY_VALUES,
                         ids=[row[0] for row in EQUALITY_VALUES])
def test_equality_queries(stack: Stack, model_name: str, value: Any, other: Any) -> None:
    from django.apps import apps
    from django.db.models import Q

    model = apps.get_model("medical", model_name)
    collection = model._meta.db_table
    first = model.objects.create(value=value)
    second = model.objects.create(value=other)
    for document in stack.commands("insert", collection)[-2:]:
        assert encrypted(document["documents"][0]["value"], INSERT_UPDATE_PAYLOAD)
    assert model.objects.get(value=value) == first
    assert model.objects.get(value__in=[value]) == first
    assert list(model.objects.exclude(value=value)) == [second]
    assert set(model.objects.filter(Q(value=value) | Q(value=other))) == {first, second}
    assert list(model.objects.filter(Q(value__in=[value, other]) & ~Q(value=other))) == [first]
    assert model.objects.get(value=value).value == value  # decrypted by the driver
    queries = stack.commands("aggregate", collection)[-6:]
    for query in queries:
        operands = values_at(match_stage(query), "value")
        assert operands and all(encrypted(o, FIND_EQUALITY_PAYLOAD) for o in operands), query


# --- range-queryable field types --------------------------------------------------------------

RANGE_VALUES = [
    ("IntegerSample", 5, 10, 7),
    ("BigIntegerSample", 100, 200, 150),
    ("SmallIntegerSample", -5, 2, 0),
    ("PositiveIntegerSample", 10, 20, 15),
    ("PositiveSmallIntegerSample", 5, 8, 6),
    ("PositiveBigIntegerSample", 100, 500, 200),
    ("FloatSample", 1.25, 4.5, 3.0),
    ("DecimalSample", decimal.Decimal("123.45"), decimal.Decimal("200.50"), decimal.Decimal("150")),
    ("DateSample", datetime.date(2024, 6, 1), datetime.date(2024, 6, 10), datetime.date(2024, 6, 5)),
    ("DateTimeSample", datetime.datetime(2024, 6, 1, 12, tzinfo=datetime.UTC),
     datetime.datetime(2024, 6, 2, 12, tzinfo=datetime.UTC), datetime.datetime(2024, 6, 2, tzinfo=datetime.UTC)),
    ("DurationSample", datetime.timedelta(days=3), datetime.timedelta(days=10), datetime.timedelta(days=5)),
    ("TimeSample", datetime.time(10), datetime.time(15), datetime.time(12)),
]


@pytest.mark.parametrize(("model_name", "low", "high", "threshold"), RANGE_VALUES,
                         ids=[row[0] for row in RANGE_VALUES])
def test_range_queries(stack: Stack, model_name: str, low: Any, high: Any, threshold: Any) -> None:
    from django.apps import apps
    from django.db.models import Q

    model = apps.get_model("medical", model_name)
    collection = model._meta.db_table
    small = model.objects.create(value=low)
    big = model.objects.create(value=high)
    for document in stack.commands("insert", collection)[-2:]:
        assert encrypted(document["documents"][0]["value"], INSERT_UPDATE_PAYLOAD)
    before = len(stack.commands("aggregate", collection))
    assert model.objects.get(value=low) == small
    assert model.objects.get(value=high).value == high
    assert list(model.objects.exclude(value=high)) == [small]
    assert set(model.objects.filter(Q(value=high) | Q(value=low))) == {small, big}
    assert list(model.objects.filter(value__gt=threshold)) == [big]
    assert list(model.objects.filter(value__gte=threshold)) == [big]
    assert list(model.objects.filter(value__lt=threshold)) == [small]
    assert list(model.objects.filter(value__lte=threshold)) == [small]
    assert list(model.objects.filter(value__in=[low])) == [small]
    assert set(model.objects.filter(value__range=[low, high])) == {small, big}
    assert list(model.objects.filter(value__range=[threshold, high])) == [big]
    assert list(model.objects.filter(Q(value__gt=low) & Q(value__lte=high))) == [big]
    assert set(model.objects.filter(Q(value__lt=threshold) | Q(value__gte=high))) == {small, big}
    queries = stack.commands("aggregate", collection)[before:]
    assert len(queries) == 13
    for query in queries:
        operands = values_at(match_stage(query), "value")
        assert operands and all(encrypted(o, FIND_RANGE_PAYLOAD) for o in operands), query
        # Each range predicate carries one full payload with the edges to look up.
        assert any("payload" in (fle2_payload(o) or (0, {}))[1] for o in operands), query


# --- other supported QuerySet operations from the backend's tests --------------------------------

def test_other_supported_operations(stack: Stack) -> None:
    from medical.models import CareTeam, CharSample, Clinic, Clinician, Doctor, DoseSchedule

    CharSample.objects.bulk_create([CharSample(value="abc"), CharSample(value="xyz")])
    stored = stack.stored("medical_charsample")
    assert len(stored) >= 2 and all(encrypted(d["value"], INSERT_UPDATE_PAYLOAD) for d in stored)
    assert CharSample.objects.filter(value__in=["abc", "xyz"]).exists()
    assert sorted(v for (v,) in CharSample.objects.filter(value__in=["abc", "xyz"]).values_list("value")) == [
        "abc", "xyz"]
    obj = CharSample.objects.get(value="abc")
    assert CharSample.objects.contains(obj)
    first, created = CharSample.objects.get_or_create(value="once")
    assert created and CharSample.objects.get_or_create(value="once") == (first, False)
    obj, created = CharSample.objects.update_or_create(value="upd", defaults={"plain": "v1"})
    assert created
    obj, created = CharSample.objects.update_or_create(value="upd", defaults={"plain": "v2"})
    assert not created and CharSample.objects.get(value="upd").plain == "v2"
    team = CareTeam.objects.create(ward="ICU", members=[Clinician(name="Harrison"), Clinician(name="James")])
    assert [m.name for m in CareTeam.objects.get(pk=team.pk).members] == ["Harrison", "James"]
    assert encrypted(stack.last("insert", "medical_careteam")["documents"][0]["members"], UNINDEXED_VALUE)
    doses = DoseSchedule.objects.create(doses=[1, 2, 3])
    assert DoseSchedule.objects.get(pk=doses.pk).doses == [1, 2, 3]
    assert encrypted(stack.last("insert", "medical_doseschedule")["documents"][0]["doses"], UNINDEXED_VALUE)
    clinic = Clinic.objects.create(name="North")
    doctor = Doctor.objects.create(name="Bob", clinic=clinic)
    assert list(Doctor.objects.filter(clinic__name="North")) == [doctor]


def test_count(stack: Stack) -> None:
    """On an auto-encrypting connection the backend counts with $collStats + $lookup (no $unionWith)."""
    from medical.models import CharSample

    CharSample.objects.create(value="counted")
    assert CharSample.objects.count() == len(stack.stored("medical_charsample"))


# --- what the backend documents as unsupported: markd refuses, with mongocryptd's words ----------

def _avg(model: Any) -> Any:
    from django.db.models import Avg

    return model.objects.aggregate(Avg("value"))


def _count(model: Any) -> Any:
    from django.db.models import Count

    return model.objects.aggregate(Count("value"))


def _alias(model: Any) -> Any:
    from django.db.models import Avg

    return list(model.objects.alias(avg=Avg("value")))


def _annotate(model: Any) -> Any:
    from django.db.models import Avg

    return list(model.objects.annotate(avg=Avg("value")))


def _compare_to_column(model: Any) -> Any:
    from django.db.models import F

    return model.objects.filter(value__lte=F("value")).get()


def _union(model: Any) -> Any:
    return list(model.objects.filter(value__gt=1).union(model.objects.filter(value__gte=8)))


def _join_with_let(model: Any) -> Any:
    from django.db.models import F

    return list(model.objects.filter(clinic__name=F("name")))


GROUP_ON_ENCRYPTED = ("Cannot group on field '_id.value' which is encrypted with the random algorithm or whose "
                      "encryption properties are not known until runtime")
REFUSED = [
    # (id, model, operation, the message the backend's tests expect: mongocryptd's, word for word)
    ("aggregate-avg", "IntegerSample", _avg, "Accumulator '$avg' cannot aggregate encrypted fields."),
    ("aggregate-count", "IntegerSample", _count,
     "Invalid reference to an encrypted field within aggregate expression: value"),
    ("alias", "IntegerSample", _alias, GROUP_ON_ENCRYPTED),
    ("annotate", "IntegerSample", _annotate, GROUP_ON_ENCRYPTED),
    ("distinct", "CharSample", lambda m: list(m.objects.distinct("value")), GROUP_ON_ENCRYPTED),
    ("dates", "DateSample", lambda m: list(m.objects.dates("value", "year")),
     "If the value type is a date, the type of the index must also be date (and vice versa)."),
    ("datetimes", "DateTimeSample", lambda m: list(m.objects.datetimes("value", "year")),
     "If the value type is a date, the type of the index must also be date (and vice versa)."),
    ("order_by", "CharSample", lambda m: list(m.objects.order_by("value")),
     "Cannot add an encrypted field as a prefix of another encrypted field"),
    ("update", "CharSample", lambda m: m.objects.update(value="xyz"),
     "Multi-document updates are not allowed with Queryable Encryption"),
    ("union", "IntegerSample", _union,
     "Aggregation stage $unionWith is not allowed or supported with automatic encryption."),
    ("compare-to-column", "IntegerSample", _compare_to_column,
     "Comparison disallowed between Queryable Encryption encrypted fields and non-constant expressions; "
     "field 'value' is encrypted."),
    ("join-with-let", "Doctor", _join_with_let,
     "Non-empty 'let' field is not allowed in the $lookup aggregation stage over an encrypted collection."),
    ("encrypted-prefix", "Patient", lambda m: m.objects.get(patient_record__billing__cc_type="Visa"),
     "Invalid operation on path 'patient_record.billing.cc_type' which contains an encrypted path prefix."),
]


@pytest.mark.parametrize(("model_name", "operation", "message"),
                         [pytest.param(model, operation, message, id=case_id)
                          for case_id, model, operation, message in REFUSED])
def test_unsupported_queries_fail_with_mongocryptds_message(stack: Stack, model_name: str, operation: Any,
                                                            message: str) -> None:
    from django.apps import apps
    from django.db import DatabaseError

    model = apps.get_model("medical", model_name)
    before, asked = len(stack.mongod.commands), len(stack.exchanges)
    with pytest.raises(DatabaseError) as raised:
        operation(model)
    assert message in str(raised.value)
    if stack.mode == "daemon":
        # The refusal is markd's answer to the command libmongocrypt asked it about.
        answers = [answer for sent, answer in stack.exchanges[asked:] if next(iter(sent)) != "isMaster"]
        assert answers and isinstance(answers[-1], str) and message in answers[-1], answers
    else:
        # The refusal is the library's: libmongocrypt quotes its version string (markd's) and status.
        import markd

        assert stack.exchanges == []
        assert f"[crypt_shared markd {markd.__version__} " in str(raised.value)
        assert message in str(raised.value).split('analyze_query" failed: ', 1)[1]
    # Refused before anything reached the database.
    reached = [c.name for c in stack.mongod.commands[before:]
               if c.name.lower() not in ("listcollections", "find", "hello", "ismaster", "endsessions")]
    assert reached == [], reached


def test_bulk_update_is_refused_by_django_itself(stack: Stack) -> None:
    from django.db import DatabaseError
    from medical.models import CharSample

    objects = [CharSample.objects.create(value="one"), CharSample.objects.create(value="two")]
    objects[0].value, objects[1].value = "uno", "dos"
    asked = len(stack.exchanges)
    with pytest.raises(DatabaseError) as raised:
        CharSample.objects.bulk_update(objects, ["value"])
    assert "Expressions in update queries are not allowed with Queryable Encryption." in str(raised.value)
    assert stack.exchanges[asked:] == []  # Django refused before asking markd


# --- markd check with the map Django prints (issue 16) ------------------------------------------

RULE_FIELDS = ("encryptionInformation", "csfleEncryptionSchemas", "jsonSchema", "isRemoteSchema")


def _shown_fields_map() -> str:
    import io

    from django.core.management import call_command

    printed = io.StringIO()
    call_command("showencryptedfieldsmap", database="encrypted", stdout=printed)
    return printed.getvalue()


def _shape(fields: dict[str, Any]) -> list[dict[str, Any]]:
    return [{key: ("<key>" if key == "keyId" else value) for key, value in field.items()}
            for field in fields["fields"]]


def test_showencryptedfieldsmap_output_is_markd_checks_rules(stack: Stack, tmp_path: Path) -> None:
    import subprocess

    import markd
    from tests.support.process import BIN_DIR

    text = _shown_fields_map()
    shown = bson.json_util.loads(text)
    namespace = f"{ENCRYPTED_DB}.medical_patient"
    # docs/check.md's fields_map.json has the shape Django prints (its keys are made up).
    documented = Path(__file__).resolve().parent.parent / "docs" / "check.md"
    from tests.test_check_docs import files

    example = bson.json_util.loads(files(documented.read_text())["fields_map.json"])
    assert list(example) == ["medical_patient"] and "medical_patient" in shown
    assert _shape(example["medical_patient"]) == _shape(shown["medical_patient"])
    ssn_key = next(f["keyId"] for f in shown["medical_patient"]["fields"] if f["path"] == "patient_record.ssn")

    accepted = markd.check(text, filter={"patient_record.ssn": SSN}, namespace=namespace)
    assert [(m.field, m.query_type, m.key_id) for m in accepted.marked] == [("patient_record.ssn", "equality",
                                                                              ssn_key)]
    refused = markd.check(text, filter={"patient_record.billing.cc_type": "Visa"}, namespace=namespace)
    assert refused.refusal is not None and refused.refusal.rule == "through_encrypted"
    assert "below the encrypted field patient_record.billing" in refused.refusal.encryption

    rules = tmp_path / "fields_map.json"
    rules.write_text(text)
    for filter_, status in (('{"patient_record.ssn": "x"}', 0), ('{"patient_record.billing.cc_type": "x"}', 1)):
        done = subprocess.run([str(BIN_DIR / "markd"), "check", "--rules", str(rules), "--namespace", namespace,
                               "--filter", filter_], capture_output=True, text=True, timeout=60)
        assert done.returncode == status, done


def test_what_django_asked_markd_is_answered_alike_offline(stack: Stack, patients: list[Any]) -> None:
    """Every command libmongocrypt sent markd for this ORM session, replayed through markd.check with the
    rules Django prints: the same verdict, the same message, the same marked command."""
    from django.apps import apps
    from django.db import DatabaseError
    from medical.models import Patient

    import markd

    if stack.mode != "daemon":
        pytest.skip("libmongocrypt asks markd's library in process here: there is no exchange to replay")
    asked = len(stack.exchanges)
    Patient.objects.filter(patient_record__ssn=SSN).first()
    apps.get_model("medical", "IntegerSample").objects.filter(value__gt=3, value__lte=9).count()
    for _, model_name, operation, _ in REFUSED:
        with pytest.raises(DatabaseError):
            operation(apps.get_model("medical", model_name))
    shown = bson.json_util.loads(_shown_fields_map())
    replayed = 0
    for sent, answer in stack.exchanges[asked:]:
        if "encryptionInformation" not in sent:
            # The handshake, and commands on collections without encrypted fields (libmongocrypt sends those
            # with an empty jsonSchema): not analysed under the rules Django prints.
            continue
        rules = dict(shown)
        for namespace in sent["encryptionInformation"]["schema"]:  # e.g. a collection a pipeline reads
            rules.setdefault(namespace.partition(".")[2], {"fields": []})
        command = {key: value for key, value in sent.items() if key not in RULE_FIELDS}
        result = markd.check(rules, {**command, "$db": ENCRYPTED_DB})
        if isinstance(answer, dict):
            assert result.accepted, (sent, result.refusal)
            strip = {key: value for key, value in answer["result"].items() if key not in RULE_FIELDS}
            assert {key: value for key, value in result.result.items() if key not in RULE_FIELDS} == strip
        else:
            assert result.refusal is not None and result.refusal.errmsg in answer, (answer, result.refusal)
            assert result.refusal.operator, result.refusal
        replayed += 1
    assert replayed >= len(REFUSED)


# --- the other way to run markd: pymongo spawns it from PATH -------------------------------------

# Django can be set up once per process: the spawn variant runs manage.py in a child process (with
# the same Python 3.11 shim as above, when needed).
MANAGE = (
    "import inspect, runpy, sys\n"
    "if not hasattr(inspect, 'markcoroutinefunction'):\n"
    "    from asgiref.sync import markcoroutinefunction\n"
    "    inspect.markcoroutinefunction = markcoroutinefunction\n"
    "sys.argv = ['manage.py', *sys.argv[1:]]\n"
    "runpy.run_path('manage.py', run_name='__main__')\n"
)


def test_example_with_markd_spawned_from_path(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess

    from tests.support.process import BIN_DIR, free_port

    port = free_port()
    pidfile = tmp_path / "mongocryptd.pid"
    with emulate_database(FakeMongod()) as mongod:
        environment = dict(
            os.environ,
            PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
            DJANGO_SETTINGS_MODULE="qe_project.settings",
            MONGODB_URI=f"{mongod.uri}/?directConnection=true&serverSelectionTimeoutMS=30000",
            MARKD_URI=f"mongodb://127.0.0.1:{port}",
            MARKD_SPAWN="1",
            MARKD_CRYPT_SHARED="",
            MARKD_SPAWN_ARGS=f"--pidfilepath={pidfile} --unixSocketPrefix={tmp_path} --idleShutdownTimeoutSecs=30",
            QE_DB_NAME=PLAIN_DB,
            QE_ENCRYPTED_DB_NAME=ENCRYPTED_DB,
        )
        try:
            outputs = []
            for command in (["migrate", "--database", "encrypted", "--verbosity", "0"], ["qe_demo"]):
                done = subprocess.run([sys.executable, "-c", MANAGE, *command], cwd=EXAMPLE, env=environment,
                                      capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, done.stderr[-3000:]
                outputs.append(done.stdout)
            assert pidfile.exists(), "pymongo did not spawn markd"
        finally:
            if pidfile.exists():  # the daemon pymongo started for us: stop it, by its pid
                os.kill(json.loads(pidfile.read_text())["pid"], signal.SIGTERM)
        demo = outputs[1]
        assert "equality on an encrypted field: John Doe (1001) ssn=123-45-6789" in demo
        assert "range query value__gt=7: [10]" in demo
        assert "range query on a date: [datetime.date(2024, 6, 1)]" in demo
        assert "sorting on an encrypted field is refused" in demo
        (insert,) = [c.body for c in mongod.received("insert") if c.body["insert"] == "medical_patient"]
        assert encrypted(insert["documents"][0]["patient_record"]["ssn"], INSERT_UPDATE_PAYLOAD)
        assert_no_plaintext(insert, SSN, CARD)


def test_example_in_process_from_manage_py(tmp_path: Path) -> None:
    """The example project with MARKD_CRYPT_SHARED=1: the howto's settings, no daemon anywhere."""
    import subprocess

    try:
        import markd.crypt_shared

        markd.crypt_shared.library_path()
    except markd.crypt_shared.LibraryUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    with emulate_database(FakeMongod()) as mongod:
        environment = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="qe_project.settings",
            MONGODB_URI=f"{mongod.uri}/?directConnection=true&serverSelectionTimeoutMS=5000",
            MARKD_URI="mongodb://127.0.0.1:1",  # nothing listens there: nothing may ask it
            MARKD_CRYPT_SHARED="1",
            QE_DB_NAME=PLAIN_DB,
            QE_ENCRYPTED_DB_NAME=ENCRYPTED_DB,
        )
        outputs = []
        for command in (["migrate", "--database", "encrypted", "--verbosity", "0"], ["qe_demo"]):
            done = subprocess.run([sys.executable, "-c", MANAGE, *command], cwd=EXAMPLE, env=environment,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
            outputs.append(done.stdout)
        demo = outputs[1]
        assert "equality on an encrypted field: John Doe (1001) ssn=123-45-6789" in demo
        assert "range query value__gt=7: [10]" in demo
        assert "sorting on an encrypted field is refused: [crypt_shared markd " in demo
        (insert,) = [c.body for c in mongod.received("insert") if c.body["insert"] == "medical_patient"]
        assert encrypted(insert["documents"][0]["patient_record"]["ssn"], INSERT_UPDATE_PAYLOAD)
        assert_no_plaintext(insert, SSN, CARD)
