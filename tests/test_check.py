"""`markd check` and `markd.check()`: a command tried against encryption rules offline (issue 16).

For each shape RULES may take (a CSFLE jsonSchema, a schema map, a QE encryptedFields document, an
encrypted_fields_map, Django's collection-keyed map) the three outcomes, through the API and through
the console script (a real subprocess): accepted (exit 0, the marked command and its placeholders),
refused (exit 1, mongocryptd's code and message, then the reason) and bad input (exit 2, one line).
The command markd check builds is byte for byte the one libmongocrypt sends (the real libmongocrypt,
through CryptDriver, against the real daemon), and its answer is the daemon's.  The daemon logs each
refusal at info level with the same names, and no value.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from bson import Int64, json_util
from bson.binary import Binary

import markd
from markd import bsonvalues
from markd.checker import BadInput
from tests.support.crypt import CryptDriver
from tests.support.process import BIN_DIR, MarkdProcess, raw_command

MARKD = str(BIN_DIR / "markd")
DET = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RND = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"
SSN_KEY = Binary(uuid.UUID("6b2a2a43-1bd8-4b21-8c3d-3f0c1f6f0a01").bytes, 4)
AGE_KEY = Binary(uuid.UUID("6b2a2a43-1bd8-4b21-8c3d-3f0c1f6f0a02").bytes, 4)
NS = "hr.people"

CSFLE_SCHEMA = {"bsonType": "object", "properties": {
    "ssn": {"encrypt": {"keyId": [SSN_KEY], "algorithm": DET, "bsonType": "string"}},
    "notes": {"encrypt": {"keyId": [AGE_KEY], "algorithm": RND, "bsonType": "string"}},
    "nick": {"encrypt": {"keyId": "/keyName", "algorithm": RND, "bsonType": "string"}},
}}
QE_FIELDS = {"fields": [
    {"path": "ssn", "keyId": SSN_KEY, "bsonType": "string", "queries": {"queryType": "equality"}},
    {"path": "age", "keyId": AGE_KEY, "bsonType": "int", "queries": {"queryType": "range", "min": 0, "max": 150}},
]}
BAD_JSON_SCHEMA = {"bsonType": "object", "properties": {"ssn": {"encrypt": {"keyId": [SSN_KEY], "algorithm": "x"}}}}
BAD_FIELDS = {"fields": [{"path": "ssn", "keyId": SSN_KEY, "bsonType": "array", "queries": {"queryType": "equality"}}]}

# format -> (rules, invalid rules of that format, scheme, what the refusal of `ssn > x` is)
FORMATS: dict[str, tuple[Any, Any, str, tuple[str, int]]] = {
    "jsonSchema": (CSFLE_SCHEMA, BAD_JSON_SCHEMA, "csfle", ("range_on_encrypted", 51118)),
    "schemaMap": ({NS: CSFLE_SCHEMA, "hr.other": {}}, {NS: BAD_JSON_SCHEMA}, "csfle", ("range_on_encrypted", 51118)),
    "encryptedFields": (QE_FIELDS, BAD_FIELDS, "qe", ("NOT_RANGE_INDEXED", 6721001)),
    "encryptedFieldsMap": ({NS: QE_FIELDS}, {NS: BAD_FIELDS}, "qe", ("NOT_RANGE_INDEXED", 6721001)),
    # Django MongoDB Backend's showencryptedfieldsmap names collections by db_table, without the database.
    "django": ({"people": QE_FIELDS}, {"people": BAD_FIELDS}, "qe", ("NOT_RANGE_INDEXED", 6721001)),
}
ACCEPTED = {"ssn": "123-45-6789"}
REFUSED = {"ssn": {"$gt": "123"}}


def run_cli(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MARKD, "check", *args], input=stdin, capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def ext_json(value: Any, mode: json_util.JSONMode = json_util.JSONMode.RELAXED) -> str:
    return json_util.dumps(value, json_options=json_util.JSONOptions(json_mode=mode))


@pytest.fixture
def rules_file(tmp_path: Path):
    def write(rules: Any, name: str = "rules.json") -> str:
        path = tmp_path / name
        path.write_text(ext_json(rules))
        return str(path)

    return write


# -- the three outcomes, for every rules format: API ---------------------------------------------------

@pytest.mark.parametrize("shape", FORMATS)
def test_api_accepted(shape: str) -> None:
    rules, _, scheme, _ = FORMATS[shape]
    result = markd.check(rules, filter=ACCEPTED, namespace=NS)
    assert result.accepted and result.refusal is None and result.namespace == NS and result.scheme == scheme
    assert result.rules is not None and result.rules.kind == shape.replace("django", "encryptedFieldsMap")
    placeholder = result.result["filter"]["ssn"]["$eq"]
    assert isinstance(placeholder, Binary) and placeholder.subtype == 6
    (marked,) = result.marked
    assert (marked.path, marked.scheme, marked.key_id, marked.field) == ("filter.ssn.$eq", scheme, SSN_KEY, "ssn")
    if scheme == "csfle":
        assert marked.algorithm == DET
        assert bsonvalues.decode(bytes(placeholder)[1:])["v"] == "123-45-6789"
    else:
        assert (marked.query_type, marked.use, marked.contention) == ("equality", "find", 8)
    document = result.to_dict()
    assert document["refusal"] is None and document["reply"]["ok"] == 1.0
    assert document["marked"][0]["keyId"] == SSN_KEY
    assert ("algorithm" if scheme == "csfle" else "queryType") in document["marked"][0]


@pytest.mark.parametrize("shape", FORMATS)
def test_api_refused(shape: str) -> None:
    rules, _, scheme, (rule, code) = FORMATS[shape]
    result = markd.check(rules, filter=REFUSED, namespace=NS)
    refusal = result.refusal
    assert not result.accepted and refusal is not None and result.marked == ()
    assert (refusal.rule, refusal.code, refusal.path, refusal.operator) == (rule, code, "ssn", "$gt")
    assert result.reply == {"ok": 0.0, "errmsg": refusal.errmsg, "code": code, "codeName": f"Location{code}"}
    assert "deterministic" in refusal.encryption if scheme == "csfle" else "queryType equality" in refusal.encryption
    assert "$eq" in refusal.allowed and "range" in refusal.allowed
    document = result.to_dict()["refusal"]
    assert {"code", "errmsg", "path", "rule", "hint"} <= set(document)
    assert (document["code"], document["path"], document["rule"]) == (code, "ssn", rule)
    assert document["hint"] == refusal.hint and "$in" in document["hint"]
    with pytest.raises(AssertionError, match="ssn"):
        result.assert_accepted()


@pytest.mark.parametrize("shape", FORMATS)
def test_api_bad_input(shape: str) -> None:
    rules, bad_rules, _, _ = FORMATS[shape]
    with pytest.raises(BadInput, match=r"^RULES: invalid (jsonSchema|encryptedFields) for hr\.people: .*code"):
        markd.check(bad_rules, filter=ACCEPTED, namespace=NS)
    with pytest.raises(BadInput, match="not a command markd analyses"):
        markd.check(rules, {"drop": "people", "$db": "hr"})
    with pytest.raises(BadInput, match="not JSON"):
        markd.check(rules, '{"find": "people", ')
    if shape not in ("jsonSchema", "encryptedFields"):
        with pytest.raises(BadInput, match=r"hr\.unknown is not in the rules"):
            markd.check(rules, filter=ACCEPTED, namespace="hr.unknown")


# -- the three outcomes, for every rules format: the console script ------------------------------------

@pytest.mark.parametrize("shape", FORMATS)
def test_cli_accepted(shape: str, rules_file) -> None:
    rules, _, scheme, _ = FORMATS[shape]
    done = run_cli("--rules", rules_file(rules), "--namespace", NS, "--filter", json.dumps(ACCEPTED))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"accepted: find on {NS} ({'CSFLE' if scheme == 'csfle' else 'Queryable Encryption'})"
    assert '"$eq": "<placeholder 1>"' in done.stdout
    what = DET if scheme == "csfle" else "equality (find)"
    assert f"  <placeholder 1> filter.ssn.$eq: {scheme} {what}, key 6b2a2a43-1bd8-4b21-8c3d-3f0c1f6f0a01, field ssn" \
        in lines
    assert done.stderr == ""


@pytest.mark.parametrize("shape", FORMATS)
def test_cli_refused(shape: str, rules_file) -> None:
    rules, _, _, (rule, code) = FORMATS[shape]
    done = run_cli("--rules", rules_file(rules), "--namespace", NS, "--filter", json.dumps(REFUSED))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"refused: Location{code} ({code}): ") and "'ssn'" in lines[0]
    assert "  path:      ssn" in lines and "  operator:  $gt (in find.filter)" in lines
    assert f"  rule:      {rule} [encryption]" in lines
    assert any(line.startswith("  encrypted: ") for line in lines)
    assert any(line.startswith("  allowed:   `ssn` is ") and "$eq" in line for line in lines)


@pytest.mark.parametrize("shape", FORMATS)
def test_cli_bad_input(shape: str, rules_file) -> None:
    rules, bad_rules, _, _ = FORMATS[shape]
    cases = [
        (rules_file(bad_rules, "bad.json"), ["--filter", json.dumps(ACCEPTED)], "RULES: invalid"),
        (rules_file(rules), ["--filter", '{"ssn": '], "--filter: not JSON"),
        (rules_file(rules), ["--command", '{"ping": 1}'], "'ping' is not a command markd analyses"),
    ]
    if shape not in ("jsonSchema", "encryptedFields"):
        cases.append((rules_file(rules), ["--filter", "{}", "--namespace", "hr.nowhere"], "hr.nowhere is not in"))
    for path, args, expected in cases:
        namespace = [] if "--namespace" in args else ["--namespace", NS]
        done = run_cli("--rules", path, *namespace, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stdout == ""
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("markd check: ") and expected in \
            done.stderr, done.stderr


@pytest.mark.parametrize("shape", FORMATS)
def test_cli_json_is_the_api_document(shape: str, rules_file) -> None:
    rules, _, _, _ = FORMATS[shape]
    for filter_, status in ((ACCEPTED, 0), (REFUSED, 1)):
        done = run_cli("--rules", rules_file(rules), "--namespace", NS, "--filter", json.dumps(filter_), "--json")
        assert done.returncode == status, done.stderr
        printed = json_util.loads(done.stdout)
        expected = json_util.loads(markd.check(rules, filter=filter_, namespace=NS).to_json())
        assert printed == expected
        assert set(printed) >= {"reply", "marked", "refusal"}


# -- input forms -----------------------------------------------------------------------------------------

def test_relaxed_and_canonical_extended_json_give_the_same_answer(rules_file) -> None:
    command = {"insert": "people", "documents": [{"_id": 1, "ssn": "123-45-6789", "n": Int64(5)}], "$db": "hr"}
    answers = []
    for mode in (json_util.JSONMode.RELAXED, json_util.JSONMode.CANONICAL):
        answers.append(markd.check(ext_json(CSFLE_SCHEMA, mode), ext_json(command, mode)).to_dict())
    assert answers[0] == answers[1]
    # Canonical {"$numberLong": "5"} stays an int64; relaxed 5 is an int32 (as in mongosh's EJSON).
    assert type(answers[1]["reply"]["result"]["documents"][0]["n"]) is Int64
    assert type(answers[0]["reply"]["result"]["documents"][0]["n"]) is int
    # {"$uuid": ...} is a key id as well as {"$binary": {..., "subType": "04"}}.
    text = ext_json(CSFLE_SCHEMA).replace(ext_json(SSN_KEY), '{"$uuid": "6b2a2a43-1bd8-4b21-8c3d-3f0c1f6f0a01"}')
    assert "$uuid" in text
    assert markd.check(text, ext_json(command)).to_dict() == answers[0]


def test_cli_reads_stdin_files_and_inline_json(tmp_path: Path, rules_file) -> None:
    command = tmp_path / "find.json"
    command.write_text(json.dumps({"find": "people", "filter": {"ssn": "1"}, "$db": "hr"}))
    done = run_cli("--rules", "-", "--command", str(command), stdin=ext_json(CSFLE_SCHEMA))
    assert done.returncode == 0 and "accepted: find on hr.people (CSFLE)" in done.stdout, done.stderr
    done = run_cli("--rules", rules_file(CSFLE_SCHEMA), "--command", "-", stdin=command.read_text())
    assert done.returncode == 0, done.stderr
    done = run_cli("--rules", "-", "--command", "-", stdin="{}")
    assert done.returncode == 2 and "stdin ('-') is already RULES" in done.stderr
    done = run_cli("--rules", str(tmp_path / "missing.json"), "--command", str(command))
    assert done.returncode == 2 and "cannot read" in done.stderr
    done = run_cli("--rules", rules_file(CSFLE_SCHEMA), "--namespace", NS, "--pipeline",
                   '[{"$match": {"ssn": "1"}}, {"$sort": {"ssn": 1}}]')
    assert done.returncode == 1 and "  operator:  $sort (in aggregate.pipeline)" in done.stdout.splitlines()
    done = run_cli("--rules", rules_file(CSFLE_SCHEMA), "--namespace", NS)
    assert done.returncode == 2 and "give exactly one of --command, --filter, --pipeline" in done.stderr
    done = run_cli("--rules", rules_file(CSFLE_SCHEMA), "--filter", "{}")
    assert done.returncode == 2 and "--namespace" in done.stderr
    done = run_cli("--help")
    assert done.returncode == 0 and "--rules" in done.stdout and "Exit status" in done.stdout


@pytest.mark.parametrize(("rules", "command", "namespace", "message"), [
    ({"bsonType": "object", "propertes": {}}, {"find": "c", "$db": "d"}, None, "Unknown $jsonSchema keyword"),
    ({"a.b": {"fields": []}, "a.c": {"properties": {}}}, {"find": "b", "$db": "a"}, None, "not both"),
    ({"a.b": 5}, {"find": "b", "$db": "a"}, None, "RULES: not a jsonSchema"),
    ([1], {"find": "b", "$db": "a"}, None, "RULES: expected a JSON object, got an array"),
    ('{"a": 1, "a": 2}', {"find": "b", "$db": "a"}, None, "the name 'a' is given twice"),
    (CSFLE_SCHEMA, {"find": "people"}, None, "no database"),
    (CSFLE_SCHEMA, {"find": "people", "$db": "hr"}, "hr.other", "runs on collection 'people', not on hr.other"),
    (CSFLE_SCHEMA, {"find": "people", "$db": "hr"}, "pay.people", "$db is 'hr'"),
    (CSFLE_SCHEMA, {"find": "people", "$db": "hr"}, "people", "is not database.collection"),
    (CSFLE_SCHEMA, {"find": "people", "$db": "hr", "jsonSchema": {}, "isRemoteSchema": False}, None,
     "already carries encryption rules (isRemoteSchema, jsonSchema)"),
    (CSFLE_SCHEMA, {"explain": {"listIndexes": "people"}, "$db": "hr"}, None, "explain of 'listIndexes'"),
    (CSFLE_SCHEMA, {}, None, "empty document"),
    (CSFLE_SCHEMA, {"find": 5, "$db": "hr"}, None, "must name a collection"),
    ({NS: CSFLE_SCHEMA}, {"aggregate": "people", "pipeline": [{"$lookup": {"from": "pay", "localField": "a",
                                                                            "foreignField": "b", "as": "j"}}],
                          "cursor": {}, "$db": "hr"}, None, "hr.pay is not in the rules"),
])
def test_bad_input_is_one_clear_line(rules: Any, command: Any, namespace: str | None, message: str) -> None:
    with pytest.raises(BadInput) as raised:
        markd.check(rules, command, namespace=namespace)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_database_from_the_only_map_entry_naming_the_collection() -> None:
    result = markd.check({NS: CSFLE_SCHEMA}, {"find": "people", "filter": {"ssn": "x"}})
    assert result.accepted and result.namespace == NS and result.sent["$db"] == "hr"
    assert markd.check({NS: CSFLE_SCHEMA}, filter={"ssn": "x"}).namespace == NS  # --filter without --namespace


def test_unencrypted_namespace_and_nothing_to_mark(rules_file) -> None:
    result = markd.check({NS: CSFLE_SCHEMA, "hr.other": {}}, filter={"x": 1}, namespace="hr.other")
    assert result.accepted and result.reply["schemaRequiresEncryption"] is False and result.marked == ()
    done = run_cli("--rules", rules_file({NS: CSFLE_SCHEMA, "hr.other": {}}), "-n", "hr.other", "--filter", "{}")
    assert done.returncode == 0 and "nothing in hr.other is encrypted" in done.stdout
    done = run_cli("--rules", rules_file(CSFLE_SCHEMA), "-n", NS, "--filter", '{"x": 1}')
    assert done.returncode == 0 and "nothing in this command needs encrypting" in done.stdout


def test_marked_values_of_every_kind() -> None:
    # CSFLE: a JSON-pointer keyId resolves to the keyAltName the document holds.
    result = markd.check(CSFLE_SCHEMA, {"insert": "people", "documents": [
        {"_id": 1, "ssn": "1", "notes": "n", "nick": "x", "keyName": "alice"}], "$db": "hr"})
    assert [(m.path, m.algorithm, m.key_id, m.key_alt_name, m.field) for m in result.marked] == [
        ("documents.0.ssn", DET, SSN_KEY, None, "ssn"), ("documents.0.notes", RND, AGE_KEY, None, "notes"),
        ("documents.0.nick", RND, None, "alice", None)]
    assert result.to_dict()["marked"][2]["keyAltName"] == "alice"
    # QE: a range query is a full placeholder and its stub; inserts are `insert` placeholders.
    result = markd.check(QE_FIELDS, filter={"age": {"$gte": 18, "$lt": 65}}, namespace=NS)
    assert [(m.path, m.query_type, m.use, m.field) for m in result.marked] == [
        ("filter.$and.0.age.$gte", "range", "find", "age"), ("filter.$and.1.age.$lt", "range", "find", "age")]
    result = markd.check(QE_FIELDS, {"insert": "people", "documents": [{"ssn": "1", "age": 40}], "$db": "hr"})
    assert [(m.query_type, m.use) for m in result.marked] == [("equality", "insert"), ("range", "insert")]
    text_fields = {"fields": [{"path": "name", "keyId": SSN_KEY, "bsonType": "string", "queries": [
        {"queryType": "prefix", "strMinQueryLength": 2, "strMaxQueryLength": 10, "caseSensitive": False,
         "diacriticSensitive": False},
        {"queryType": "suffix", "strMinQueryLength": 2, "strMaxQueryLength": 10, "caseSensitive": False,
         "diacriticSensitive": False}]}]}
    result = markd.check(text_fields, filter={"$expr": {"$encStrEndsWith": {"input": "$name", "suffix": "son"}}},
                         namespace=NS)
    assert [(m.query_type, m.use, m.field) for m in result.marked] == [("suffix", "find", "name")]


def test_malformed_commands_and_internal_errors_are_refusals_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # mongod's own parse error: what the driver would get, with or without encryption (exit 1, not 2).
    malformed = markd.check(CSFLE_SCHEMA, filter={"ssn": {"$frobnicate": 1}}, namespace=NS).refusal
    assert malformed is not None and (malformed.code, malformed.rule, malformed.kind) == (2, None, "malformed")
    assert "with or without encryption" in malformed.why and malformed.operator == "find.filter"
    # A bug in the analysis is refused as the daemon refuses it (fail closed), with the bug's type only.
    from markd import checker

    def broken(command: Any) -> Any:
        raise KeyError("a value")

    monkeypatch.setattr(checker, "mark_command", broken)
    internal = markd.check(CSFLE_SCHEMA, filter={"ssn": "x"}, namespace=NS)
    assert internal.reply == {"ok": 0.0, "errmsg": "markd internal error: KeyError", "code": 1,
                              "codeName": "InternalError"}
    assert internal.refusal is not None and internal.refusal.kind == "internal"


def test_python_values_a_test_suite_passes() -> None:
    rules = {"bsonType": "object", "properties": {"ssn": {"encrypt": {
        "keyId": [uuid.UUID("6b2a2a43-1bd8-4b21-8c3d-3f0c1f6f0a01")], "algorithm": DET, "bsonType": "string"}}}}
    result = markd.check(rules, filter={"ssn": "x"}, namespace=NS)
    assert result.marked[0].key_id == SSN_KEY  # a uuid.UUID is the BinData 4 libmongocrypt sends
    assert markd.check(rules, pipeline=({"$match": {"ssn": "x"}},), namespace=NS).accepted  # a tuple is an array
    with pytest.raises(BadInput, match="give one of"):
        markd.check(rules, {"find": "people"}, filter={"ssn": "x"})


def test_explain_and_bulk_write_are_built_as_libmongocrypt_sends_them() -> None:
    explain = markd.check(CSFLE_SCHEMA, {"explain": {"find": "people", "filter": {"ssn": "1"}},
                                         "verbosity": "queryPlanner", "$db": "hr"})
    assert list(explain.sent) == ["explain", "verbosity", "jsonSchema", "isRemoteSchema", "$db"]
    assert explain.accepted and explain.marked[0].path == "explain.filter.ssn.$eq"
    bulk = markd.check({NS: QE_FIELDS}, {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"ssn": "1"}}],
                                         "nsInfo": [{"ns": NS}]})
    assert bulk.accepted and bulk.sent["$db"] == "admin" and "encryptionInformation" in bulk.sent["nsInfo"][0]
    assert [m.path for m in bulk.marked] == ["ops.0.document.ssn"]


# -- the same command libmongocrypt sends, and the daemon's answer -----------------------------------------

def _strip_db(command: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in command.items() if key != "$db"}


@pytest.fixture(scope="module")
def csfle_driver(markd):
    driver = CryptDriver(markd.uri, only_requested_keys=True)
    key = driver.create_key()
    other = driver.create_key()
    schema = {"bsonType": "object", "properties": {
        "ssn": {"encrypt": {"keyId": [key], "algorithm": DET, "bsonType": "string"}},
        "notes": {"encrypt": {"keyId": [other], "algorithm": RND, "bsonType": "string"}}}}
    driver.schema_map = {"hr.people": schema, "hr.pay": {"bsonType": "object", "properties": {
        "iban": {"encrypt": {"keyId": [other], "algorithm": DET, "bsonType": "string"}}}}}
    driver.enable_multiple_collinfo = True
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def qe_driver(markd):
    driver = CryptDriver(markd.uri, only_requested_keys=True)
    driver.encrypted_fields_map = {
        "hr.people": {"fields": [
            {"path": "ssn", "keyId": driver.create_key(), "bsonType": "string", "queries": {"queryType": "equality"}},
            {"path": "age", "keyId": driver.create_key(), "bsonType": "int",
             "queries": {"queryType": "range", "min": 0, "max": 150}}]},
        "hr.pay": {"fields": [{"path": "iban", "keyId": driver.create_key(), "bsonType": "string",
                               "queries": {"queryType": "equality"}}]}}
    driver.enable_multiple_collinfo = True
    yield driver
    driver.close()


LOOKUP = {"$lookup": {"from": "pay", "localField": "x", "foreignField": "y", "as": "j"}}
SAME_AS_LIBMONGOCRYPT = [
    ("hr", {"find": "people", "filter": {"ssn": "123-45-6789"}}),
    ("hr", {"find": "people", "filter": {"ssn": {"$gt": "1"}}}),
    ("hr", {"aggregate": "people", "pipeline": [{"$match": {"ssn": "1"}}, LOOKUP], "cursor": {}}),
    ("hr", {"explain": {"find": "people", "filter": {"ssn": "1"}}, "verbosity": "queryPlanner"}),
    ("hr", {"insert": "people", "documents": [{"_id": 1, "ssn": "1", "notes": "n", "age": 30}]}),
    ("hr", {"update": "people", "updates": [{"q": {"ssn": "1"}, "u": {"$set": {"ssn": "2"}}}]}),
    ("hr", {"delete": "people", "deletes": [{"q": {"ssn": "1"}, "limit": 1}]}),
    ("hr", {"findAndModify": "people", "query": {"ssn": "1"}, "update": {"$set": {"notes": "x"}}}),
    ("hr", {"count": "people", "query": {"ssn": "1"}}),
    ("hr", {"distinct": "people", "key": "x", "query": {"ssn": "1"}}),
    ("admin", {"bulkWrite": 1, "ops": [{"insert": 0, "document": {"ssn": "1"}}], "nsInfo": [{"ns": "hr.people"}]}),
]


@pytest.mark.parametrize("scheme", ["csfle", "qe"])
@pytest.mark.parametrize(("database", "command"), SAME_AS_LIBMONGOCRYPT,
                         ids=[f"{i}-{next(iter(c))}" for i, (_, c) in enumerate(SAME_AS_LIBMONGOCRYPT)])
def test_built_command_and_answer_are_libmongocrypts_and_the_daemons(scheme: str, database: str,
                                                                      command: dict[str, Any], csfle_driver,
                                                                      qe_driver) -> None:
    driver = csfle_driver if scheme == "csfle" else qe_driver
    rules = driver.schema_map if scheme == "csfle" else driver.encrypted_fields_map
    before = len(driver.exchanges)
    try:
        driver.encrypt(database, command)
    except Exception:  # refused: the exchange is recorded all the same
        pass
    exchanges = [e for e in driver.exchanges[before:] if next(iter(e.sent)) not in ("isMaster", "hello")]
    assert len(exchanges) == 1, exchanges
    exchange = exchanges[0]
    result = markd.check(rules, {**command, "$db": database})
    # The very bytes libmongocrypt sent, in its order; and the answer the daemon gave it.
    assert bsonvalues.encode(_strip_db(result.sent)) == bsonvalues.encode(exchange.sent)
    assert result.sent["$db"] == database
    assert result.reply == exchange.reply
    assert result.accepted == (exchange.reply.get("ok") == 1)


# -- the daemon logs the same refusal, in names ------------------------------------------------------------

@pytest.mark.parametrize("log_format", ["text", "json"])
def test_daemon_logs_each_refusal_at_info_level_with_names_only(log_format: str) -> None:
    secret = "417-31-9999-secret"
    daemon = MarkdProcess()
    daemon.args = ["--logpath", str(daemon.logfile), "--logFormat", log_format]  # no -v: info level
    with daemon, daemon.client() as client:
        accepted = raw_command(client, "hr", {"find": "people", "filter": {"ssn": secret}, "jsonSchema": CSFLE_SCHEMA,
                                              "isRemoteSchema": False})
        assert accepted["ok"] == 1.0
        refused = raw_command(client, "hr", {"find": "people", "filter": {"ssn": {"$gt": secret}},
                                             "jsonSchema": CSFLE_SCHEMA, "isRemoteSchema": False})
        assert refused["code"] == 51118
        # Large enough for an analysis process: the refusal's names come back from it too.
        padding = [{"_id": i, "plain": "p" * 64} for i in range(400)]
        big = raw_command(client, "hr", {"insert": "people", "documents": [*padding, {"_id": -1, "notes": 7}],
                                         "jsonSchema": CSFLE_SCHEMA, "isRemoteSchema": False})
        assert big["code"] == 31118
        text = daemon.wait_for_log("value_type_mismatch", timeout=30)
    refusal_lines = [line for line in text.splitlines() if "command refused" in line]
    assert len(refusal_lines) == 2, text  # one per refusal; the accepted command logs nothing at info level
    assert secret not in text and "123-45" not in text
    if log_format == "json":
        first, second = (json.loads(line)["attr"] for line in refusal_lines)
        assert json.loads(refusal_lines[0])["s"] == "INFO"
        assert {key: first[key] for key in ("command", "ns", "code", "codeName", "rule", "path", "operator",
                                            "option")} == {
            "command": "find", "ns": "hr.people", "code": 51118, "codeName": "Location51118",
            "rule": "range_on_encrypted", "path": "ssn", "operator": "$gt", "option": "filter"}
        assert (second["command"], second["rule"], second["path"], second["code"]) == (
            "insert", "value_type_mismatch", "notes", 31118)
    else:
        assert " INFO  [markd] command refused " in refusal_lines[0]
        for fragment in ("command=find", "ns=hr.people", "code=51118", "rule=range_on_encrypted", "path=ssn",
                         "operator=$gt"):
            assert fragment in refusal_lines[0], refusal_lines[0]
        assert "rule=value_type_mismatch path=notes" in refusal_lines[1]


def test_markd_without_check_is_still_mongocryptds_command_line() -> None:
    done = subprocess.run([MARKD, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("markd ")
    done = subprocess.run([MARKD, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--idleShutdownTimeoutSecs" in done.stdout and "markd check --help" in done.stdout
