"""The CSFLE rules a command carries: `jsonSchema` + `isRemoteSchema`, or `csfleEncryptionSchemas`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markd.analysis.csfle.errors import fail
from markd.analysis.csfle.jsonschema import parse
from markd.analysis.expressions import is_document
from markd.analysis.schema import Schema
from markd.analysis.scheme import Rules

SCHEMA_FIELDS = frozenset({"jsonSchema", "isRemoteSchema", "csfleEncryptionSchemas"})


def read_rules(parameters: Mapping[str, Any], name: str, namespace: str) -> Rules:
    """The schema parameters of a command (for explain: the outer command's), checked in mongocryptd's order.

    aggregate may name several namespaces (`csfleEncryptionSchemas`); every other command exactly one.
    """
    multi_allowed = name == "aggregate"
    json_schema: Any = None
    remote: bool | None = None
    several: Any = None
    for field, value in parameters.items():
        if field == "jsonSchema":
            if not is_document(value):
                fail("schema_not_object")
            json_schema = value
        elif field == "isRemoteSchema":
            if not isinstance(value, bool):
                fail("remote_not_bool")
            remote = value
        elif field == "csfleEncryptionSchemas":
            if not multi_allowed:
                fail("multi_only_aggregate")
            if not is_document(value):
                fail("multi_not_object")
            several = value
    if multi_allowed:
        if json_schema is None and several is None:
            fail("multi_schema_required")
        if json_schema is not None:
            if remote is None:
                fail("multi_remote_required")
            if several is not None:
                fail("schema_and_multi")
        elif remote is not None:
            fail("remote_and_multi")
    else:
        if json_schema is None:
            fail("schema_required")
        if remote is None:
            fail("remote_required")
    if json_schema is not None:
        assert remote is not None
        return Rules({namespace: parse(json_schema, remote)}, namespace, SCHEMA_FIELDS)
    parsed: dict[str, Schema] = {}
    repeated = getattr(several, "duplicates", ())
    if repeated:
        # mongocryptd keeps the first copy of a namespace; markd reads neither.
        fail("idl_duplicate", field=f"csfleEncryptionSchemas.{repeated[0]}")
    for ns, entry in several.items():
        if not is_document(entry):
            fail("ns_schema_not_object")
        repeated = getattr(entry, "duplicates", ())
        if repeated:
            fail("idl_duplicate", field=f"EncryptionSchemaCSFLE.{repeated[0]}")
        for required in ("jsonSchema", "isRemoteSchema"):
            if required not in entry:
                fail("idl_missing", field=f"EncryptionSchemaCSFLE.{required}")
        for field in entry:
            if field not in ("jsonSchema", "isRemoteSchema"):
                fail("idl_unknown", field=f"EncryptionSchemaCSFLE.{field}")
        if not is_document(entry["jsonSchema"]):
            fail("idl_wrong_type", field="EncryptionSchemaCSFLE.jsonSchema", actual="other", expected="object")
        if not isinstance(entry["isRemoteSchema"], bool):
            fail("idl_wrong_type", field="EncryptionSchemaCSFLE.isRemoteSchema", actual="other", expected="bool")
        parsed[ns] = parse(entry["jsonSchema"], entry["isRemoteSchema"])
    if namespace not in parsed:
        fail("ns_mismatch", ns=namespace)
    return Rules(parsed, namespace, SCHEMA_FIELDS, multi=True)
