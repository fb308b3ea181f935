"""Issue 12, no over-refusal: what mongocryptd accepts and marks, markd must still accept and mark.

Each row carries secrets only where mongocryptd marks them; markd must answer ok with both flags true,
every secret inside a placeholder and none in clear (the oracle of tests/adversarial/oracle.py).  A
sample then goes through the real libmongocrypt (pymongocrypt) and a real markd process: libmongocrypt
must accept the placeholders and send the server ciphertext only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bson
import pytest

from tests.adversarial import oracle, rawbson, schemas, secrets
from tests.adversarial.commands import plain, with_rules
from tests.adversarial.drive import in_process
from tests.adversarial.schemas import OTHER
from tests.support.crypt import CryptDriver

S, S2, S3, S4, S5 = (secrets.string(n) for n in range(1, 6))
N, N2 = secrets.int32(11), secrets.int32(19)  # far enough apart for an exclusive int range
L, D = secrets.int64(21), secrets.date(31)


def find(filter_: Any, **fields: Any) -> dict[str, Any]:
    return {"find": "coll", "filter": filter_, **fields}


def agg(*stages: Any) -> dict[str, Any]:
    return {"aggregate": "coll", "pipeline": list(stages), "cursor": {}}


def update(q: Any, u: Any, **statement: Any) -> dict[str, Any]:
    return {"update": "coll", "updates": [{"q": q, "u": u, **statement}]}


def row(name: str, command: Any, scheme: str = "csfle", *, crypt: bool = False, **options: Any) -> Any:
    return pytest.param(scheme, command, options, crypt, id=f"{scheme}-{name}")


CSFLE_DOCUMENT = {"_id": 1, "ssn": S, "nested": {"pin": N, "note": S2}, "acct": L, "dob": D, "notes": S3,
                  "alt": S4, "keyName": "altname", "enc_a": S5, "name": "plain"}
QE_DOCUMENT = {"_id": 1, "ssn": S, "nested": {"pin": N}, "score": N2, "when": D, "acct": L, "txt": S2, "sub": S3}

ROWS = [
    # CSFLE reads: equality, $in, $ne, $nin, $exists, logical operators, on deterministic fields
    row("find-eq", find({"ssn": S}), crypt=True),
    row("find-$eq", find({"ssn": {"$eq": S}})),
    row("find-$in", find({"ssn": {"$in": [S, S2]}}), crypt=True),
    row("find-$ne", find({"ssn": {"$ne": S}})),
    row("find-$nin", find({"ssn": {"$nin": [S, S2]}})),
    row("find-$not", find({"ssn": {"$not": {"$eq": S}}})),
    row("find-$exists-and-eq", find({"ssn": {"$exists": True}, "nested.pin": N})),
    row("find-nested", find({"nested.pin": N})),
    row("find-pattern", find({"enc_a": S})),
    row("find-long-date", find({"acct": L, "dob": D})),
    row("find-$and-$or-$nor", find({"$and": [{"ssn": S}, {"$or": [{"nested.pin": N}, {"name": "x"}]}],
                                    "$nor": [{"acct": L}]})),
    row("find-$expr-eq", find({"$expr": {"$eq": ["$ssn", S]}})),
    row("count", {"count": "coll", "query": {"ssn": S}}),
    row("distinct", {"distinct": "coll", "key": "name", "query": {"ssn": {"$in": [S, S2]}}}),
    row("delete", {"delete": "coll", "deletes": [{"q": {"ssn": S}, "limit": 1}]}),
    row("explain-find", {"explain": find({"ssn": S}), "verbosity": "queryPlanner"}),
    # CSFLE writes: documents holding encrypted fields, replacements, $set, upserts
    row("insert", {"insert": "coll", "documents": [CSFLE_DOCUMENT]}, crypt=True),
    row("update-$set", update({"ssn": S}, {"$set": {"ssn": S2, "nested.pin": N}}), crypt=True),
    row("update-$set-object", update({}, {"$set": {"nested": {"pin": N, "note": S}}})),
    row("update-replacement", update({"ssn": S}, {"ssn": S2, "nested": {"pin": N}, "name": "x"}, upsert=True)),
    row("update-$setOnInsert", update({"ssn": S}, {"$setOnInsert": {"acct": L}}, upsert=True)),
    row("findAndModify", {"findAndModify": "coll", "query": {"ssn": S}, "update": {"$set": {"ssn": S2}}}),
    # CSFLE aggregation: $match, renames, $group outputs, $lookup between encrypted collections
    row("aggregate-match", agg({"$match": {"ssn": S}}), crypt=True),
    row("aggregate-project-rename", agg({"$project": {"a": "$ssn"}}, {"$match": {"a": S}})),
    row("aggregate-addFields-rename", agg({"$addFields": {"a": "$ssn"}}, {"$match": {"a": S}})),
    row("aggregate-group-id", agg({"$group": {"_id": "$ssn"}}, {"$match": {"_id": S}})),
    row("aggregate-group-first", agg({"$group": {"_id": None, "f": {"$first": "$ssn"}}}, {"$match": {"f": S}})),
    row("aggregate-lookup-self", agg({"$lookup": {"from": "coll", "localField": "ssn", "foreignField": "ssn",
                                                  "as": "j"}}, {"$match": {"ssn": S}})),
    row("aggregate-lookup-other", agg({"$lookup": {"from": OTHER, "pipeline": [{"$match": {"ssn": S}}],
                                                   "as": "j"}}), namespaces=("coll", OTHER), multi=True),
    # Queryable Encryption: equality, range, text search, writes, $lookup between QE collections
    row("find-eq", find({"ssn": S}), "qe", crypt=True),
    row("find-$in", find({"ssn": {"$in": [S, S2]}}), "qe"),
    row("find-$ne", find({"ssn": {"$ne": S}}), "qe"),
    row("find-$nin", find({"ssn": {"$nin": [S, S2]}}), "qe"),
    row("find-nested-eq", find({"nested.pin": N}), "qe"),
    row("find-range", find({"score": {"$gt": N, "$lt": N2}}), "qe", crypt=True),
    row("find-range-one-sided", find({"when": {"$lte": D}}), "qe"),
    row("find-range-nested", find({"nested.pin": {"$gte": N}}), "qe-range"),
    row("find-$expr-range", find({"$expr": {"$and": [{"$gt": ["$score", N]}, {"$lt": ["$score", N2]}]}}), "qe"),
    row("find-prefix", find({"$expr": {"$encStrStartsWith": {"input": "$txt", "prefix": S}}}), "qe", crypt=True),
    row("find-suffix", find({"$expr": {"$encStrEndsWith": {"input": "$txt", "suffix": S}}}), "qe"),
    row("find-substring", find({"$expr": {"$encStrContains": {"input": "$sub", "substring": S}}}), "qe"),
    row("insert", {"insert": "coll", "documents": [QE_DOCUMENT]}, "qe", crypt=True),
    row("update-$set", update({"ssn": S}, {"$set": {"ssn": S2}}), "qe"),
    row("findAndModify", {"findAndModify": "coll", "query": {"ssn": S}, "update": {"$set": {"score": N}}}, "qe"),
    row("aggregate-match", agg({"$match": {"ssn": S}}), "qe"),
    row("aggregate-lookup-other", agg({"$lookup": {"from": OTHER, "pipeline": [{"$match": {"ssn": S}}],
                                                   "as": "j"}}), "qe", namespaces=("coll", OTHER)),
    row("bulkWrite-insert", {"bulkWrite": 1, "ops": [{"insert": 0, "document": QE_DOCUMENT}],
                             "nsInfo": [{"ns": "db.coll"}]}, "qe"),
    row("count", {"count": "coll", "query": {"ssn": S}}, "qe"),
    row("explain-find", {"explain": find({"ssn": S}), "verbosity": "queryPlanner"}, "qe"),
]


def marked(scheme: str, command: Any, options: dict[str, Any]) -> tuple[bytes, bytes]:
    raw = rawbson.encode(with_rules(command, scheme, **options))
    reply = in_process(raw).reply
    assert reply is not None
    return raw, reply


@pytest.mark.parametrize(("scheme", "command", "options", "crypt"), ROWS)
def test_accepted_and_marked(scheme: str, command: Any, options: dict[str, Any], crypt: bool) -> None:
    raw, reply = marked(scheme, command, options)
    document = bson.decode(reply)
    assert document.get("ok") == 1, document
    assert document["hasEncryptionPlaceholders"] is True and document["schemaRequiresEncryption"] is True
    verdicts = [v for v in oracle.judge(raw, reply) if v.kind in oracle.FAILING]
    assert verdicts == []
    result = rawbson.sub_document(reply, "result")
    assert result is not None
    sent = oracle.command_secrets(raw)
    assert sent and sent <= oracle.placeholder_secrets(oracle.scan(result).placeholders), "a secret is unmarked"


def _with_fixed_keys(driver: CryptDriver) -> CryptDriver:
    """The vault holds real data keys under the fixed key ids the schemas name (and one "altname" key)."""
    for key in schemas.KEYS.values():
        made = driver.create_key()
        document = bson.decode(driver.callback.keys.pop(bytes(made)))
        document["_id"] = key
        driver.callback.keys[bytes(key)] = bson.encode(document)
    driver.create_key("altname")
    return driver


@pytest.fixture(scope="module")
def drivers(markd: Any) -> Iterator[dict[str, CryptDriver]]:
    made = {
        "csfle": _with_fixed_keys(CryptDriver(markd.uri, only_requested_keys=True,
                                              schema_map={"db.coll": plain(schemas.csfle_schema())})),
        "qe": _with_fixed_keys(CryptDriver(markd.uri, only_requested_keys=True,
                                           encrypted_fields_map={"db.coll": plain(schemas.qe_encrypted_fields())})),
    }
    yield made
    for driver in made.values():
        driver.close()


@pytest.mark.parametrize(("scheme", "command", "options", "crypt"), [r for r in ROWS if r.values[3]])
def test_libmongocrypt_encrypts_the_placeholders(scheme: str, command: Any, options: dict[str, Any], crypt: bool,
                                                 drivers: dict[str, CryptDriver]) -> None:
    driver = drivers[scheme]
    before = len(driver.exchanges)
    encrypted = driver.encrypt("db", command)
    assert len(driver.exchanges) == before + 1, "libmongocrypt did not ask markd"
    reply = driver.exchanges[-1].reply
    assert reply["ok"] == 1 and reply["schemaRequiresEncryption"] is True
    sent = oracle.scan(bson.encode(encrypted))
    assert sent.plaintext == set(), f"secrets {sent.plaintext} reach the server in clear"
    assert sent.placeholders, "no ciphertext in what libmongocrypt sends"
    if scheme == "csfle" and command.get("insert"):
        assert driver.decrypt_value(encrypted["documents"][0]["ssn"]) == S
