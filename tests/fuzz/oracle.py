"""The fail-closed oracle: random (schema, command) pairs and the judgement of markd's reply.

A `Case` is a marking command as libmongocrypt sends it, plus what the generator knows about it:
`sensitive` maps every position in the command whose value lies at an encrypted path to an
`Expect` (the original value and the field's encryption rules).  `judge(case, reply)` returns the
findings, empty when the reply is fail-closed:

- an error reply (`ok: 0`) is always acceptable, except InternalError (code 1), a crash;
- a success reply must mark every sensitive position with a placeholder (BinData 6) whose payload
  holds the original value (exact BSON type), the field's key and algorithm; both reply flags must
  be true (when either is false libmongocrypt sends the *original* command: plaintext);
- `strict` cases: everything else in `result` is unchanged; match expressions are compared in a
  canonical form (mongocryptd re-serializes them: several fields -> `$and`, `{f: v}` ->
  `{f: {$eq: v}}`, `$ne` -> `$not: {$eq}`, `$nin` -> `$not: {$in}`, nested `$and` flattened, `$in`
  sorted and deduplicated, `$exists: false` -> `$not: {$exists: true}`);
- every case: no sensitive value appears in plaintext anywhere in `result` (scanned when the value
  is distinctive, i.e. not equal to some other, non-sensitive, value of the command).

Positions are tuples of keys and indexes from the command root, e.g. ("documents", 0, "ssn").
"""

from __future__ import annotations

import decimal
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from bson import Decimal128, Int64, Regex
from bson.binary import Binary
from bson.code import Code
from hypothesis import strategies as st

from markd import bsonvalues
from markd.bsonvalues import Symbol
from tests.fuzz.bsongen import scalar_values, values

DETERMINISTIC = "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic"
RANDOM = "AEAD_AES_256_CBC_HMAC_SHA_512-Random"
KEYS = [Binary(uuid.UUID(int=0x1234_0000_0000_4000_8000_0000_0000_0000 + n).bytes, 4) for n in range(4)]
DB, COLL = "db", "coll"
POINTER_FIELD = "keyAlt"

Path = tuple[str | int, ...]


# ------------------------------------------------------------------------------------------------
# Schema models
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Enc:
    """A CSFLE encrypted leaf (after encryptMetadata inheritance)."""

    algorithm: int  # 1 deterministic, 2 random
    key: Binary | str  # UUID, or a JSON pointer (random only)
    bson_type: str | None


@dataclass
class Obj:
    """A CSFLE object node: properties, one patternProperties rule, inherited metadata."""

    props: dict[str, Any] = field(default_factory=dict)  # name -> Enc | Obj | None (plain)
    patterns: dict[str, Enc] = field(default_factory=dict)  # regex -> leaf
    metadata: tuple[int, Binary] | None = None

    def child(self, name: str) -> Any:
        if name in self.props:
            return self.props[name]
        for pattern, leaf in self.patterns.items():
            if re.search(pattern, name):
                return leaf
        return None

    def encrypts(self) -> bool:
        return bool(self.patterns) or any(
            isinstance(c, Enc) or (isinstance(c, Obj) and c.encrypts()) for c in self.props.values())


@dataclass(frozen=True)
class QEField:
    path: str
    key: Binary
    bson_type: str
    query: str  # unindexed | equality | range | prefix | suffix | substring
    contention: int = 0
    sparsity: int = 1
    minimum: Any = None
    maximum: Any = None
    case_sensitive: bool = True

    @property
    def a(self) -> int:
        return {"unindexed": 1, "equality": 2, "range": 3}.get(self.query, 4)

    @property
    def rewritten(self) -> bool:
        """Range and text-search placeholders carry a spec in `v`, and their predicates are rewritten."""
        return self.query not in ("unindexed", "equality")

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"path": self.path, "keyId": self.key, "bsonType": self.bson_type}
        if self.query == "equality":
            spec["queries"] = {"queryType": "equality", "contention": Int64(self.contention)}
        elif self.query == "range":
            spec["queries"] = {"queryType": "range", "contention": Int64(self.contention),
                               "sparsity": Int64(self.sparsity), "min": self.minimum, "max": self.maximum}
        elif self.query != "unindexed":
            query: dict[str, Any] = {"queryType": self.query, "contention": Int64(self.contention),
                                     "strMinQueryLength": Int64(2), "strMaxQueryLength": Int64(10),
                                     "caseSensitive": self.case_sensitive, "diacriticSensitive": True}
            if self.query == "substring":
                query["strMaxLength"] = Int64(60)
            spec["queries"] = query
        return spec


@dataclass(frozen=True)
class Expect:
    value: Any
    flavour: str  # csfle | qe
    context: int  # 1 write, 2 query
    algorithm: int = 0  # CSFLE a (1/2) or QE a (1/2/3)
    key: Any = None  # UUID, or for a CSFLE pointer the expected keyAltName (None: any string)
    bson_type: str | None = None
    qe: QEField | None = None
    must_error: bool = False  # nothing markd can put here is right: a success reply is a finding


@dataclass
class Case:
    flavour: str
    command: dict[str, Any]
    sensitive: dict[Path, Expect]
    filters: set[Path]
    strict: bool = True
    label: str = ""

    @property
    def database(self) -> str:
        return str(self.command.get("$db", DB))


# ------------------------------------------------------------------------------------------------
# Values of a given BSON type
# ------------------------------------------------------------------------------------------------

@cache
def of_type(bson_type: str | None) -> st.SearchStrategy[Any]:
    """Values whose bson_type is `bson_type` (any value when None)."""
    if bson_type is None:
        return values(max_leaves=4)
    if bson_type == "object":
        return st.dictionaries(st.sampled_from(["p", "q", "r"]), scalar_values(), max_size=3)
    if bson_type == "array":
        return st.lists(scalar_values(), max_size=3)
    if bson_type == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if bson_type == "long":
        return st.integers(-(2**63), 2**63 - 1).map(Int64)
    return scalar_values().filter(lambda v: bsonvalues.bson_type(v) == bson_type)


