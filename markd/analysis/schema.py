"""The one schema model both rule formats produce: a tree that answers "what is at this path?".

A CSFLE `jsonSchema` (properties, patternProperties, additionalProperties) and a Queryable Encryption
`encryptedFields` list both become a tree of `SchemaNode`s.  A node is an encrypted leaf (its
`encrypted` metadata is the scheme's own `Encryption`), an object whose fields have rules, or
*unknown*: a value whose encryption is only known at run time (an aggregation result mixing fields).

`lookup(root, path)` answers one of: the leaf's `Encryption`, `NOT_ENCRYPTED`, `PREFIX` (an object
above encrypted paths) or `UNKNOWN`; a path that goes *through* an encrypted leaf is refused (51102),
and two subschemas that disagree about one path are refused (51142).  Pipelines derive new trees from
old ones (`with_path`, `without_path`, `with_child`) as documents change shape stage by stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from markd.analysis import paths
from markd.analysis.errors import fail


class Encryption:
    """What a scheme says about one encrypted field; each scheme subclasses it (FLE1, FLE2)."""

    __slots__ = ()

    @property
    def randomized(self) -> bool:
        """True when equal values give different ciphertexts, so the server cannot compare them."""
        raise NotImplementedError

    @property
    def pointer(self) -> bool:
        """True when the key is named by a JSON pointer into the document written (CSFLE only)."""
        return False

    @property
    def types(self) -> frozenset[str]:
        """The BSON type aliases the field may hold (empty: any)."""
        return frozenset()


class Pattern(Protocol):
    """A compiled patternProperties regex (the standard library's, or a bounded engine's)."""

    pattern: str

    def search(self, string: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class SchemaNode:
    """One subschema: encrypted itself, the rules for its fields, or unknown until run time."""

    encrypted: Encryption | None = None
    properties: Mapping[str, SchemaNode] = field(default_factory=dict)
    patterns: tuple[tuple[Pattern, SchemaNode], ...] = ()
    additional: SchemaNode | None = None
    unknown: bool = False
    contains_encrypted: bool = False

    def children_for(self, name: str) -> list[SchemaNode]:
        """Subschemas that govern field `name` (properties, then patterns; additionalProperties otherwise)."""
        found: list[SchemaNode] = []
        if name in self.properties:
            found.append(self.properties[name])
        found.extend(child for pattern, child in self.patterns if pattern.search(name))
        if not found and self.additional is not None:
            found.append(self.additional)
        return found

    @property
    def may_hold_encryption(self) -> bool:
        return self.encrypted is not None or self.unknown or self.contains_encrypted

    def children(self) -> Iterator[SchemaNode]:
        yield from self.properties.values()
        yield from (child for _, child in self.patterns)
        if self.additional is not None:
            yield self.additional

    def any_leaf(self, predicate: Callable[[Encryption], bool], *, unknown: bool = True) -> bool:
        """True when some encrypted leaf below satisfies `predicate` (an unknown node counts as `unknown`)."""
        if self.unknown:
            return unknown
        if self.encrypted is not None:
            return predicate(self.encrypted)
        return self.contains_encrypted and any(child.any_leaf(predicate, unknown=unknown) for child in self.children())

    @property
    def may_hold_random(self) -> bool:
        """Some value below may be randomly encrypted (or is unknown): no equality comparison can work on it."""
        return self.any_leaf(lambda leaf: leaf.randomized)


def node(
    encrypted: Encryption | None = None,
    properties: Mapping[str, SchemaNode] | None = None,
    patterns: tuple[tuple[Pattern, SchemaNode], ...] = (),
    additional: SchemaNode | None = None,
    unknown: bool = False,
) -> SchemaNode:
    """A SchemaNode with `contains_encrypted` worked out from its children."""
    properties = dict(properties or {})
    children = [*properties.values(), *(child for _, child in patterns)]
    if additional is not None:
        children.append(additional)
    contains = any(child.may_hold_encryption for child in children)
    return SchemaNode(encrypted, properties, patterns, additional, unknown, contains)


EMPTY = node()
UNKNOWN_NODE = node(unknown=True)


def leaf(encrypted: Encryption) -> SchemaNode:
    return SchemaNode(encrypted)


@dataclass(frozen=True, slots=True)
class _Marker:
    name: str

    def __repr__(self) -> str:
        return self.name


NOT_ENCRYPTED = _Marker("NOT_ENCRYPTED")
PREFIX = _Marker("PREFIX")
UNKNOWN = _Marker("UNKNOWN")
Metadata = Encryption | _Marker


def is_encrypted(metadata: object) -> bool:
    return isinstance(metadata, Encryption)


def may_hold_encryption(metadata: Metadata) -> bool:
    """Encrypted, above an encrypted path, or unknown: anything but NOT_ENCRYPTED."""
    return metadata is not NOT_ENCRYPTED


def lookup(root: SchemaNode, path: str) -> Metadata:
    """What is at dotted `path` under `root` (see the module docstring)."""
    return _lookup(root, paths.split(path), path)


def _lookup(current: SchemaNode, parts: tuple[str, ...], full: str) -> Metadata:
    if current.unknown:
        return UNKNOWN
    if current.encrypted is not None:
        if parts:
            fail("through_encrypted", path=full)
        return current.encrypted
    if not parts:
        return PREFIX if current.contains_encrypted else NOT_ENCRYPTED
    children = current.children_for(parts[0])
    if not children:
        return NOT_ENCRYPTED
    if len(children) == 1:
        return _lookup(children[0], parts[1:], full)
    answers = [_lookup(child, parts[1:], full) for child in children]
    # Children must agree on the encryption itself; being a prefix in one and not in another is fine.
    encrypted = {answer for answer in answers if isinstance(answer, Encryption)}
    if len(encrypted) > 1 or (encrypted and not all(isinstance(answer, Encryption) for answer in answers)):
        fail("conflicting_metadata", path=full)
    if encrypted:
        return encrypted.pop()
    for marker in (UNKNOWN, PREFIX):
        if marker in answers:
            return marker
    return NOT_ENCRYPTED


def child(current: SchemaNode, name: str, path: str = "") -> SchemaNode:
    """The node governing field `name` (one component, dots included) of an object described by `current`."""
    if current.unknown:
        return UNKNOWN_NODE
    if current.encrypted is not None:
        fail("through_encrypted", path=paths.join(path, name) if path else name)
    children = current.children_for(name)
    if not children:
        return EMPTY
    if len(children) > 1:
        _lookup(current, (name,), paths.join(path, name) if path else name)  # refuses conflicts
        if not all(other == children[0] for other in children):
            # Several subschemas govern this field: only what they agree on is known.
            return UNKNOWN_NODE if any(c.may_hold_encryption for c in children) else EMPTY
    return children[0]


def subtree(root: SchemaNode, path: str) -> SchemaNode:
    """The node governing dotted `path` (EMPTY when nothing does); conflicts refused as in `lookup`."""
    current = root
    walked = ""
    for part in paths.split(path):
        if current.unknown:
            return UNKNOWN_NODE
        if current.encrypted is not None:
            fail("through_encrypted", path=path)
        current = child(current, part, walked)
        walked = paths.join(walked, part)
    return current


def with_child(root: SchemaNode, name: str, replacement: SchemaNode) -> SchemaNode:
    """`root` (an object's node) with field `name` governed by `replacement` from now on."""
    if root.unknown:
        return UNKNOWN_NODE
    base = EMPTY if root.encrypted is not None else root
    properties = dict(base.properties)
    properties[name] = replacement
    return node(None, properties, base.patterns, base.additional)


def with_path(root: SchemaNode, path: str, replacement: SchemaNode) -> SchemaNode:
    """`root` with the subschema at dotted `path` replaced by `replacement` (objects added on the way)."""
    parts = paths.split(path)
    if not parts:
        return replacement
    head, rest = parts[0], paths.join(parts[1:])
    if root.unknown:
        return UNKNOWN_NODE
    if root.encrypted is not None:
        # An encrypted value overwritten by an object: nothing of the old leaf remains.
        return node(properties={head: with_path(EMPTY, rest, replacement)})
    current = subtree(root, head) if rest else EMPTY
    return with_child(root, head, with_path(current, rest, replacement) if rest else replacement)


def without_path(root: SchemaNode, path: str) -> SchemaNode:
    """`root` with whatever `path` held removed (an excluded or unset field holds nothing)."""
    return with_path(root, path, EMPTY)


def shape(current: SchemaNode, depth: int = 0) -> Any:
    """A comparable summary of where encryption sits in a tree (unknown nodes compare unequal to all)."""
    if depth > 200:
        return ("deep", id(current))
    if current.unknown:
        return ("unknown", id(current))
    if current.encrypted is not None:
        return current.encrypted
    return (
        tuple(sorted((k, shape(v, depth + 1)) for k, v in current.properties.items() if v.may_hold_encryption)),
        tuple((p.pattern, shape(v, depth + 1)) for p, v in current.patterns if v.may_hold_encryption),
        shape(current.additional, depth + 1) if current.additional is not None
        and current.additional.may_hold_encryption else None,
    )


def leaves(current: SchemaNode, prefix: str = "") -> Iterator[tuple[str, Encryption]]:
    """(path, encryption) of every named encrypted leaf below `current` (patterns and additional excluded)."""
    if current.encrypted is not None:
        yield prefix, current.encrypted
        return
    for name, sub in current.properties.items():
        if sub.may_hold_encryption:
            yield from leaves(sub, paths.join(prefix, name))


# Paths remembered per parsed schema; bounded (count and length), as paths come from clients.
_MEMO_LIMIT = 1024
_MEMO_PATH_LIMIT = 256


@dataclass(frozen=True, slots=True)
class Schema:
    """A namespace's parsed rules: the tree, and answers for paths asked before."""

    root: SchemaNode
    remote: bool = True
    # Parsed schemas are cached and the same field paths recur in every command: each path is
    # looked up once. Only answers are remembered; a lookup that raises raises again.
    _answers: dict[str, Metadata] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def metadata_for(self, path: str) -> Metadata:
        found = self._answers.get(path)
        if found is None:
            found = lookup(self.root, path)
            if len(self._answers) < _MEMO_LIMIT and len(path) <= _MEMO_PATH_LIMIT:
                self._answers[path] = found
        return found

    def subtree(self, path: str) -> SchemaNode:
        return subtree(self.root, path)

    @property
    def encrypts_anything(self) -> bool:
        return self.root.may_hold_encryption
