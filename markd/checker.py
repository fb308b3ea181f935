"""`markd check`: try a command against encryption rules offline, with the daemon's own analysis.

The rules are what an application configures (`schema_map` / `encrypted_fields_map` in
`AutoEncryptionOpts`, or what Django MongoDB Backend's `showencryptedfieldsmap` prints); the command
is what the application would run.  `check` builds the command exactly as libmongocrypt sends it to
mongocryptd (CSFLE: `jsonSchema` + `isRemoteSchema: false`, or `csfleEncryptionSchemas` for a
pipeline over several collections; QE: `encryptionInformation` with mongod's default state
collection names), runs `markd.analysis.mark_command` on it in process, and says what came back:
the marked command and every placeholder in it, or the refusal with its reason
(`markd.refusals.explain`).  No socket, no daemon, no database.

Input that cannot be checked (unparseable JSON, not a command, invalid rules, a namespace the rules
do not describe) raises `BadInput`, with one line saying why.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bson import json_util
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import DatetimeConversion
from bson.errors import InvalidBSON, InvalidDocument
from bson.objectid import ObjectId

from markd import bsonvalues
from markd.analysis import MARKING_COMMANDS, RULE_FIELDS, mark_command
from markd.analysis.schema import Schema
from markd.errors import CommandError

if TYPE_CHECKING:
    from markd.refusals import Refusal

CSFLE, QE = "csfle", "qe"
SCHEME_NAMES = {CSFLE: "CSFLE", QE: "Queryable Encryption"}
# The four shapes RULES may take.
JSON_SCHEMA, SCHEMA_MAP, ENCRYPTED_FIELDS, ENCRYPTED_FIELDS_MAP = (
    "jsonSchema", "schemaMap", "encryptedFields", "encryptedFieldsMap")
SCHEME_OF_KIND = {JSON_SCHEMA: CSFLE, SCHEMA_MAP: CSFLE, ENCRYPTED_FIELDS: QE, ENCRYPTED_FIELDS_MAP: QE}

# Top-level names of one collection's encryptedFields (mongod's EncryptedFieldConfig).
ENCRYPTED_FIELDS_NAMES = frozenset({"fields", "escCollection", "ecocCollection", "eccCollection",
                                    "strEncodeVersion"})
# Every command the analysis answers (findandmodify is findAndModify's old spelling).
COMMAND_NAMES = tuple(sorted(MARKING_COMMANDS - {"findandmodify"}, key=str.lower))

# Extended JSON in: relaxed and canonical alike; dates outside datetime's range kept as DatetimeMS.
JSON_OPTIONS = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED,
                                     uuid_representation=UuidRepresentation.UNSPECIFIED,
                                     datetime_conversion=DatetimeConversion.DATETIME_AUTO)


class BadInput(ValueError):
    """RULES or CMD cannot be checked; the message is one line saying why."""


# -- reading input --------------------------------------------------------------------------------------


def _object_pairs(pairs: list[tuple[str, Any]], what: str) -> Any:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise BadInput(f"{what}: the name '{repeated}' is given twice in one object")
    # The deprecated types pymongo's json_util folds into others: kept exact, as markd's decoder keeps them.
    if len(pairs) == 1:
        name, value = pairs[0]
        if name == "$symbol" and isinstance(value, str):
            return bsonvalues.Symbol(value)
        if name == "$undefined" and value is True:
            return bsonvalues.Undefined()
        if name == "$dbPointer" and isinstance(value, Mapping) and isinstance(value.get("$id"), ObjectId):
            return bsonvalues.DBPointer(str(value.get("$ref", "")), value["$id"])
    return json_util.object_pairs_hook(pairs, JSON_OPTIONS)


def parse_json(text: str, what: str) -> Any:
    """Extended JSON (relaxed or canonical) -> BSON values; BadInput naming `what` when it is not."""
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _object_pairs(pairs, what))
    except BadInput:
        raise
    except json.JSONDecodeError as exc:
        raise BadInput(f"{what}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise BadInput(f"{what}: not Extended JSON: {' '.join(str(exc).split())}") from None


def _document(value: Any, what: str) -> dict[str, Any]:
    """`value` (Extended JSON text or a mapping) as markd's decoder would hand it to the analysis."""
    if isinstance(value, (str, bytes)):
        value = parse_json(value.decode() if isinstance(value, bytes) else value, what)
    if not isinstance(value, Mapping):
        raise BadInput(f"{what}: expected a JSON object, got {_json_kind(value)}")
    try:
        # Through BSON and back: exactly the types the daemon would see (int32/int64, symbol...).
        return bsonvalues.decode(bsonvalues.encode(_plain(value)))
    except (InvalidDocument, InvalidBSON, TypeError, ValueError, OverflowError) as exc:
        raise BadInput(f"{what}: not a BSON document: {' '.join(str(exc).split())}") from None