@cache
def maybe_of_type(bson_type: str | None) -> st.SearchStrategy[Any]:
    """Mostly the right type (the success path), sometimes anything (the refusal path)."""
    return st.one_of(*[of_type(bson_type)] * 6, scalar_values())


DET_TYPES = ["string", "int", "long", "date", "objectId", "binData"]
RANDOM_TYPES = [None, "string", "int", "double", "bool", "object", "array", "decimal"]


# ------------------------------------------------------------------------------------------------
# CSFLE schemas
# ------------------------------------------------------------------------------------------------

@st.composite
def csfle_leaf(draw: st.DrawFn, metadata: tuple[int, Binary] | None, allow_pointer: bool = True) -> Enc:
    algorithm = draw(st.sampled_from([1, 1, 2])) if metadata is None else draw(
        st.sampled_from([metadata[0], 1, 2]))
    if algorithm == 1:
        bson_type: str | None = draw(st.sampled_from(DET_TYPES))
    else:
        bson_type = draw(st.sampled_from(RANDOM_TYPES))
    key: Binary | str = draw(st.sampled_from(KEYS))
    if algorithm == 2 and allow_pointer and draw(st.integers(0, 5)) == 0:
        key = "/" + POINTER_FIELD
    if metadata is not None and draw(st.booleans()):
        key = metadata[1]
    return Enc(algorithm, key, bson_type)


@st.composite
def csfle_schema(draw: st.DrawFn) -> Obj:
    metadata = (draw(st.sampled_from([1, 2])), draw(st.sampled_from(KEYS))) if draw(st.booleans()) else None
    root = Obj(metadata=metadata)
    for name in ("ssn", "age", "name", "notes"):
        kind = draw(st.sampled_from(["enc", "enc", "plain", "absent"]))
        if kind == "enc":
            root.props[name] = draw(csfle_leaf(metadata))
        elif kind == "plain":
            root.props[name] = None
    if draw(st.booleans()):
        addr = Obj(metadata=metadata)
        for name in ("zip", "city"):
            if draw(st.booleans()):
                addr.props[name] = draw(csfle_leaf(metadata, allow_pointer=False))
        if draw(st.booleans()):
            geo = Obj(metadata=metadata)
            geo.props["lat"] = draw(csfle_leaf(metadata, allow_pointer=False))
            addr.props["geo"] = geo
        root.props["addr"] = addr
    if draw(st.booleans()):
        root.patterns["^enc_"] = draw(csfle_leaf(metadata, allow_pointer=False))
    return root


