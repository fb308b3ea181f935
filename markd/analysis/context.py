"""What every rule consults while one command is analysed: the scheme, the rules, where it is.

`Analysis` is one command's state (the scheme in force, each namespace's schema, the tally of
placeholders, range payload ids).  `Scope` is where a filter, an expression or a stage is being
analysed: the schema of the documents there, the variables in force, the collation, and what the
scheme allows at that position.  Scopes are immutable and cheap to derive.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn

from bson.binary import Binary

from markd.analysis.errors import error
from markd.analysis.schema import EMPTY, Metadata, Schema, SchemaNode, lookup, subtree
from markd.errors import CommandError

if TYPE_CHECKING:
    from markd.analysis.expressions import Value
    from markd.analysis.scheme import Scheme


@dataclass
class Analysis:
    """One command's analysis: shared by every scope derived from it."""

    scheme: Scheme
    schemas: Mapping[str, Schema]  # "db.coll" -> parsed rules
    database: str
    collection: str
    placeholders: int = 0
    # Values compared with encrypted fields that left the result without a placeholder (an empty range
    # folded to false): the original command still holds them, so it must never be sent instead.
    dropped: int = 0

    def marked(self, placeholder: Binary) -> Binary:
        """Count a placeholder going into the result (the reply's hasEncryptionPlaceholders)."""
        self.placeholders += 1
        return placeholder

    def drop_encrypted(self) -> None:
        """Count encrypted-field constants the result no longer holds."""
        self.dropped += 1

    @property
    def encrypted_values(self) -> int:
        """Constants taken as encrypted so far, marked or dropped."""
        return self.placeholders + self.dropped

    def schema_of(self, collection: str) -> Schema | None:
        return self.schemas.get(f"{self.database}.{collection}")

    @property
    def own_schema(self) -> Schema | None:
        return self.schema_of(self.collection)

    def scope(self, **fields: Any) -> Scope:
        """A scope over the command's own documents."""
        own = self.own_schema
        return Scope(self, own.root if own is not None else EMPTY, **fields)

    def error(self, key: str, /, **fields: object) -> CommandError:
        return error(key, self.scheme.errors, **fields)

    def fail(self, key: str, /, **fields: object) -> NoReturn:
        raise self.error(key, **fields)


def collation_is_simple(collation: Any) -> bool:
    """True unless a collation other than the simple one would compare strings differently."""
    return not isinstance(collation, Mapping) or collation.get("locale", "simple") == "simple"


@dataclass(frozen=True, slots=True)
class Scope:
    """Where something is analysed: the documents' schema, the variables, the collation, the position."""

    analysis: Analysis
    current: SchemaNode = EMPTY
    variables: Mapping[str, Value] = field(default_factory=dict)
    collation_simple: bool = True
    # QE: comparisons of encrypted fields are allowed only in a filter's $expr, not in computed
    # fields, group keys or accumulators (mongocryptd: 7020507).
    comparisons_allowed: bool = False
    # The document being written, against which CSFLE JSON-pointer keyIds resolve (None elsewhere).
    document: Mapping[str, Any] | None = None
    # Where a pipeline runs: the collection whose documents enter it (for $lookup without `from`).
    collection: str = ""
    # Command `let` values are computed before any document is read: a field path there is refused.
    document_free: bool = False
    # QE range payload ids count up from 0 within each filter, as mongocryptd numbers them.
    payload_ids: Iterator[int] = field(default_factory=itertools.count)

    @property
    def scheme(self) -> Scheme:
        return self.analysis.scheme

    def error(self, key: str, /, **fields: object) -> CommandError:
        return self.analysis.error(key, **fields)

    def fail(self, key: str, /, **fields: object) -> NoReturn:
        raise self.analysis.error(key, **fields)

    def with_current(self, current: SchemaNode) -> Scope:
        return replace(self, current=current)

    def with_variables(self, variables: Mapping[str, Value]) -> Scope:
        return replace(self, variables={**self.variables, **variables})

    def without_comparisons(self) -> Scope:
        return replace(self, comparisons_allowed=False)

    def with_comparisons(self) -> Scope:
        return replace(self, comparisons_allowed=True)

    def for_document(self, document: Mapping[str, Any] | None) -> Scope:
        return replace(self, document=document)

    def for_filter(self) -> Scope:
        return replace(self, payload_ids=itertools.count())

    def payload_id(self) -> int:
        return next(self.payload_ids)

    def with_collation(self, collation: Any) -> Scope:
        return replace(self, collation_simple=collation_is_simple(collation))

    def metadata_for(self, path: str) -> Metadata:
        """What the schema of the current documents says about `path` (the command's own rules are memoised)."""
        own = self.analysis.own_schema
        if own is not None and own.root is self.current:
            return own.metadata_for(path)
        return lookup(self.current, path)

    def subtree(self, path: str) -> SchemaNode:
        return subtree(self.current, path)
