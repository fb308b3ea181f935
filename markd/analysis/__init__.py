"""Query analysis: a marking command in, the marked command (or a CommandError) out.

Pure: no sockets, no clocks.  `mark_command` is the one entry point the server (and the in-process
library) calls for every command libmongocrypt sends for marking.  One core analyses every command
for both schemes (`commands`, `match`, `expressions`, `pipeline`, `update`, `documents`, over the
schema tree of `schema`); the scheme the command's rules name (`csfle` for `jsonSchema` /
`csfleEncryptionSchemas`, `qe` for `encryptionInformation`) supplies what differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markd import bsonvalues
from markd.errors import CommandError

# Every command libmongocrypt sends to mongocryptd for marking.
MARKING_COMMANDS = frozenset(
    {
        "aggregate",
        "bulkWrite",
        "collMod",
        "count",
        "create",
        "createIndexes",
        "delete",
        "distinct",
        "explain",
        "find",
        "findAndModify",
        "findandmodify",
        "insert",
        "update",
    }
)

CSFLE_FIELDS = ("jsonSchema", "isRemoteSchema", "csfleEncryptionSchemas")
RULE_FIELDS = frozenset({*CSFLE_FIELDS, "encryptionInformation"})
QE_FIELD = "encryptionInformation"
DEFAULT_VERBOSITY = "allPlansExecution"
# Commands whose result only carries a verdict (libmongocrypt forwards its own, translated, command).
SCHEMA_COMMANDS = frozenset({"create", "collMod", "createIndexes"})


def _carries(command: Mapping[str, Any], field: str) -> bool:
    """Whether the rules sit at the top level, in the explained command, or (bulkWrite) in nsInfo[0]."""
    if field in command:
        return True
    inner = command.get("explain")
    if isinstance(inner, Mapping) and field in inner:
        return True
    namespaces = command.get("nsInfo")
    return (
        isinstance(namespaces, list) and bool(namespaces) and isinstance(namespaces[0], Mapping)
        and field in namespaces[0]
    )


def _scheme(command: Mapping[str, Any]) -> Any:
    # bulkWrite's rules are in nsInfo: mongocryptd reads it as Queryable Encryption's (CSFLE has none).
    if _carries(command, QE_FIELD) or (next(iter(command), "") == "bulkWrite"
                                       and not any(field in command for field in CSFLE_FIELDS)):
        return _core().qe
    if any(_carries(command, field) for field in CSFLE_FIELDS):
        return _core().csfle
    # Without encryption rules there is nothing to prove a value safe against: refuse, as mongocryptd
    # does (aggregate, which may name several namespaces, with its own wording).
    name = next(iter(command), "")
    if name == "explain" and isinstance(command.get("explain"), Mapping):
        name = next(iter(command["explain"]), "")
    if name == "aggregate":
        raise CommandError(9686705, "Must specify either jsonSchema, csfleEncryptionSchemas or encryptionInformation")
    raise CommandError(51073, "jsonSchema or encryptionInformation is required")


def _namespace(command: Mapping[str, Any], name: str, database: str) -> str:
    if name == "aggregate" and not isinstance(command.get(name), str):
        return f"{database}.$cmd.aggregate"  # a collection-less pipeline ({aggregate: 1}), as mongod names it
    if name == "bulkWrite":
        infos = command.get("nsInfo")
        if isinstance(infos, list) and infos and isinstance(infos[0], Mapping) and isinstance(infos[0].get("ns"), str):
            return infos[0]["ns"]
    return f"{database}.{command.get(name)}"


class _Core:
    """The analysis modules, imported on first use (`import markd.analysis` stays cheap for tools that only
    need MARKING_COMMANDS) and then held here: an import statement in a function costs a microsecond
    or so on every call."""

    def __init__(self) -> None:
        from markd.analysis import commands
        from markd.analysis.csfle.policy import SCHEME as CSFLE
        from markd.analysis.qe.policy import SCHEME as QE

        self.commands = commands
        self.csfle = CSFLE
        self.qe = QE


_loaded: _Core | None = None


def _core() -> _Core:
    global _loaded
    if _loaded is None:
        _loaded = _Core()
    return _loaded


def _analyse(command: Mapping[str, Any], parameters: Mapping[str, Any], database: str
             ) -> tuple[dict[str, Any], bool, bool]:
    """(result, hasEncryptionPlaceholders, schemaRequiresEncryption) for one (non-explain) command."""
    commands = _core().commands
    if not command:
        raise CommandError(59, "no such command: ''", "CommandNotFound")
    name = next(iter(command))
    if name not in commands.COMMANDS:
        raise CommandError(59, f"no such command: '{name}'", "CommandNotFound")
    duplicates = getattr(command, "duplicates", ())
    if duplicates:
        raise CommandError(40413, f"BSON field '{name}.{duplicates[0]}' is a duplicate field")
    scheme = _scheme(parameters)
    rules = scheme.read_rules(parameters, name, _namespace(command, name, database))
    if bsonvalues.has_duplicates(command):
        # The rules were read (and refused their own repeated names); anywhere else a name given twice
        # would be read last-one-wins, as a dict holds it: refused.
        repeated = bsonvalues.first_duplicate(bsonvalues.DuplicateKeys(
            {k: v for k, v in command.items() if k not in RULE_FIELDS}, nested=True))
        if repeated is not None:
            raise CommandError(40413, f"BSON field '{name}.{repeated}' is a duplicate field")
    if name == "aggregate":
        commands.check_involved_collections(command.get("pipeline"), rules, scheme, database)
    result, analysis = commands.analyse(command, name, scheme, rules, database)
    requires = rules.encrypts_anything
    if name in SCHEMA_COMMANDS:
        return scheme.schema_command_result(result), False, scheme.schema_command_requires(requires)
    if name == "findandmodify":
        # mongod's request serializer writes the command under its camel-case name.
        result = {("findAndModify" if key == "findandmodify" else key): value for key, value in result.items()}
    # hasEncryptionPlaceholders also when an encrypted comparison folded away: a client that sends the
    # original command when the flag is false (the contract's reading) would send its plaintext.
    return result, requires and analysis.encrypted_values > 0, requires


# mongocryptd's explain wants the rules beside `explain`, never inside the explained command.
INNER_RULES_REFUSED = {
    "jsonSchema": (30050, "In an explain command the jsonSchema field must be top-level and not inside the command "
                          "being explained."),
    "isRemoteSchema": (31103, "In an explain command the isRemoteSchema field must be top-level and not inside the "
                              "command being explained."),
    "encryptionInformation": (6365900, "In an explain command the encryptionInformation field must be top-level and "
                                       "not inside the command being explained."),
}


def _explain(command: Mapping[str, Any], in_process: bool) -> tuple[dict[str, Any], bool, bool]:
    commands = _core().commands
    inner = command.get("explain")
    if not isinstance(inner, Mapping):
        raise CommandError(14, "BSON field 'explain.explain' is the wrong type "
                               f"'{commands.type_name(inner)}', expected type 'object'")
    explained = next(iter(inner), "")
    if explained not in commands.EXPLAINABLE:
        if explained == "explain":
            raise CommandError(20, "Explain cannot explain itself.")
        if explained in commands.COMMANDS:
            raise CommandError(20, f"Command does not support explain: {explained}")
        raise CommandError(59, f"Explain failed due to unknown command: {explained}", "CommandNotFound")
    if not in_process:
        for field in inner:
            refused = INNER_RULES_REFUSED.get(field)
            if refused is not None:
                raise CommandError(*refused)
    database = str(inner.get("$db", command.get("$db", "")))
    rule_fields = (*CSFLE_FIELDS, QE_FIELD)
    parameters = {**{k: v for k, v in inner.items() if k in rule_fields},
                  **{k: v for k, v in command.items() if k in rule_fields}}
    analysed: dict[str, Any] = {**{k: v for k, v in inner.items() if k != "$db"}, **parameters}
    if bsonvalues.has_duplicates(command):
        inner_repeated = getattr(inner, "duplicates", ())
        outer_repeated = getattr(command, "duplicates", ())
        if inner_repeated:
            raise CommandError(40413, f"BSON field '{explained}.{inner_repeated[0]}' is a duplicate field")
        if outer_repeated:
            raise CommandError(40413, f"BSON field 'explain.{outer_repeated[0]}' is a duplicate field")
        analysed = bsonvalues.DuplicateKeys(analysed, nested=True)
    result, marked, requires = _analyse(analysed, analysed, database)
    outer: dict[str, Any] = {"explain": result, "verbosity": command.get("verbosity", DEFAULT_VERBOSITY)}
    for key, value in command.items():
        if key not in ("explain", "verbosity", "$db", *rule_fields):
            outer[key] = value
    return outer, marked, requires


def mark_command(command: Mapping[str, Any], *, in_process: bool = False) -> dict[str, Any]:
    """The reply to a marking command: {hasEncryptionPlaceholders, schemaRequiresEncryption, result, ok}.

    `in_process`: asked through the shared library, where libmongocrypt puts Queryable Encryption's
    rules inside an explained command (for the daemon it puts them beside it).
    """
    if next(iter(command), "") == "explain":
        result, marked, requires = _explain(command, in_process)
    else:
        result, marked, requires = _analyse(command, command, str(command.get("$db", "")))
    result.pop("$db", None)
    return {
        "hasEncryptionPlaceholders": marked,
        "schemaRequiresEncryption": requires,
        "result": result,
        "ok": 1.0,
    }


def cache_stats() -> tuple[int, int]:
    """(hits, misses) of the parsed-rules caches of both schemes."""
    import sys

    hits = misses = 0
    for name in ("markd.analysis.csfle.jsonschema", "markd.analysis.qe.fields"):
        module = sys.modules.get(name)
        stats = getattr(module, "cache_stats", None)
        if stats is not None:
            scheme_hits, scheme_misses = stats()
            hits += scheme_hits
            misses += scheme_misses
    return hits, misses