def _plain(value: Any) -> Any:
    """Python values a test suite may pass that BSON spells differently (UUID, tuple)."""
    if isinstance(value, uuid.UUID):
        return Binary.from_uuid(value)
    if isinstance(value, Mapping) and not isinstance(value, bsonvalues.DuplicateKeys):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return f"a {bsonvalues.bson_type(value)}" if _is_bson(value) else f"a {type(value).__name__}"


def _is_bson(value: Any) -> bool:
    try:
        bsonvalues.bson_type(value)
    except TypeError:
        return False
    return True


# -- the rules ---------------------------------------------------------------------------------------


def _is_encrypted_fields(document: Any) -> bool:
    return isinstance(document, Mapping) and isinstance(document.get("fields"), list)


def _is_json_schema(document: Any) -> bool:
    from markd.analysis.csfle.jsonschema import JSON_SCHEMA_KEYWORDS, UNIMPLEMENTED_KEYWORDS

    # One known keyword is enough: a misspelt one is then refused by the schema parser, with its name.
    return isinstance(document, Mapping) and (
        not document or any(key in JSON_SCHEMA_KEYWORDS or key in UNIMPLEMENTED_KEYWORDS for key in document))


@dataclass(frozen=True)
class Rules:
    """RULES as detected: its shape, its scheme, and each namespace's rules.

    `namespaces` maps "db.coll" (a schema map, an encrypted_fields_map), or "coll" alone (Django's
    `showencryptedfieldsmap` names collections by db_table), to that collection's rules; a single
    jsonSchema or encryptedFields document applies to whatever namespace the command names ("").
    """

    kind: str
    namespaces: Mapping[str, Mapping[str, Any]]

    @property
    def scheme(self) -> str:
        return SCHEME_OF_KIND[self.kind]

    @property
    def single(self) -> bool:
        return self.kind in (JSON_SCHEMA, ENCRYPTED_FIELDS)

    def lookup(self, database: str, collection: str) -> Mapping[str, Any] | None:
        if self.single:
            return self.namespaces[""]
        found = self.namespaces.get(f"{database}.{collection}")
        return found if found is not None else self.namespaces.get(collection)

    def described(self) -> str:
        return ", ".join(sorted(self.namespaces)) or "none"


