"""Queryable Encryption (FLE2) analysis: commands checked against `encryptedFields`.

`mark(command)` parses `encryptionInformation` (cached), finds the command's namespace schema,
runs the command's handler (`commands.COMMANDS`) and says whether libmongocrypt must use the result.
The result keeps `encryptionInformation` (the server needs it), except for create/collMod/createIndexes.
"""

from __future__ import annotations

from typing import Any

from markd.analysis import MarkResult
from markd.analysis.qe.commands import COMMANDS, SCHEMA_COMMANDS
from markd.analysis.qe.context import Context
from markd.analysis.qe.errors import error
from markd.analysis.qe.fields import EncryptedFields, EncryptionInformation, cache_stats, parse_encryption_information

__all__ = ["cache_stats", "mark"]

DEFAULT_EXPLAIN_VERBOSITY = "allPlansExecution"


def _command_name(command: dict[str, Any]) -> str:
    if not command:
        raise error("MALFORMED", detail="empty command")
    return next(iter(command))


def _schema(command: dict[str, Any], name: str, information: Any) -> tuple[EncryptedFields, str]:
    """The command's own namespace schema: one namespace, or (aggregate only) several including it."""
    database = command.get("$db")
    collection = command.get(name)
    schemas = information.schemas
    if not (isinstance(database, str) and isinstance(collection, str)):
        if len(schemas) != 1:
            raise error("ONE_NAMESPACE")
        namespace, schema = next(iter(schemas.items()))
        return schema, namespace.split(".", 1)[0]
    namespace = f"{database}.{collection}"
    if name == "aggregate":
        if namespace not in schemas:
            raise error("MULTI_NAMESPACE_MISMATCH", namespace=namespace)
        return schemas[namespace], database
    if len(schemas) != 1:
        raise error("ONE_NAMESPACE")
    return information.for_namespace(namespace), database


def _bulk_write_namespace(command: dict[str, Any]) -> tuple[str, Any]:
    """bulkWrite names its one namespace, and carries its encryptionInformation, in `nsInfo`."""
    if command.get("$db", "admin") != "admin":
        raise error("BULK_ADMIN")
    namespaces = command.get("nsInfo")
    if not isinstance(namespaces, list) or len(namespaces) != 1 or not isinstance(namespaces[0], dict):
        raise error("BULK_ONE_NAMESPACE")
    entry = namespaces[0]
    if "encryptionInformation" not in entry and "encryptionInformation" not in command:
        raise error("BULK_NEEDS_INFO")
    return str(entry.get("ns", "")), entry.get("encryptionInformation", command.get("encryptionInformation"))


def _mentions_encryption(schema: Any) -> bool:
    if isinstance(schema, dict):
        return any(k in ("encrypt", "encryptMetadata") or _mentions_encryption(v) for k, v in schema.items())
    if isinstance(schema, list):
        return any(_mentions_encryption(v) for v in schema)
    return False


def _with_plain_csfle_namespaces(command: dict[str, Any], information: EncryptionInformation) -> EncryptionInformation:
    """Collections libmongocrypt describes by a CSFLE schema beside QE ones ($lookup, 8.2+): allowed only
    when those schemas encrypt nothing, and then they are collections without encrypted fields."""
    schemas = command.get("csfleEncryptionSchemas")
    if schemas is None:
        return information
    if not isinstance(schemas, dict) or any(_mentions_encryption(v) for v in schemas.values()):
        raise error("MIXED_SCHEMAS")
    combined = {ns: EncryptedFields(ns, ()) for ns in schemas}
    combined.update(information.schemas)
    return EncryptionInformation(combined)


def _mark_command(command: dict[str, Any]) -> MarkResult:
    name = _command_name(command)
    if "jsonSchema" in command:
        raise error("BOTH_SCHEMAS")
    if "isRemoteSchema" in command:
        raise error("BOTH_REMOTE")
    handler = COMMANDS.get(name)
    if handler is None:
        raise error("COMMAND", command=name)
    if name == "bulkWrite":
        namespace, raw_information = _bulk_write_namespace(command)
        information = parse_encryption_information(raw_information)
        schema, database = information.for_namespace(namespace), namespace.split(".", 1)[0]
    else:
        information = parse_encryption_information(command.get("encryptionInformation"))
        if "csfleEncryptionSchemas" in command:
            information = _with_plain_csfle_namespaces(command, information)
            command = {k: v for k, v in command.items() if k != "csfleEncryptionSchemas"}
        schema, database = _schema(command, name, information)
    anything_encrypted = any(s.encrypts_anything for s in information.schemas.values())
    ctx = Context(schema, information, database, command.get("collation"))
    marked = handler(command, ctx)
    if name in SCHEMA_COMMANDS:
        # libmongocrypt must use this result: it is where keyAltNames in encryptedFields get translated.
        return MarkResult(marked, False, True)
    if not anything_encrypted:
        return MarkResult(dict(command), False, False)
    return MarkResult(marked, ctx.tally.placeholders > 0, True)


def _mark_explain(command: dict[str, Any]) -> MarkResult:
    inner = dict(command["explain"])
    if "encryptionInformation" not in inner and "encryptionInformation" in command:
        inner["encryptionInformation"] = command["encryptionInformation"]
    marked = _mark_command(inner)
    explained = dict(marked.result)
    explained.pop("$db", None)
    result: dict[str, Any] = {"explain": explained, "verbosity": command.get("verbosity", DEFAULT_EXPLAIN_VERBOSITY)}
    for key, value in command.items():
        if key not in ("explain", "verbosity", "encryptionInformation", "$db"):
            result[key] = value
    return MarkResult(result, marked.has_encryption_placeholders, marked.schema_requires_encryption)


def mark(command: dict[str, Any]) -> MarkResult:
    """The marked command, or a CommandError with mongocryptd's code."""
    if isinstance(command.get("explain"), dict):
        return _mark_explain(command)
    return _mark_command(command)