def _encrypt_json(leaf: Enc, metadata: tuple[int, Binary] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if metadata is None or leaf.key != metadata[1]:
        spec["keyId"] = leaf.key if isinstance(leaf.key, str) else [leaf.key]
    if metadata is None or leaf.algorithm != metadata[0]:
        spec["algorithm"] = DETERMINISTIC if leaf.algorithm == 1 else RANDOM
    if leaf.bson_type is not None:
        spec["bsonType"] = leaf.bson_type
    return {"encrypt": spec}


def csfle_json(node: Obj, top: bool = True) -> dict[str, Any]:
    """The jsonSchema libmongocrypt would send for a model (encryptMetadata only at the top)."""
    schema: dict[str, Any] = {"bsonType": "object"}
    if top and node.metadata is not None:
        schema["encryptMetadata"] = {"keyId": [node.metadata[1]],
                                     "algorithm": DETERMINISTIC if node.metadata[0] == 1 else RANDOM}
    properties: dict[str, Any] = {}
    for name, child in node.props.items():
        if isinstance(child, Enc):
            properties[name] = _encrypt_json(child, node.metadata)
        elif isinstance(child, Obj):
            properties[name] = csfle_json(child, top=False)
        else:
            properties[name] = {}
    if properties:
        schema["properties"] = properties
    if node.patterns:
        schema["patternProperties"] = {p: _encrypt_json(leaf, node.metadata) for p, leaf in node.patterns.items()}
    return schema


# ------------------------------------------------------------------------------------------------
# QE encryptedFields
# ------------------------------------------------------------------------------------------------

@st.composite
def qe_fields(draw: st.DrawFn) -> list[QEField]:
    out: list[QEField] = []
    keys = iter(draw(st.permutations(KEYS)))
    for path in ("ssn", "age", "notes", "addr.zip"):
        kind = draw(st.sampled_from(["equality", "range", "unindexed", "text", "absent"]))
        if kind == "absent":
            continue
        if kind == "text":
            out.append(QEField(path, next(keys), "string", draw(st.sampled_from(["prefix", "suffix", "substring"])),
                               draw(st.sampled_from([0, 4, 8])), case_sensitive=draw(st.booleans())))
            continue
        key = next(keys)
        contention = draw(st.sampled_from([0, 4, 8]))
        if kind == "range":
            bson_type = draw(st.sampled_from(["int", "long"]))
            wrap = Int64 if bson_type == "long" else int
            out.append(QEField(path, key, bson_type, "range", contention, draw(st.sampled_from([1, 2])),
                               wrap(0), wrap(draw(st.sampled_from([200, 10_000])))))
        elif kind == "equality":
            out.append(QEField(path, key, draw(st.sampled_from(["string", "int", "long", "date"])), "equality",
                               contention))
        else:
            out.append(QEField(path, key, draw(st.sampled_from(["string", "int", "double", "object"])),
                               "unindexed"))
    return out


def qe_info(fields: list[QEField]) -> dict[str, Any]:
    return {"type": 1, "schema": {f"{DB}.{COLL}": {
        "escCollection": f"enxcol_.{COLL}.esc", "ecocCollection": f"enxcol_.{COLL}.ecoc",
        "fields": [f.spec() for f in fields]}}}


# ------------------------------------------------------------------------------------------------
# Classifying a path against a schema
# ------------------------------------------------------------------------------------------------

class Flavour:
    """What a flavour's generator and oracle ask of a schema."""

    name = ""

    def classify(self, path: str) -> tuple[str, Any]:
        """("enc", rule) | ("obj", node-or-prefix) | ("below", rule) | ("plain", None)."""
        raise NotImplementedError

    def expect(self, rule: Any, value: Any, context: int, document: dict[str, Any] | None) -> Expect:
        raise NotImplementedError

    def leaf_type(self, rule: Any) -> str | None:
        raise NotImplementedError

    def field_names(self) -> list[str]:
        raise NotImplementedError


def weighted_names(flavour: Flavour) -> list[str]:
    """The flavour's field names, encrypted ones (and prefixes of them) three times over: the interesting cases."""
    names = flavour.field_names()
    hot = [n for n in names if flavour.classify(n)[0] in ("enc", "obj")]
    return hot * 3 + names  # first: hypothesis favours the start of a sampled list


class Csfle(Flavour):
    name = "csfle"

    def __init__(self, root: Obj) -> None:
        self.root = root

    def classify(self, path: str) -> tuple[str, Any]:
        node: Any = self.root
        for segment in path.split("."):
            if isinstance(node, Enc):
                return "below", node
            if not isinstance(node, Obj):
                return "plain", None
            node = node.child(segment)
        if isinstance(node, Enc):
            return "enc", node
        if isinstance(node, Obj) and node.encrypts():
            return "obj", node
        return "plain", None

    def expect(self, rule: Enc, value: Any, context: int, document: dict[str, Any] | None) -> Expect:
        key: Any = rule.key
        if isinstance(key, str):
            pointed = document.get(POINTER_FIELD) if document is not None else None
            key = pointed if isinstance(pointed, str) else None
        return Expect(value, "csfle", context, rule.algorithm, key, rule.bson_type,
                      must_error=context == 2 and rule.algorithm == 2)

    def leaf_type(self, rule: Enc) -> str | None:
        return rule.bson_type

    def field_names(self) -> list[str]:
        names = ["plain1", "_id", "ssn", "age", "name", "notes", "addr", "addr.zip", "addr.city", "addr.geo.lat",
                 "enc_a"]
        return names


class Qe(Flavour):
    name = "qe"

    def __init__(self, fields: list[QEField]) -> None:
        self.fields = {f.path: f for f in fields}

    def classify(self, path: str) -> tuple[str, Any]:
        if path in self.fields:
            return "enc", self.fields[path]
        for encrypted in self.fields:
            if path.startswith(encrypted + "."):
                return "below", self.fields[encrypted]
            if encrypted.startswith(path + "."):
                return "obj", path
        return "plain", None

    def expect(self, rule: QEField, value: Any, context: int, document: dict[str, Any] | None) -> Expect:
        return Expect(value, "qe", context, rule.a, rule.key, rule.bson_type, qe=rule,
                      must_error=context == 2 and rule.query == "unindexed")

    def leaf_type(self, rule: QEField) -> str | None:
        return rule.bson_type

    def field_names(self) -> list[str]:
        return ["plain1", "_id", "ssn", "age", "notes", "addr", "addr.zip", "addr.city"]


class Aliased(Flavour):
    """The documents after a renaming stage: `aliases` name -> source path; `only`: the fields that remain."""

    def __init__(self, base: Flavour, aliases: dict[str, str], only: set[str] | None = None) -> None:
        self.base = base
        self.name = base.name
        self.aliases = aliases
        self.only = only

    def classify(self, path: str) -> tuple[str, Any]:
        head, _, rest = path.partition(".")
        if head in self.aliases:
            source = self.aliases[head]
            return self.base.classify(f"{source}.{rest}" if rest else source)
        if self.only is not None and head not in self.only:
            return "plain", None  # gone: compares against a missing field
        return self.base.classify(path)

    def expect(self, rule: Any, value: Any, context: int, document: dict[str, Any] | None) -> Expect:
        return self.base.expect(rule, value, context, document)

    def leaf_type(self, rule: Any) -> str | None:
        return self.base.leaf_type(rule)

    def field_names(self) -> list[str]:
        names = [*self.aliases, *(f"{a}.{n[len(s) + 1:]}" for a, s in self.aliases.items()
                                  for n in self.base.field_names() if n.startswith(s + "."))]
        kept = [n for n in self.base.field_names() if self.only is None or n.split(".")[0] in self.only]
        return sorted(set(names + kept))


# ------------------------------------------------------------------------------------------------
# Documents (insert, replacement, $set values) and the sensitive positions inside them
# ------------------------------------------------------------------------------------------------

def _nested_names(flavour: Flavour, prefix: str) -> list[str]:
    names = {name[len(prefix) + 1 :].split(".")[0] for name in flavour.field_names()
             if name.startswith(prefix + ".")}
    return sorted(names | {"other"})


@st.composite
def document(draw: st.DrawFn, flavour: Flavour, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """A document whose fields are mostly ones the schema knows about, values mostly of their type."""
    if prefix:
        names = _nested_names(flavour, prefix)
    else:
        names = sorted({n.split(".")[0] for n in flavour.field_names()} | {"enc_b", POINTER_FIELD})
    hot = [n for n in names if flavour.classify(f"{prefix}.{n}" if prefix else n)[0] in ("enc", "obj")]
    names = hot + [n for n in names if n not in hot]
    chosen = draw(st.lists(st.sampled_from(names), unique=True, min_size=0 if prefix else 1, max_size=5))
    if hot and draw(st.integers(0, 3)) > 0:
        first = draw(st.sampled_from(hot))
        chosen = [first, *(n for n in chosen if n != first)]
    out: dict[str, Any] = {}
    for name in chosen:
        path = f"{prefix}.{name}" if prefix else name
        kind, rule = flavour.classify(path)
        if name == POINTER_FIELD and not prefix:
            out[name] = draw(st.sampled_from(["altA", "altB"]))
        elif kind == "enc":
            out[name] = draw(maybe_of_type(flavour.leaf_type(rule)))
        elif kind == "obj" and depth < 3:
            out[name] = draw(st.one_of(document(flavour, path, depth + 1), document(flavour, path, depth + 1),
                                       st.lists(document(flavour, path, depth + 1), min_size=1, max_size=2),
                                       scalar_values()))
        else:
            out[name] = draw(values(max_leaves=3))
    return out


def document_positions(flavour: Flavour, doc: Any, at: Path, prefix: str, context: int,
                       root: dict[str, Any] | None) -> Iterator[tuple[Path, Expect]]:
    """Sensitive positions of a document written at `at` (its fields are at paths under `prefix`)."""
    if not isinstance(doc, dict):
        return
    for name, value in doc.items():
        path = f"{prefix}.{name}" if prefix else name
        kind, rule = flavour.classify(path)
        if kind == "enc":
            yield (*at, name), flavour.expect(rule, value, context, root)
        elif kind == "obj":
            if isinstance(value, dict):
                yield from document_positions(flavour, value, (*at, name), path, context, root)
            elif isinstance(value, list) and _holds_encrypted(flavour, value, path):
                # An array above an encrypted path: no placeholder can be right; plaintext would leak.
                yield (*at, name), Expect(value, flavour.name, context, must_error=True)


def _holds_encrypted(flavour: Flavour, items: list[Any], prefix: str) -> bool:
    for item in items:
        if isinstance(item, dict):
            for name, value in item.items():
                kind, _ = flavour.classify(f"{prefix}.{name}")
                if kind == "enc" or (kind == "obj" and isinstance(value, (dict, list)) and value):
                    return True
        elif isinstance(item, list) and _holds_encrypted(flavour, item, prefix):
            return True
    return False


# ------------------------------------------------------------------------------------------------
# Match expressions
# ------------------------------------------------------------------------------------------------

@dataclass
class Built:
    """A generated sub-expression and the sensitive positions relative to it."""

    value: Any
    sensitive: dict[Path, Expect] = field(default_factory=dict)
    strict: bool = True

    def at(self, prefix: Path) -> dict[Path, Expect]:
        return {(*prefix, *rel): expect for rel, expect in self.sensitive.items()}


_COMPARISONS = ["implicit", "implicit", "$eq", "$eq", "$ne", "$in", "$in", "$nin", "$exists", "$gt", "$lte",
                "$regex", "$not"]


@st.composite
def predicate(draw: st.DrawFn, flavour: Flavour, path: str) -> Built:
    kind, rule = flavour.classify(path)
    op = draw(st.sampled_from(_COMPARISONS))
    leaf_type = flavour.leaf_type(rule) if kind == "enc" else None
    if kind == "obj":
        operand = st.one_of(document(flavour, path, 1), scalar_values())
    else:
        operand = maybe_of_type(leaf_type).filter(lambda v: not isinstance(v, (dict, list)) or leaf_type is not None)

    def expect(value: Any, at: Path) -> dict[Path, Expect]:
        if kind == "enc":
            return {at: flavour.expect(rule, value, 2, None)}
        if kind == "obj" and isinstance(value, dict):
            # Compared to an object holding encrypted fields: those fields must be marked inside it.
            return dict(document_positions(flavour, value, at, path, 2, None))
        return {}

    # Predicates on a QE range field are rewritten into edge placeholders ($gte/$lte pairs, $or of them).
    built = Built(None, strict=not (kind == "enc" and flavour.name == "qe" and rule.rewritten))
    if op == "implicit":
        value = draw(operand.filter(lambda v: not (isinstance(v, dict) and any(k.startswith("$") for k in v))))
        built.value = value
        built.sensitive.update(expect(value, ()))
    elif op in ("$eq", "$ne", "$gt", "$lte"):
        value = draw(operand)
        built.value = {op: value}
        built.sensitive.update(expect(value, (op,)))
    elif op in ("$in", "$nin"):
        items = draw(st.lists(operand, max_size=3))
        built.value = {op: items}
        for index, item in enumerate(items):
            built.sensitive.update(expect(item, (op, index)))
    elif op == "$exists":
        built.value = {"$exists": draw(st.booleans())}
    elif op == "$regex":
        pattern = draw(st.sampled_from(["^1", "abc", "x.*y"]))
        built.value = {"$regex": pattern}
        if kind == "enc":
            built.sensitive[("$regex",)] = Expect(pattern, flavour.name, 2, must_error=True)
    else:  # $not
        value = draw(operand)
        built.value = {"$not": {"$eq": value}}
        built.sensitive.update(expect(value, ("$not", "$eq")))
    return built


@st.composite
def match_expression(draw: st.DrawFn, flavour: Flavour, depth: int = 0) -> Built:
    out = Built({})
    names = draw(st.lists(st.sampled_from(weighted_names(flavour)), unique=True, min_size=int(depth == 0), max_size=3))
    for name in names:
        sub = draw(predicate(flavour, name))
        out.value[name] = sub.value
        out.sensitive.update(sub.at((name,)))
        out.strict &= sub.strict
    if depth < 2 and draw(st.integers(0, 3)) == 0:
        op = draw(st.sampled_from(["$and", "$or", "$nor"]))
        branches = draw(st.lists(match_expression(flavour, depth + 1), min_size=1, max_size=2))
        out.value[op] = [b.value for b in branches]
        for index, branch in enumerate(branches):
            out.sensitive.update(branch.at((op, index)))
            out.strict &= branch.strict
    return out


# ------------------------------------------------------------------------------------------------
# Updates
# ------------------------------------------------------------------------------------------------

@st.composite
def update_spec(draw: st.DrawFn, flavour: Flavour) -> Built:
    if draw(st.integers(0, 3)) == 0:  # a replacement document
        doc = draw(document(flavour))
        return Built(doc, dict(document_positions(flavour, doc, (), "", 1, doc)))
    out = Built({})
    sets: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(weighted_names(flavour)), unique=True, min_size=1, max_size=3)):
        kind, rule = flavour.classify(name)
        if kind == "obj":
            value = draw(document(flavour, name, 1))
        elif kind == "enc":
            value = draw(maybe_of_type(flavour.leaf_type(rule)))
        else:
            value = draw(values(max_leaves=3))
        sets[name] = value
        if kind == "enc":
            out.sensitive[("$set", name)] = flavour.expect(rule, value, 1, None)
        elif kind == "obj":
            out.sensitive.update(dict(document_positions(flavour, value, ("$set", name), name, 1, None)))
    out.value["$set"] = sets
    if draw(st.booleans()):
        out.value["$unset"] = {draw(st.sampled_from(flavour.field_names())): ""}
    if draw(st.integers(0, 4)) == 0:
        name = draw(st.sampled_from(flavour.field_names()))
        if name not in sets:
            amount = draw(st.integers(-5, 5))
            out.value["$inc"] = {name: amount}
            kind, rule = flavour.classify(name)
            # $inc on an encrypted field must be refused; on a prefix of encrypted fields it writes no encrypted
            # value (mongocryptd refuses only document-writing modifiers there), so either answer is fail-closed.
            if kind == "enc":
                out.sensitive[("$inc", name)] = Expect(amount, flavour.name, 1, must_error=True)
    return out


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------