def detect_rules(document: Mapping[str, Any]) -> Rules:
    """Which of the four shapes RULES has (BadInput when none)."""
    if _is_encrypted_fields(document):
        return Rules(ENCRYPTED_FIELDS, {"": document})
    if _is_json_schema(document):
        return Rules(JSON_SCHEMA, {"": document})
    if not all(isinstance(value, Mapping) for value in document.values()):
        raise BadInput("RULES: not a jsonSchema, a schema map {ns: jsonSchema}, an encryptedFields document or an "
                       f"encrypted fields map {{ns: encryptedFields}} (top-level names: {', '.join(document)})")
    kinds = {ENCRYPTED_FIELDS_MAP if _is_encrypted_fields(value) else SCHEMA_MAP if _is_json_schema(value)
             else "?" for value in document.values() if value}
    for namespace, value in document.items():
        if not namespace or namespace.startswith(".") or namespace.endswith("."):
            raise BadInput(f"RULES: '{namespace}' is not a namespace (db.collection) or a collection name")
        if value and not (_is_encrypted_fields(value) or _is_json_schema(value)):
            raise BadInput(f"RULES: the rules for '{namespace}' are neither a jsonSchema nor an encryptedFields "
                           f"document (names: {', '.join(value)})")
    if len(kinds) > 1:
        raise BadInput("RULES: a map must hold jsonSchemas (CSFLE) or encryptedFields documents (Queryable "
                       "Encryption), not both")
    return Rules(kinds.pop() if kinds else SCHEMA_MAP, dict(document))


def parsed_schema(rules: Mapping[str, Any], scheme: str) -> Schema:
    """One collection's rules as the analysis parses them (CommandError when they are invalid)."""
    if scheme == CSFLE:
        from markd.analysis.csfle.jsonschema import parse

        return parse(rules, False)
    from markd.analysis.qe.fields import parse_encrypted_fields

    return parse_encrypted_fields(rules)


# -- the command -------------------------------------------------------------------------------------


def _name(command: Mapping[str, Any]) -> str:
    return next(iter(command), "")


def _target(command: Mapping[str, Any], what: str = "CMD") -> tuple[str, Mapping[str, Any]]:
    """(command name, the document naming the collection): the explained command for explain."""
    name = _name(command)
    if name == "explain":
        inner = command.get("explain")
        if not isinstance(inner, Mapping) or not inner:
            raise BadInput(f"{what}: explain needs the explained command as an object")
        inner_name = _name(inner)
        if inner_name not in MARKING_COMMANDS or inner_name == "explain":
            raise BadInput(f"{what}: explain of '{inner_name}', which is not a command markd analyses "
                           f"({', '.join(COMMAND_NAMES)})")
        return inner_name, inner
    if name not in MARKING_COMMANDS:
        if not name:
            raise BadInput(f"{what}: empty document, not a command")
        raise BadInput(f"{what}: '{name}' is not a command markd analyses ({', '.join(COMMAND_NAMES)})")
    return name, command


def _split(namespace: str) -> tuple[str, str]:
    database, dot, collection = namespace.partition(".")
    if not dot or not database or not collection:
        raise BadInput(f"--namespace: '{namespace}' is not database.collection")
    return database, collection


def _resolve_namespace(command: Mapping[str, Any], rules: Rules, namespace: str | None) -> tuple[str, str]:
    """(database, collection) the command runs on, from the command, --namespace and the rules."""
    name, target = _target(command)
    given = _split(namespace) if namespace else None
    if name == "bulkWrite":
        infos = target.get("nsInfo")
        if isinstance(infos, list) and infos and isinstance(infos[0], Mapping) and isinstance(infos[0].get("ns"),
                                                                                               str):
            found = _split(infos[0]["ns"])
            if given and given != found:
                raise BadInput(f"CMD: bulkWrite writes to {'.'.join(found)}, not {namespace}")
            return found
        if given:
            return given
        raise BadInput("CMD: bulkWrite needs nsInfo: [{ns: 'db.coll'}]")
    collection = target.get(name)
    if not isinstance(collection, str) or not collection:
        raise BadInput(f"CMD: '{name}' must name a collection (a string)")
    database = command.get("$db", target.get("$db"))
    if given:
        if given[1] != collection:
            raise BadInput(f"CMD: the command runs on collection '{collection}', not on {namespace}")
        if isinstance(database, str) and database != given[0]:
            raise BadInput(f"CMD: the command's $db is '{database}', not the database of {namespace}")
        return given
    if isinstance(database, str) and database:
        return database, collection
    # Without a database, a map that names the collection in exactly one database says which.
    candidates = {ns.partition(".")[0] for ns in rules.namespaces if ns.partition(".")[2] == collection}
    if len(candidates) == 1:
        return candidates.pop(), collection
    raise BadInput("CMD: no database: add \"$db\" to the command or give --namespace db.collection")


