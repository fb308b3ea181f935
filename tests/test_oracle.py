"""The fail-closed oracle, in-process: random (schema, command) pairs for CSFLE and QE.

For every pair markd either refuses (an error reply that is not InternalError), or marks every value
at an encrypted path with a placeholder holding the original value, the field's key and algorithm,
and leaves the rest of the command as it was (see tests/fuzz/oracle.py for the exact judgement).
"""

from __future__ import annotations

import os

import pytest
from bson import Regex
from hypothesis import HealthCheck, assume, given, settings

from tests.fuzz.budget import examples
from tests.fuzz.inproc import mark
from tests.fuzz.oracle import (
    COMMANDS,
    KEYS,
    Case,
    Enc,
    Obj,
    QEField,
    command_case,
    csfle_json,
    judge,
    known_trigger,
    qe_info,
)

EXAMPLES = int(os.environ.get("MARKD_ORACLE_EXAMPLES", str(examples(25))))
ORACLE = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def _verdict(case: Case) -> list[str]:
    return judge(case, mark(case.command))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flavour", ["csfle", "qe"])
def test_fail_closed(flavour, command):
    @ORACLE
    @given(command_case(flavour, command))
    def check(case):
        assume(known_trigger(case) is None)
        findings = _verdict(case)
        assert findings == [], f"{case.label}: {findings[:5]}\ncommand: {case.command!r}"

    check()


# Regression tests for what the oracle found ------------------------------------------------------

_QE = qe_info([QEField("ssn", KEYS[0], "string", "equality", 8),
               QEField("age", KEYS[1], "int", "range", 8, 1, 0, 200)])
_CSFLE = csfle_json(Obj(props={"ssn": Enc(1, KEYS[0], "string")}))


# Finding F4 (fixed in a093c83's series): markd/analysis/qe/match.py _path_predicates turned an explicit
# {$eq: <regex>} (equality with a regex value) into {$regex: ...} (a pattern match).
def test_qe_explicit_eq_with_a_regex_stays_equality():
    reply = mark({"find": "coll", "filter": {"x": {"$eq": Regex("a", "i")}}, "encryptionInformation": _QE,
                  "$db": "db"})
    assert reply["ok"] == 1
    assert reply["result"]["filter"] == {"x": {"$eq": Regex("a", "i")}}


# Finding F5 (fixed in a093c83's series): markd/analysis/qe/match.py _op_in wrote {$or: []} for $in: [] on a
# range field; mongod refuses an empty $or (BadValue).
def test_qe_empty_in_on_a_range_field_is_not_an_empty_or():
    reply = mark({"find": "coll", "filter": {"age": {"$in": []}}, "encryptionInformation": _QE, "$db": "db"})
    assert reply["ok"] == 1
    assert "[]" not in repr({k: v for k, v in reply["result"]["filter"].items() if k in ("$or", "$and", "$nor")})


# Regression test for finding F6 (fixed): /a/i came back as {$regex: 'a'}, options dropped.
@pytest.mark.parametrize("predicate", [Regex("a", "i"), {"$regex": Regex("a", "i")}])
def test_csfle_regex_keeps_its_options(predicate):
    reply = mark({"find": "coll", "filter": {"x": predicate}, "jsonSchema": _CSFLE, "isRemoteSchema": False,
                  "$db": "db"})
    assert reply["ok"] == 1
    marked = reply["result"]["filter"]["x"]
    assert marked == Regex("a", "i") or (marked.get("$options") == "i") or (
        isinstance(marked.get("$regex"), Regex) and marked["$regex"].flags == Regex("a", "i").flags)


def test_qe_insert_placeholder_shape():
    """A hand-written case the oracle must accept once QE lands (and a refusal before)."""
    case = Case("qe", {"insert": "coll", "documents": [{"_id": 1, "ssn": "123", "age": 7}],
                       "encryptionInformation": _QE, "$db": "db"}, {}, set())
    from tests.fuzz.oracle import Expect, Qe

    flavour = Qe([QEField("ssn", KEYS[0], "string", "equality", 8),
                  QEField("age", KEYS[1], "int", "range", 8, 1, 0, 200)])
    case.sensitive = {("documents", 0, "ssn"): flavour.expect(flavour.fields["ssn"], "123", 1, None),
                      ("documents", 0, "age"): flavour.expect(flavour.fields["age"], 7, 1, None)}
    assert isinstance(case.sensitive[("documents", 0, "ssn")], Expect)
    assert _verdict(case) == []


def test_the_oracle_catches_plaintext():
    """The judge itself: a reply that passes an encrypted value through unmarked is a finding."""
    schema = Obj(props={"ssn": Enc(1, KEYS[0], "string")})
    from tests.fuzz.oracle import Csfle

    flavour = Csfle(schema)
    command = {"insert": "coll", "documents": [{"ssn": "123-45-6789"}], "jsonSchema": csfle_json(schema),
               "isRemoteSchema": False, "$db": "db"}
    case = Case("csfle", command, {("documents", 0, "ssn"): flavour.expect(schema.props["ssn"], "123-45-6789", 1,
                                                                            None)}, set())
    leaked = {"ok": 1.0, "hasEncryptionPlaceholders": True, "schemaRequiresEncryption": True,
              "result": {"insert": "coll", "documents": [{"ssn": "123-45-6789"}]}}
    assert any("PLAINTEXT" in finding for finding in judge(case, leaked))
    flags_off = dict(leaked, hasEncryptionPlaceholders=False)
    assert any("PLAINTEXT" in finding for finding in judge(case, flags_off))
    assert judge(case, {"ok": 0.0, "code": 51158, "errmsg": "refused"}) == []
    assert judge(case, {"ok": 0.0, "code": 1, "errmsg": "boom"})[0].startswith("CRASH")


def test_contradictory_range_predicates_decided_statically_are_not_findings():
    # Found by CI's oracle run: {$and: [{notes: 1}, {notes: 0}]} on a range field is an empty interval,
    # which markd (as mongocryptd) writes as {$alwaysFalse: 1}; the values are gone, not leaked, and the
    # 1 of $alwaysFalse is syntax. The oracle must still flag a real plaintext next to it.
    from tests.fuzz.oracle import Expect

    notes = QEField("notes", KEYS[2], "int", "range", minimum=0, maximum=200)
    query = {"notes": 0, "$and": [{"$and": [{}]}, {"$and": [{"notes": 1}, {"notes": 0}]}]}
    command = {"distinct": "coll", "key": "plain1", "query": query, "encryptionInformation": qe_info([notes]),
               "$db": "db"}
    sensitive = {path: Expect(value, "qe", 2, 3, KEYS[2], "int", notes)
                 for path, value in [(("query", "notes"), 0), (("query", "$and", 1, "$and", 0, "notes"), 1),
                                     (("query", "$and", 1, "$and", 1, "notes"), 0)]}
    case = Case("qe", command, sensitive, {("query",)}, strict=False, label="distinct")
    reply = mark(command)
    assert {"$alwaysFalse": 1} in reply["result"]["query"]["$and"][0]["$and"]
    assert judge(case, reply) == []
    leaked = {**reply, "result": {**reply["result"], "query": {"$and": [{"$alwaysFalse": 1}, {"notes": 1}]}}}
    assert any(finding.startswith("PLAINTEXT") for finding in judge(case, leaked))