COMMANDS = ["insert", "find", "update", "delete", "aggregate", "findAndModify", "count", "distinct"]


@st.composite
def command_case(draw: st.DrawFn, flavour_name: str, command_name: str | None = None) -> Case:
    if flavour_name == "csfle":
        model = draw(csfle_schema())
        flavour: Flavour = Csfle(model)
        envelope: dict[str, Any] = {"jsonSchema": csfle_json(model), "isRemoteSchema": False}
    else:
        fields = draw(qe_fields())
        flavour = Qe(fields)
        envelope = {"encryptionInformation": qe_info(fields)}
    name = command_name or draw(st.sampled_from(COMMANDS))
    sensitive: dict[Path, Expect] = {}
    filters: set[Path] = set()
    strict = True
    command: dict[str, Any]

    def use_filter(built: Built, at: Path) -> None:
        nonlocal strict
        sensitive.update(built.at(at))
        filters.add(at)
        strict &= built.strict

    if name == "insert":
        docs = draw(st.lists(document(flavour), min_size=1, max_size=3))
        command = {"insert": COLL, "documents": docs, "ordered": True}
        for index, doc in enumerate(docs):
            sensitive.update(dict(document_positions(flavour, doc, ("documents", index), "", 1, doc)))
    elif name in ("find", "count"):
        built = draw(match_expression(flavour))
        key = "filter" if name == "find" else "query"
        command = {name: COLL, key: built.value}
        use_filter(built, (key,))
        if name == "find" and draw(st.booleans()):
            command["limit"] = draw(st.integers(0, 10))
    elif name == "distinct":
        built = draw(match_expression(flavour))
        command = {"distinct": COLL, "key": draw(st.sampled_from(flavour.field_names())), "query": built.value}
        use_filter(built, ("query",))
    elif name == "delete":
        deletes = []
        for index in range(draw(st.integers(1, 2))):
            built = draw(match_expression(flavour))
            deletes.append({"q": built.value, "limit": draw(st.sampled_from([0, 1]))})
            use_filter(built, ("deletes", index, "q"))
        command = {"delete": COLL, "deletes": deletes}
    elif name == "update":
        updates = []
        for index in range(draw(st.integers(1, 2))):
            query = draw(match_expression(flavour))
            spec = draw(update_spec(flavour))
            updates.append({"q": query.value, "u": spec.value, "multi": False, "upsert": draw(st.booleans())})
            use_filter(query, ("updates", index, "q"))
            sensitive.update(spec.at(("updates", index, "u")))
        command = {"update": COLL, "updates": updates}
    elif name == "findAndModify":
        query = draw(match_expression(flavour))
        command = {"findAndModify": COLL, "query": query.value}
        use_filter(query, ("query",))
        if draw(st.integers(0, 3)) == 0:
            command["remove"] = True
        else:
            spec = draw(update_spec(flavour))
            command["update"] = spec.value
            command["new"] = draw(st.booleans())
            sensitive.update(spec.at(("update",)))
    else:  # aggregate
        pipeline: list[dict[str, Any]] = []
        view: Flavour = flavour  # what the documents look like at this point of the pipeline
        for _ in range(draw(st.integers(1, 4))):
            stage = draw(st.sampled_from(["$match", "$match", "$limit", "$skip", "$sort", "$project", "$addFields",
                                          "$group"]))
            index = len(pipeline)
            if stage == "$match":
                built = draw(match_expression(view))
                pipeline.append({"$match": built.value})
                use_filter(built, ("pipeline", index, "$match"))
            elif stage in ("$limit", "$skip"):
                pipeline.append({stage: draw(st.integers(1, 100))})
            elif stage == "$sort":
                pipeline.append({"$sort": {"plain1": 1}})
                strict = False  # stages may be re-serialized
            else:
                # A stage that renames: a later $match on the new name compares the source field's values,
                # so it must be marked (or refused) as the source would be.
                source = draw(st.sampled_from(view.field_names()))
                strict = False
                if stage == "$addFields":
                    pipeline.append({"$addFields": {"alias": "$" + source}})
                    view = Aliased(view, {"alias": source})
                elif stage == "$project":
                    pipeline.append({"$project": {"plain1": 1, "alias": "$" + source}})
                    view = Aliased(view, {"alias": source}, only={"_id", "plain1", "alias"})
                else:
                    pipeline.append({"$group": {"_id": "$" + source, "n": {"$sum": 1}}})
                    view = Aliased(view, {"_id": source}, only={"_id", "n"})
        command = {"aggregate": COLL, "pipeline": pipeline, "cursor": {}}
    if name != "insert" and draw(st.integers(0, 5)) == 0:
        # Explained: the schema beside `explain` (QE: inside it or beside it), the result {explain, verbosity}.
        inner = command
        command = {"explain": inner, "verbosity": draw(st.sampled_from(["queryPlanner", "executionStats"]))}
        if flavour_name == "qe" and draw(st.booleans()):
            inner.update(envelope)
        else:
            command.update(envelope)
        sensitive = {("explain", *at): expect for at, expect in sensitive.items()}
        filters = {("explain", *at) for at in filters}
        name = f"explain {name}"
    else:
        command.update(envelope)
    command["$db"] = DB
    return Case(flavour_name, command, sensitive, filters, strict, name)