def _schema_for(rules: Rules, database: str, collection: str) -> Mapping[str, Any]:
    found = rules.lookup(database, collection)
    if found is None:
        empty = "{}" if rules.scheme == CSFLE else '{"fields": []}'
        raise BadInput(f"{database}.{collection} is not in the rules (they describe: {rules.described()}); add it, "
                       f"as {empty} if it has no encrypted fields")
    return found


def _involved(command: Mapping[str, Any], name: str, target: Mapping[str, Any], collection: str) -> list[str]:
    """The other collections an aggregate pipeline reads or writes, in a stable order."""
    if name != "aggregate":
        return []
    from markd.analysis.commands import involved_collections

    return sorted(involved_collections(target.get("pipeline")) - {collection})


def _validated(rules: Rules, database: str, collection: str) -> Mapping[str, Any]:
    document = _schema_for(rules, database, collection)
    try:
        parsed_schema(document, rules.scheme)
    except CommandError as exc:
        what = "jsonSchema" if rules.scheme == CSFLE else "encryptedFields"
        raise BadInput(f"RULES: invalid {what} for {database}.{collection}: {exc.errmsg} "
                       f"(mongocryptd code {exc.code})") from None
    return document


def _qe_entry(encrypted_fields: Mapping[str, Any], collection: str) -> dict[str, Any]:
    """encryptedFields as libmongocrypt sends it: mongod's default state collection names appended when absent."""
    entry = dict(encrypted_fields)
    entry.setdefault("escCollection", f"enxcol_.{collection}.esc")
    entry.setdefault("ecocCollection", f"enxcol_.{collection}.ecoc")
    return entry


def build_command(command: Mapping[str, Any], rules: Rules, database: str, collection: str) -> dict[str, Any]:
    """The marking command libmongocrypt would send mongocryptd for `command` under `rules`."""
    name, target = _target(command)
    others = _involved(command, name, target, collection)
    namespaces = [(database, collection)] + [(database, other) for other in others]
    documents = {f"{db}.{coll}": _validated(rules, db, coll) for db, coll in namespaces}
    if rules.scheme == CSFLE:
        if others:
            fields: dict[str, Any] = {"csfleEncryptionSchemas": {
                ns: {"jsonSchema": schema, "isRemoteSchema": False} for ns, schema in documents.items()}}
        else:
            fields = {"jsonSchema": documents[f"{database}.{collection}"], "isRemoteSchema": False}
    else:
        information = {"type": 1, "schema": {ns: _qe_entry(schema, ns.partition(".")[2])
                                             for ns, schema in documents.items()}}
        fields = {"encryptionInformation": information}
    built = {key: value for key, value in command.items() if key != "$db"}
    if name == "bulkWrite" and rules.scheme == QE:
        # libmongocrypt puts a bulkWrite's rules in its one nsInfo entry; bulkWrite runs on admin.
        infos = [dict(entry) for entry in built.get("nsInfo", [])] or [{"ns": f"{database}.{collection}"}]
        infos[0] = {**infos[0], **fields}
        built["nsInfo"] = infos
        built["$db"] = command.get("$db", "admin")
        return built
    built.update(fields)
    built["$db"] = command.get("$db", database) if name != "bulkWrite" else command.get("$db", "admin")
    return built


