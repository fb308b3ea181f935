"""The Queryable Encryption rules a command carries: `encryptionInformation` (for bulkWrite, in `nsInfo`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markd.analysis.expressions import is_document
from markd.analysis.qe.errors import error
from markd.analysis.qe.fields import EncryptionInformation, parse_encryption_information
from markd.analysis.schema import EMPTY, Schema
from markd.analysis.scheme import Rules

# encryptionInformation goes back to the server (it needs it); csfleEncryptionSchemas does not.
STRIPPED = frozenset({"csfleEncryptionSchemas"})


def _mentions_encryption(schema: Any) -> bool:
    if is_document(schema):
        return any(k in ("encrypt", "encryptMetadata") or _mentions_encryption(v) for k, v in schema.items())
    if isinstance(schema, list):
        return any(_mentions_encryption(v) for v in schema)
    return False


def _with_plain_csfle_namespaces(command: Mapping[str, Any], information: EncryptionInformation
                                 ) -> EncryptionInformation:
    """Collections libmongocrypt describes by a CSFLE schema beside QE ones ($lookup, 8.2+): allowed only
    when those schemas encrypt nothing, and then they are collections without encrypted fields."""
    schemas = command.get("csfleEncryptionSchemas")
    if schemas is None:
        return information
    if not is_document(schemas) or any(_mentions_encryption(v) for v in schemas.values()):
        raise error("MIXED_SCHEMAS")
    combined: dict[str, Schema] = {ns: Schema(EMPTY) for ns in schemas}
    combined.update(information.schemas)
    return EncryptionInformation(combined)


def _bulk_write_rules(command: Mapping[str, Any]) -> tuple[str, Any]:
    """bulkWrite names its one namespace, and carries its encryptionInformation, in `nsInfo`."""
    if command.get("$db", "admin") != "admin":
        raise error("bulk_write_admin")
    namespaces = command.get("nsInfo")
    if not isinstance(namespaces, list) or len(namespaces) != 1 or not is_document(namespaces[0]):
        raise error("BULK_ONE_NAMESPACE")
    entry = namespaces[0]
    if "encryptionInformation" not in entry and "encryptionInformation" not in command:
        raise error("BULK_NEEDS_INFO")
    return str(entry.get("ns", "")), entry.get("encryptionInformation", command.get("encryptionInformation"))


def read_rules(command: Mapping[str, Any], name: str, namespace: str) -> Rules:
    if "jsonSchema" in command:
        raise error("BOTH_SCHEMAS" if name != "aggregate" else "BOTH_SCHEMAS_MULTI")
    if "isRemoteSchema" in command:
        raise error("BOTH_REMOTE")
    if name == "bulkWrite":
        namespace, raw_information = _bulk_write_rules(command)
        information = parse_encryption_information(raw_information)
        return Rules({namespace: information.for_namespace(namespace)}, namespace, frozenset())
    information = parse_encryption_information(command.get("encryptionInformation"))
    schemas = information.schemas
    if name == "aggregate":
        information = _with_plain_csfle_namespaces(command, information)
        if namespace not in information.schemas:
            raise error("MULTI_NAMESPACE_MISMATCH", namespace=namespace)
        return Rules(information.schemas, namespace, STRIPPED, multi=True)
    if "csfleEncryptionSchemas" in command:
        raise error("MULTI_ONLY_AGGREGATE")
    if len(schemas) != 1:
        raise error("ONE_NAMESPACE")
    return Rules({namespace: information.for_namespace(namespace)}, namespace, frozenset())