# ------------------------------------------------------------------------------------------------
# Judging a reply
# ------------------------------------------------------------------------------------------------

def _bytes_of(value: Any) -> bytes:
    return bsonvalues.encode({"v": value})


def same(a: Any, b: Any) -> bool:
    """Equal with exact BSON types (int32 is not int64, symbol is not string...)."""
    try:
        return _bytes_of(a) == _bytes_of(b)
    except Exception:
        return False


def placeholder_payload(value: Any) -> tuple[int, dict[str, Any]] | None:
    """(first byte, decoded payload) of a BinData 6 placeholder, None when `value` is not one."""
    if not isinstance(value, Binary) or value.subtype != 6 or len(value) < 1:
        return None
    try:
        return value[0], bsonvalues.decode(bytes(value[1:]))
    except Exception:
        return value[0], {}


def _contains(haystack: Any, needle: Any) -> bool:
    """`needle` is somewhere in `haystack`; an integer bound may have been widened to the field's type."""
    if same(haystack, needle):
        return True
    if (isinstance(haystack, int) and isinstance(needle, int) and not isinstance(haystack, bool)
            and not isinstance(needle, bool) and int(haystack) == int(needle)):
        return True
    if isinstance(haystack, dict):
        return any(_contains(v, needle) for v in haystack.values())
    if isinstance(haystack, list):
        return any(_contains(v, needle) for v in haystack)
    return False