def shortcut(*, filter: Any = None, pipeline: Any = None, namespace: str | None, rules: Rules | None = None
             ) -> dict[str, Any]:
    """`--filter` / `--pipeline`: a find or an aggregate on the namespace."""
    if namespace is None and rules is not None and not rules.single and len(rules.namespaces) == 1:
        only = next(iter(rules.namespaces))
        if "." in only:
            namespace = only
    if namespace is None:
        raise BadInput("--filter and --pipeline need --namespace db.collection")
    database, collection = _split(namespace)
    if pipeline is not None:
        if not isinstance(pipeline, list):
            raise BadInput(f"--pipeline: expected a JSON array of stages, got {_json_kind(pipeline)}")
        return {"aggregate": collection, "pipeline": pipeline, "cursor": {}, "$db": database}
    if not isinstance(filter, Mapping):
        raise BadInput(f"--filter: expected a JSON object, got {_json_kind(filter)}")
    return {"find": collection, "filter": filter, "$db": database}


# -- what came back ------------------------------------------------------------------------------------

CSFLE_ALGORITHMS = {1: "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic", 2: "AEAD_AES_256_CBC_HMAC_SHA_512-Random"}
QE_ALGORITHMS = {1: "unindexed", 2: "equality", 3: "range", 4: "text"}
QE_USES = {1: "insert", 2: "find"}
TEXT_SPEC_QUERY_TYPES = {"prefix": "prefix", "suffix": "suffix", "substr": "substring"}


@dataclass(frozen=True)
class Marked:
    """One placeholder in the marked command: where it is and what libmongocrypt will do with it.

    `path` is its place in the marked command ("filter.ssn.$eq", "documents.0.ssn"); `field` the
    encrypted field it is for, when the rules name exactly one field with its key.  CSFLE gives the
    `algorithm`, QE the `query_type` (equality, range, text's prefix/suffix/substring, unindexed),
    whether it is a value written or one a query compares with (`use`), and the contention factor.
    """

    path: str
    scheme: str
    key_id: Binary | None
    algorithm: str | None = None
    query_type: str | None = None
    use: str | None = None
    contention: int | None = None
    key_alt_name: str | None = None
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "scheme": self.scheme}
        if self.scheme == CSFLE:
            out["algorithm"] = self.algorithm
        else:
            out["queryType"] = self.query_type
            out["use"] = self.use
            out["contention"] = self.contention
        out["keyId"] = self.key_id
        if self.key_alt_name is not None:
            out["keyAltName"] = self.key_alt_name
        if self.field is not None:
            out["field"] = self.field
        return out

    @property
    def key(self) -> str:
        """The key in words: its UUID, or the keyAltName a JSON-pointer keyId resolved to."""
        if self.key_id is not None:
            try:
                return str(self.key_id.as_uuid(UuidRepresentation.STANDARD))
            except ValueError:
                return self.key_id.hex()
        return f"keyAltName {self.key_alt_name!r}"


def _placeholder(value: Binary, path: str) -> Marked | None:
    data = bytes(value)
    try:
        body = bsonvalues.decode(data[1:])
    except (InvalidBSON, ValueError):
        return None
    key = body.get("ki")
    key_id = key if isinstance(key, Binary) else None
    if data[:1] == b"\x00":
        return Marked(path, CSFLE, key_id, algorithm=CSFLE_ALGORITHMS.get(body.get("a", 0), str(body.get("a"))),
                      key_alt_name=body.get("ka") if isinstance(body.get("ka"), str) else None)
    if data[:1] == b"\x03":
        query_type = QE_ALGORITHMS.get(body.get("a", 0), str(body.get("a")))
        spec = body.get("v")
        if query_type == "text" and body.get("t") == 2 and isinstance(spec, Mapping):
            query_type = next((TEXT_SPEC_QUERY_TYPES[k] for k in TEXT_SPEC_QUERY_TYPES if k in spec),
                              "normalizedEquality")
        contention = body.get("cm")
        return Marked(path, QE, key_id, query_type=query_type, use=QE_USES.get(body.get("t", 0)),
                      contention=int(contention) if isinstance(contention, int) else None)
    return None


