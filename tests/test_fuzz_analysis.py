"""Fuzzing the analysis entry point: whatever the command, `mark_command` returns a reply or raises CommandError.

Inputs: schema-shaped garbage (JSON-Schema and encryptedFields keywords with values of every type),
random commands, and valid oracle cases with one subtree replaced by a random value.  Anything
other than a reply or a CommandError would reach the server as InternalError (code 1): a crash.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from bson import Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from markd import bsonvalues
from markd.analysis import MARKING_COMMANDS, mark_command
from markd.errors import CommandError
from tests.fuzz.bsongen import scalar_values, values
from tests.fuzz.budget import examples
from tests.fuzz.known import known_id, signature
from tests.fuzz.oracle import KEYS, _all_values, command_case

FUZZ = settings(max_examples=examples(100), deadline=None, suppress_health_check=list(HealthCheck))

SCHEMA_KEYWORDS = ["bsonType", "properties", "patternProperties", "additionalProperties", "items", "additionalItems",
                   "encrypt", "encryptMetadata", "keyId", "algorithm", "required", "type", "anyOf", "allOf", "oneOf",
                   "not", "enum", "description", "title", "minimum", "dependencies", "$ref"]
TYPE_NAMES = ["object", "string", "int", "long", "double", "array", "bool", "date", "binData", "objectId", "null",
              "decimal", "regex", "javascript", "symbol", "timestamp", "minKey", "maxKey", "number", "nope"]
ALGORITHMS = ["AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic", "AEAD_AES_256_CBC_HMAC_SHA_512-Random", "x", ""]
FIELD_NAMES = ["ssn", "a", "a.b", "$x", "", "addr", "_id", "enc_1", "b.0"]

leaf = st.one_of(scalar_values(), st.sampled_from(TYPE_NAMES), st.sampled_from(ALGORITHMS), st.sampled_from(KEYS),
                 st.lists(st.sampled_from(KEYS), max_size=2), st.sampled_from(["/ssn", "/", "/a/b", "^enc_", "(["]))


def _schema_tree(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keyword_object = st.dictionaries(st.sampled_from(SCHEMA_KEYWORDS), children, max_size=4)
    properties = st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=3)
    return st.one_of(keyword_object, properties, st.lists(children, max_size=3))


schema_garbage = st.recursive(leaf, _schema_tree, max_leaves=12)

queries = st.fixed_dictionaries(
    {"queryType": st.sampled_from(["equality", "range", "rangePreview", "substringPreview", "suffixPreview",
                                   "prefixPreview", "nope"])},
    optional={"contention": st.one_of(st.integers(-2, 20).map(Int64), scalar_values()),
              "sparsity": st.integers(-1, 5).map(Int64), "min": scalar_values(), "max": scalar_values(),
              "precision": st.integers(-1, 10), "trimFactor": st.integers(-1, 10),
              "strMinQueryLength": st.integers(-1, 10), "strMaxQueryLength": st.integers(-1, 10),
              "caseSensitive": st.booleans(), "diacriticSensitive": st.booleans()},
)
qe_field = st.fixed_dictionaries(
    {"path": st.sampled_from(FIELD_NAMES), "keyId": st.one_of(st.sampled_from(KEYS), scalar_values()),
     "bsonType": st.sampled_from(TYPE_NAMES)},
    optional={"queries": st.one_of(queries, st.lists(queries, max_size=2), schema_garbage, scalar_values())},
)
encryption_information = st.one_of(
    st.fixed_dictionaries({"type": st.one_of(st.just(1), scalar_values()),
                           "schema": st.dictionaries(st.sampled_from(["db.coll", "db.other", "x", ""]),
                                                     st.fixed_dictionaries(
                                                         {"fields": st.lists(qe_field, max_size=4)},
                                                         optional={"escCollection": st.text(max_size=4),
                                                                   "ecocCollection": st.text(max_size=4),
                                                                   "strEncodeVersion": st.integers(0, 2)}),
                                                     max_size=2)}),
    schema_garbage,
)


@st.composite
def garbage_command(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(MARKING_COMMANDS)))
    command: dict[str, Any] = {name: draw(st.one_of(st.just("coll"), scalar_values(), schema_garbage))}
    body = draw(st.dictionaries(st.sampled_from(["filter", "query", "documents", "updates", "deletes", "pipeline",
                                                 "update", "key", "q", "u", "sort", "projection", "cursor",
                                                 "explain", "let", "collation", "hint", "ordered", "remove",
                                                 "validator", "indexes", "nsInfo", "ops"]),
                                values(max_leaves=6), max_size=4))
    command.update(body)
    flavour = draw(st.sampled_from(["csfle", "qe", "both", "multi"]))
    if flavour in ("csfle", "both"):
        command["jsonSchema"] = draw(schema_garbage)
        command["isRemoteSchema"] = draw(st.one_of(st.booleans(), scalar_values()))
    if flavour in ("qe", "both"):
        command["encryptionInformation"] = draw(encryption_information)
    if flavour == "multi":
        command["csfleEncryptionSchemas"] = draw(st.dictionaries(
            st.sampled_from(["db.coll", "db.x", "bad"]),
            st.fixed_dictionaries({"jsonSchema": schema_garbage, "isRemoteSchema": st.booleans()}), max_size=2))
    command["$db"] = "db"
    return command


@st.composite
def mutated_case(draw: st.DrawFn) -> dict[str, Any]:
    """A valid oracle case with one subtree (anywhere: schema or command) replaced by something else."""
    case = draw(command_case(draw(st.sampled_from(["csfle", "qe"]))))
    positions = [where for where, _ in _all_values(case.command) if where]
    target = draw(st.sampled_from(positions))
    replacement = draw(st.one_of(values(max_leaves=4), schema_garbage, st.just({}), st.just([])))
    container: Any = case.command
    for step in target[:-1]:
        container = container[step]
    container[target[-1]] = replacement
    return case.command


def _mark_or_refuse(command: dict[str, Any]) -> None:
    decoded = bsonvalues.decode(bsonvalues.encode(command))
    try:
        reply = mark_command(decoded)
    except CommandError as exc:
        assert isinstance(exc.code, int) and exc.code != 1 and isinstance(exc.errmsg, str)
        return
    except Exception as exc:  # a finding, unless already known (then its xfail regression test pins it)
        if known_id(exc) is not None:
            return
        raise AssertionError(f"CRASH {signature(exc)} for {command!r}\n{traceback.format_exc()}") from exc
    assert reply["ok"] == 1.0 and isinstance(reply["result"], dict)
    bsonvalues.encode(reply)  # the server must be able to send it


@FUZZ
@given(garbage_command())
def test_garbage_commands_are_marked_or_refused(command):
    _mark_or_refuse(command)


@FUZZ
@given(mutated_case())
def test_mutated_valid_commands_are_marked_or_refused(command):
    _mark_or_refuse(command)


# Finding F7 (found by test_mutated_valid_commands_are_marked_or_refused; fixed in 7e797cf): an `algorithm`
# that is not hashable made markd/analysis/csfle/schema.py _metadata_fields raise TypeError -> InternalError.
@pytest.mark.parametrize("algorithm", [{}, [], {"a": 1}])
def test_csfle_unhashable_algorithm_is_refused(algorithm):
    command = {"insert": "coll", "documents": [{}], "isRemoteSchema": False, "$db": "db",
               "jsonSchema": {"bsonType": "object", "properties": {"age": {"encrypt": {
                   "keyId": [KEYS[0]], "algorithm": algorithm, "bsonType": "string"}}}}}
    with pytest.raises(CommandError):
        mark_command(bsonvalues.decode(bsonvalues.encode(command)))


def _qe_insert(field: dict[str, Any]) -> dict[str, Any]:
    return {"insert": "coll", "documents": [{}], "$db": "db", "encryptionInformation": {"type": 1, "schema": {
        "db.coll": {"escCollection": "e", "ecocCollection": "c", "fields": [{"path": "ssn", "keyId": KEYS[0],
                                                                             **field}]}}}}


# Finding F8 (found by run_long --analysis; fixed in a093c83): a `queryType` that is not hashable made
# markd/analysis/qe/fields.py _parse_query raise TypeError -> InternalError.
@pytest.mark.parametrize("query_type", [{}, [], ["equality"]])
def test_qe_unhashable_query_type_is_refused(query_type):
    with pytest.raises(CommandError):
        mark_command(_qe_insert({"bsonType": "string", "queries": {"queryType": query_type}}))


# Finding F9 (found by run_long --analysis; fixed in a093c83): a `bsonType` given as BSON JavaScript code.
# pymongo's Code is a str subclass, so it passed the isinstance(str) check, but it is not hashable.
def test_qe_code_bson_type_is_refused():
    from bson.code import Code

    with pytest.raises(CommandError):
        mark_command(_qe_insert({"bsonType": Code("string")}))


# Finding F10 (found by run_long --analysis at 21:35): a JSON-Schema `bsonType` given as BSON JavaScript
# (pymongo's Code: a str subclass, not hashable) - the CSFLE twin of F9.
# Regression test (F10 fixed: _type_names asks type() is str, so Code is refused as a type name).
@pytest.mark.parametrize("bson_type", ["top", "nested", "list"])
def test_csfle_code_bson_type_is_refused(bson_type):
    from bson.code import Code

    schema = {"top": {"bsonType": Code("object")},
              "nested": {"bsonType": "object", "properties": {"a": {"bsonType": Code("string")}}},
              "list": {"bsonType": [Code("object")]}}[bson_type]
    command = {"insert": "coll", "documents": [{}], "jsonSchema": schema, "isRemoteSchema": False, "$db": "db"}
    with pytest.raises(CommandError):
        mark_command(bsonvalues.decode(bsonvalues.encode(command)))