def check_placeholder(expect: Expect, marked: Any, where: Path) -> list[str]:
    found = placeholder_payload(marked)
    if found is None:
        return [f"PLAINTEXT at {where}: expected a placeholder for {expect.value!r}, got {marked!r}"]
    first, payload = found
    problems: list[str] = []
    if expect.must_error:
        problems.append(f"marked what must be refused at {where}: {payload!r}")
    if expect.flavour == "csfle":
        if first != 0:
            problems.append(f"CSFLE placeholder at {where} starts with {first:#x}")
        extra = set(payload) - {"a", "ki", "ka", "v"}
        if extra or ("ki" in payload) == ("ka" in payload):
            problems.append(f"CSFLE placeholder at {where} has fields {sorted(payload)}")
        if payload.get("a") != expect.algorithm and not expect.must_error:
            problems.append(f"algorithm {payload.get('a')!r} != {expect.algorithm} at {where}")
        if expect.context == 2 and payload.get("a") != 1:
            problems.append(f"non-deterministic placeholder in a query at {where}")
        if isinstance(expect.key, Binary) and not same(payload.get("ki"), expect.key):
            problems.append(f"key {payload.get('ki')!r} != {expect.key!r} at {where}")
        if isinstance(expect.key, str) and payload.get("ka") != expect.key:
            problems.append(f"keyAltName {payload.get('ka')!r} != {expect.key!r} at {where}")
        if "v" not in payload or not same(payload["v"], expect.value):
            problems.append(f"v {payload.get('v')!r} != original {expect.value!r} at {where}")
        if (expect.algorithm == 1 and expect.bson_type and "v" in payload
                and bsonvalues.bson_type(payload["v"]) != expect.bson_type):
            problems.append(f"deterministic {expect.bson_type} field marked a {bsonvalues.bson_type(payload['v'])}"
                            f" at {where}")
    else:
        rule = expect.qe
        if first != 3:
            problems.append(f"QE placeholder at {where} starts with {first:#x}")
        if payload.get("t") != expect.context:
            problems.append(f"t {payload.get('t')!r} != {expect.context} at {where}")
        if rule is not None:
            if payload.get("a") != rule.a:
                problems.append(f"a {payload.get('a')!r} != {rule.a} at {where}")
            if not same(payload.get("ki"), rule.key) or not same(payload.get("ku"), rule.key):
                problems.append(f"ki/ku {payload.get('ki')!r}/{payload.get('ku')!r} != {rule.key!r} at {where}")
            if rule.query != "unindexed" and payload.get("cm") != rule.contention:
                problems.append(f"cm {payload.get('cm')!r} != {rule.contention} at {where}")
            v = payload.get("v")
            if rule.rewritten:
                if not _contains(v, expect.value):
                    problems.append(f"{rule.query} placeholder at {where} does not hold {expect.value!r}: {v!r}")
            elif not same(v, expect.value):
                problems.append(f"v {v!r} != original {expect.value!r} at {where}")
    return problems


_ENVELOPE = ("jsonSchema", "isRemoteSchema", "encryptionInformation", "$db")


def _strip_envelope(command: dict[str, Any]) -> dict[str, Any]:
    """The command without what libmongocrypt adds (schemas, $db), at the top and inside `explain`."""
    out = {k: v for k, v in command.items() if k not in _ENVELOPE}
    if isinstance(out.get("explain"), dict):
        out["explain"] = {k: v for k, v in out["explain"].items() if k not in _ENVELOPE}
    return out


class _Walker:
    def __init__(self, case: Case) -> None:
        self.case = case
        self.findings: list[str] = []

    def compare(self, original: Any, marked: Any, at: Path) -> None:
        expect = self.case.sensitive.get(at)
        if expect is not None:
            self.findings += check_placeholder(expect, marked, at)
            return
        if isinstance(original, dict):
            if not isinstance(marked, dict):
                self.findings.append(f"changed at {at}: {original!r} -> {marked!r}")
                return
            if at in self.case.filters:
                self.findings += compare_match(self.case, original, marked, at)
                return
            if set(original) != set(marked):
                self.findings.append(f"fields changed at {at}: {sorted(original)} -> {sorted(marked)}")
            for key in original:
                if key not in marked:
                    continue
                self.compare(original[key], marked[key], (*at, key))
            return
        if isinstance(original, list):
            if not isinstance(marked, list) or len(marked) != len(original):
                self.findings.append(f"array changed at {at}: {original!r} -> {marked!r}")
                return
            for index, (value, other) in enumerate(zip(original, marked, strict=True)):
                self.compare(value, other, (*at, index))
            return
        if at and at[-1] in ("$limit", "$skip") and isinstance(original, int) and isinstance(marked, int):
            if int(original) != int(marked):  # mongod writes these back as int64
                self.findings.append(f"value changed at {at}: {original!r} -> {marked!r}")
            return
        if not same(original, marked):
            self.findings.append(f"value changed at {at}: {original!r} -> {marked!r}")