def placeholders(value: Any, path: str = "") -> Iterator[Marked]:
    """Every BinData 6 placeholder in `value`, depth first, with its place."""
    if isinstance(value, Binary) and value.subtype == 6:
        found = _placeholder(value, path)
        if found is not None:
            yield found
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from placeholders(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from placeholders(item, f"{path}.{index}" if path else str(index))


def _fields_by_key(rules: Rules, namespaces: list[str], scheme: str) -> dict[tuple[bytes, str | None], list[str]]:
    """(key bytes, CSFLE algorithm) -> the encrypted field paths using it, over the namespaces analysed."""
    from markd.analysis.schema import leaves

    found: dict[tuple[bytes, str | None], list[str]] = {}
    for namespace in namespaces:
        database, _, collection = namespace.partition(".")
        document = rules.lookup(database, collection)
        if document is None:
            continue
        for path, encryption in leaves(parsed_schema(document, scheme).root):
            key = getattr(encryption, "key", None) if scheme == CSFLE else getattr(encryption, "key_id", None)
            if not isinstance(key, Binary):
                continue
            algorithm = CSFLE_ALGORITHMS.get(getattr(encryption, "algorithm", 0)) if scheme == CSFLE else None
            found.setdefault((bytes(key), algorithm), []).append(path)
    return found


# -- the result ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """What `check` found. `to_dict()` is `markd check --json`'s document:
    `{reply, marked: [{path, scheme, algorithm|queryType, keyId, ...}], refusal: {code, errmsg, path, rule, hint,
    ...} | None, namespace, scheme}`.

    `accepted` is True when mongocryptd would answer with a marked command (`reply["result"]`);
    `refusal` (a `markd.refusals.Refusal`) says why it would not.
    """

    namespace: str
    scheme: str
    sent: dict[str, Any]  # the command as libmongocrypt sends it to mongocryptd (with the rules)
    reply: dict[str, Any]
    marked: tuple[Marked, ...] = ()
    refusal: Refusal | None = None
    rules: Rules | None = field(default=None, repr=False, compare=False)

    @property
    def accepted(self) -> bool:
        return self.refusal is None

    @property
    def result(self) -> dict[str, Any] | None:
        """The marked command (what libmongocrypt encrypts and sends on), when accepted."""
        return self.reply.get("result") if self.accepted else None

    def to_dict(self) -> dict[str, Any]:
        return {"reply": self.reply, "marked": [m.to_dict() for m in self.marked],
                "refusal": self.refusal.to_dict() if self.refusal is not None else None,
                "namespace": self.namespace, "scheme": self.scheme}

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)

    def assert_accepted(self) -> CheckResult:
        """For test suites: raise AssertionError with the explanation unless the command is accepted."""
        if self.refusal is not None:
            raise AssertionError("\n".join(self.refusal.lines()))
        return self


def check(rules: Any, command: Any = None, *, namespace: str | None = None, filter: Any = None,
          pipeline: Any = None) -> CheckResult:
    """Try `command` (or a find `filter` / an aggregate `pipeline` on `namespace`) against `rules`.

    `rules` and `command` are documents (dicts) or Extended JSON text.  Raises BadInput when they
    cannot be checked; otherwise returns what the daemon's analysis answered (`CheckResult`).
    """
    from markd.refusals import explain

    document = _document(rules, "RULES")
    detected = detect_rules(document)
    if command is None:
        if (filter is None) == (pipeline is None):
            raise BadInput("give one of: a command, a filter, a pipeline")
        if filter is not None:
            command = shortcut(filter=_document(filter, "--filter"), namespace=namespace, rules=detected)
        else:
            stages = parse_json(pipeline, "--pipeline") if isinstance(pipeline, str) else pipeline
            command = shortcut(pipeline=_document({"pipeline": stages}, "--pipeline")["pipeline"],
                               namespace=namespace, rules=detected)
    elif filter is not None or pipeline is not None:
        raise BadInput("give one of: a command, a filter, a pipeline")
    loaded = _document(command, "CMD")
    explained = loaded.get("explain")
    present = [key for key in RULE_FIELDS
               if key in loaded or (isinstance(explained, Mapping) and key in explained)]
    if present:
        raise BadInput(f"CMD: already carries encryption rules ({', '.join(sorted(present))}): give them as RULES")
    database, collection = _resolve_namespace(loaded, detected, namespace)
    sent = build_command(loaded, detected, database, collection)
    target = f"{database}.{collection}"
    try:
        reply = mark_command(sent)
    except CommandError as exc:
        compared = _compared_field(exc, sent) if exc.rule in FILTER_RULES else None
        refusal = explain(exc, detected, sent, database, collection, compared)
        return CheckResult(target, detected.scheme, sent, exc.to_reply(), (), refusal, detected)
    except Exception as exc:  # a bug in the analysis: refused, as the daemon answers it (fail closed)
        error = CommandError(1, f"markd internal error: {type(exc).__name__}")
        return CheckResult(target, detected.scheme, sent, error.to_reply(), (),
                           explain(error, detected, sent, database, collection), detected)
    marked = list(placeholders(reply.get("result")))
    namespaces = [target, *(f"{database}.{other}" for other in _involved(loaded, *_target(loaded), collection))]
    by_key = _fields_by_key(detected, namespaces, detected.scheme)
    named = []
    for found in marked:
        paths = by_key.get((bytes(found.key_id), found.algorithm), []) if found.key_id is not None else []
        named.append(replace(found, field=paths[0] if len(paths) == 1 else None))
    return CheckResult(target, detected.scheme, sent, reply, tuple(named), None, detected)


# Refusals of a filter the server evaluates itself (validators, partial indexes): the analysis says only
# that it compares an encrypted field; which one is found by marking that filter as a find's.
FILTER_RULES = frozenset({"validator_compare", "partial_filter_compare", "VALIDATOR", "PARTIAL_FILTER"})


def _field_of(location: str) -> str:
    """The field path in a placeholder's place in a filter ("$and.0.ssn.$eq" -> "ssn")."""
    kept: list[str] = []
    after_operator = False
    for part in location.split("."):
        if part.startswith("$") or (after_operator and part.isdigit()):
            after_operator = part.startswith("$")
            continue
        after_operator = False
        kept.append(part)
    return ".".join(kept)


def _compared_field(error: CommandError, sent: Mapping[str, Any]) -> str | None:
    filters: list[Any] = []
    if isinstance(sent.get("validator"), Mapping):
        filters.append(sent["validator"])
    for index in sent.get("indexes") or []:
        if isinstance(index, Mapping) and isinstance(index.get("partialFilterExpression"), Mapping):
            filters.append(index["partialFilterExpression"])
    rules = {key: value for key, value in sent.items() if key in RULE_FIELDS or key == "$db"}
    for filter_ in filters:
        try:
            reply = mark_command({"find": sent[_name(sent)], "filter": filter_, **rules})
        except Exception:  # the filter alone is refused otherwise: it names no single field
            continue
        for found in placeholders(reply.get("result", {}).get("filter")):
            return _field_of(found.path)
    return None


# -- Extended JSON out ---------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """markd's exact-type values as the Extended JSON pymongo's encoder does not know."""
    if isinstance(value, bsonvalues.Symbol):
        return {"$symbol": value.value}
    if isinstance(value, bsonvalues.Undefined):
        return {"$undefined": True}
    if isinstance(value, bsonvalues.DBPointer):
        return {"$dbPointer": {"$ref": value.namespace, "$id": value.oid}}
    if isinstance(value, bsonvalues.ExactRegex):
        return {"$regularExpression": {"pattern": value.pattern, "options": value.options}}
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def dumps(value: Any, indent: int | None = 2) -> str:
    """Relaxed Extended JSON (placeholders as {"$binary": {..., "subType": "06"}})."""
    return json_util.dumps(_jsonable(value), json_options=json_util.RELAXED_JSON_OPTIONS, indent=indent)