def _plain_values(tree: Any) -> Iterator[Any]:
    """Every value in `tree` outside placeholders (placeholders themselves are skipped)."""
    if placeholder_payload(tree) is not None:
        return
    yield tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in _CONSTANT_PREDICATES:  # {$alwaysFalse: 1}: the 1 is syntax, not a value
                yield from _plain_values(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _plain_values(value)


# What mongod writes for a predicate decided without the data (an empty range intersection).
_CONSTANT_PREDICATES = frozenset({"$alwaysFalse", "$alwaysTrue"})


def _decided_statically(tree: Any) -> bool:
    """Whether part of the filter was replaced by a constant predicate (its values legitimately gone)."""
    return any(isinstance(value, dict) and _CONSTANT_PREDICATES & value.keys() for _, value in _all_values(tree))


def _all_values(tree: Any, at: Path = ()) -> Iterator[tuple[Path, Any]]:
    yield at, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _all_values(value, (*at, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _all_values(value, (*at, index))


def _distinctive(case: Case, expect: Expect, at: Path) -> bool:
    """The sensitive value equals nothing else in the command, so finding it in `result` is a leak."""
    if expect.value is None or isinstance(expect.value, (bool, dict, list)):
        return False
    for where, value in _all_values(_strip_envelope(case.command)):
        if where[: len(at)] == at or at[: len(where)] == where:
            continue  # the value itself, or a container of it
        if same(value, expect.value):
            return False
    return True


def judge(case: Case, reply: dict[str, Any]) -> list[str]:
    """Findings about markd's reply to `case.command`; [] when it is fail-closed."""
    if not reply.get("ok"):
        if reply.get("code") == 1:
            return [f"CRASH: InternalError reply {reply!r}"]
        if not isinstance(reply.get("code"), int) or not isinstance(reply.get("errmsg"), str):
            return [f"malformed error reply {reply!r}"]
        return []
    findings: list[str] = []
    result = reply.get("result")
    if not isinstance(result, dict):
        return [f"success reply without a result document: {reply!r}"]
    if case.sensitive and not (reply.get("hasEncryptionPlaceholders") is True
                               and reply.get("schemaRequiresEncryption") is True):
        findings.append("PLAINTEXT: a flag is false, so libmongocrypt sends the original command "
                        f"(sensitive positions {sorted(case.sensitive, key=str)[:5]}); flags "
                        f"{reply.get('hasEncryptionPlaceholders')!r}/{reply.get('schemaRequiresEncryption')!r}")
    for at, expect in case.sensitive.items():
        if expect.must_error:
            findings.append(f"accepted what must be refused at {at}: {expect.value!r}")
    original = _strip_envelope(case.command)
    marked = _strip_envelope(result)
    if case.strict:
        walker = _Walker(case)
        walker.compare(original, marked, ())
        findings += walker.findings
    else:
        # Positions may move (stages re-serialized, range predicates rewritten): judge the placeholders
        # still where they were, and ask that every sensitive value sits in some placeholder.
        payloads = [p[1] for _, v in _all_values(marked) if (p := placeholder_payload(v)) is not None]
        decided = _decided_statically(marked)
        for at, expect in case.sensitive.items():
            container = _get(marked, at)
            if container is not _MISSING and placeholder_payload(container) is not None:
                findings += check_placeholder(expect, container, at)
            elif (not expect.must_error and not decided
                  and not any(_contains(p.get("v"), expect.value) for p in payloads)):
                findings.append(f"no placeholder holds the sensitive value {expect.value!r} from {at}")
    plain = list(_plain_values(marked))
    for at, expect in case.sensitive.items():
        if _distinctive(case, expect, at) and any(same(value, expect.value) for value in plain):
            findings.append(f"PLAINTEXT: sensitive value {expect.value!r} (from {at}) appears unmarked in result")
    return findings


_MISSING = object()


def _get(tree: Any, at: Path) -> Any:
    for step in at:
        if isinstance(tree, dict) and isinstance(step, str) and step in tree:
            tree = tree[step]
        elif isinstance(tree, list) and isinstance(step, int) and step < len(tree):
            tree = tree[step]
        else:
            return _MISSING
    return tree


# ------------------------------------------------------------------------------------------------
# Match expressions in canonical form
# ------------------------------------------------------------------------------------------------

class _Canon:
    """A match expression as a sorted tuple of atoms; operands become ENC(value) or VAL(value) tokens.

    On the original side an operand at a sensitive position is ENC(its value); on the marked side a
    placeholder is ENC(its payload's v).  Equal canonical forms mean: same predicates, and exactly the
    sensitive operands (and only they) were marked, each with its own value.
    """

    def __init__(self, case: Case, marked_side: bool) -> None:
        self.case = case
        self.marked_side = marked_side
        self.placeholders: list[tuple[Path, Any]] = []

    def token(self, value: Any, at: Path) -> str:
        if self.marked_side:
            found = placeholder_payload(value)
            if found is not None:
                self.placeholders.append((at, value))
                v = found[1].get("v")
                return "ENC(" + (_bytes_of(v).hex() if "v" in found[1] else "?") + ")"
        elif at in self.case.sensitive:
            return "ENC(" + _bytes_of(self.case.sensitive[at].value).hex() + ")"
        if isinstance(value, dict):
            return "DOC{" + ",".join(f"{k}:{self.token(v, (*at, k))}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "ARR[" + ",".join(self.token(v, (*at, i)) for i, v in enumerate(value)) + "]"
        return "VAL(" + _bytes_of(value).hex() + ")"

    def in_key(self, value: Any, at: Path) -> str:
        token = self.token(value, at)
        if token.startswith("ENC("):
            return token
        if isinstance(value, (int, float, Decimal128)) and not isinstance(value, bool):
            try:
                number = value.to_decimal() if isinstance(value, Decimal128) else decimal.Decimal(value)
                if number.is_finite():
                    return f"NUM({number.normalize()})"
            except (ValueError, ArithmeticError):
                pass
        if isinstance(value, (str, Symbol)) and not isinstance(value, Code):
            return "STR(" + (value.value if isinstance(value, Symbol) else value) + ")"
        return token

    def expression(self, expression: Any, at: Path) -> tuple[str, ...]:
        if not isinstance(expression, dict):
            return ("BAD(" + self.token(expression, at) + ")",)
        atoms: list[str] = []
        for key, value in expression.items():
            where = (*at, key)
            if key == "$and" and isinstance(value, list):
                for index, branch in enumerate(value):
                    atoms += self.expression(branch, (*where, index))
            elif key in ("$or", "$nor") and isinstance(value, list):
                branches = sorted("(" + "&".join(self.expression(b, (*where, i))) + ")" for i, b in enumerate(value))
                if key == "$or" and len(branches) == 1:
                    atoms += [branches[0][1:-1]] if branches[0] != "()" else []
                else:
                    atoms.append(key + "[" + "|".join(branches) + "]")
            elif key.startswith("$"):
                atoms.append(f"TOP{key}:" + self.token(value, where))
            else:
                atoms += self.field(key, value, where)
        return tuple(sorted(a for a in atoms if a))

    def field(self, name: str, value: Any, at: Path) -> list[str]:
        operators = isinstance(value, dict) and value and all(k.startswith("$") for k in value)
        if not operators:
            if isinstance(value, Regex) and (self.marked_side or at not in self.case.sensitive):
                return [f"{name} $regex {value.pattern}/{_flags(value)}"]  # {f: /re/} is a regex match
            return [f"{name} $eq {self.token(value, at)}"]
        atoms: list[str] = []
        options = value.get("$options", "")
        for op, operand in value.items():
            where = (*at, op)
            if op == "$options":
                continue
            if op == "$ne":
                atoms.append(f"{name} $not({name} $eq {self.token(operand, where)})")
            elif op in ("$in", "$nin") and isinstance(operand, list):
                # mongod keeps $in as a set under its own comparison: 1, 1.0 and int64 1 are one element,
                # so are a string and a symbol of the same text.
                items = sorted({self.in_key(v, (*where, i)) for i, v in enumerate(operand)})
                atom = f"{name} $in [{','.join(items)}]"
                atoms.append(atom if op == "$in" else f"{name} $not({atom})")
            elif op == "$not" and isinstance(operand, dict):
                atoms.append(f"{name} $not(" + "&".join(sorted(self.field(name, operand, where))) + ")")
            elif op == "$exists":
                atom = f"{name} $exists true"
                atoms.append(atom if operand not in (False, 0, None) else f"{name} $not({atom})")
            elif op == "$regex":
                pattern = operand.pattern if isinstance(operand, Regex) else operand
                flags = _flags(operand) if isinstance(operand, Regex) else "".join(sorted(str(options)))
                if not self.marked_side and where in self.case.sensitive:
                    atoms.append(f"{name} $regex " + self.token(operand, where))
                elif self.marked_side and placeholder_payload(operand) is not None:
                    atoms.append(f"{name} $regex " + self.token(operand, where))
                else:
                    atoms.append(f"{name} $regex {pattern}/{flags}")
            else:
                atoms.append(f"{name} {op} {self.token(operand, where)}")
        return atoms


def _flags(regex: Any) -> str:
    """A Regex's options as sorted letters (pymongo keeps them as re flag bits)."""
    mapping = {re.I: "i", re.L: "l", re.M: "m", re.S: "s", re.U: "u", re.X: "x"}
    return "".join(sorted(letter for bit, letter in mapping.items() if int(regex.flags) & bit))


def compare_match(case: Case, original: Any, marked: Any, at: Path) -> list[str]:
    """Findings for one match expression: canonical forms must agree, every placeholder must be right."""
    before = _Canon(case, marked_side=False).expression(original, at)
    after_canon = _Canon(case, marked_side=True)
    after = after_canon.expression(marked, at)
    findings: list[str] = []
    if before != after:
        leaked = [expect.value for where, expect in case.sensitive.items()
                  if where[: len(at)] == at and _distinctive(case, expect, where)
                  and "VAL(" + _bytes_of(expect.value).hex() + ")" in "".join(after)]
        prefix = f"PLAINTEXT {leaked!r} in" if leaked else "changed"
        findings.append(f"{prefix} match expression at {at}: {original!r} -> {marked!r}")
    mine = [(where, expect) for where, expect in case.sensitive.items() if where[: len(at)] == at]
    for where, placeholder in after_canon.placeholders:
        payload = placeholder_payload(placeholder)
        v = payload[1].get("v") if payload else None
        candidates = [(w, e) for w, e in mine if same(e.value, v)] or mine
        if not candidates:
            findings.append(f"placeholder where nothing is encrypted at {where}: {payload!r}")
            continue
        problems = [check_placeholder(e, placeholder, w) for w, e in candidates]
        if all(problems):
            findings += problems[0]
    return findings


# ------------------------------------------------------------------------------------------------
# Known findings (each has a strict xfail regression test); CI cases that would only re-find them are skipped
# ------------------------------------------------------------------------------------------------

def known_trigger(case: Case) -> str | None:
    """The id of a known, still-open finding this case would re-find (docs/robustness.md), or None.

    None are open now: F4, F5 (QE) and F6 (CSFLE regex options) are fixed and pinned by regression tests.
    Add a rule here when the oracle finds something that someone else will fix.
    """
    del case
    return None
