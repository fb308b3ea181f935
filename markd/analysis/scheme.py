"""What a scheme (CSFLE, Queryable Encryption) supplies to the one analysis core.

The core walks commands, filters, expressions, pipelines and updates the same way for both; a
scheme says only what differs: how its rules are read, what its placeholders look like, which
operators each kind of encrypted field allows, and its codes and messages.  Everything here is
called by the core with the encrypted (or possibly encrypted) thing in hand; a hook that does not
know what to do refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from bson.binary import Binary

from markd.analysis.schema import Encryption, Metadata, Schema, SchemaNode, shape

if TYPE_CHECKING:
    from markd.analysis.context import Analysis, Scope
    from markd.analysis.expressions import Rule, Value
    from markd.analysis.match import Leaf, Node


class Rules:
    """A command's rules as its scheme read them: one schema per namespace, and the fields to drop."""

    def __init__(self, schemas: Mapping[str, Schema], namespace: str, stripped: frozenset[str],
                 multi: bool = False) -> None:
        self.schemas = schemas
        self.namespace = namespace
        self.stripped = stripped  # command fields that carried the rules and do not go back
        self.multi = multi  # one schema per namespace given (several namespaces may be read)

    @property
    def encrypts_anything(self) -> bool:
        return any(schema.encrypts_anything for schema in self.schemas.values())


class Scheme:
    """The base every scheme extends; see the module docstring."""

    name = "scheme"
    errors: dict[str, tuple[int, str]] = {}
    # Expression operators whose rule differs for this scheme (e.g. QE's range `$and`).
    expression_rules: Mapping[str, Rule] = {}

    # -- rules ---------------------------------------------------------------------------------

    def read_rules(self, command: Mapping[str, Any], name: str, namespace: str) -> Rules:
        raise NotImplementedError

    # -- values --------------------------------------------------------------------------------

    def mark_write(self, encryption: Encryption, value: Any, path: str, scope: Scope) -> Binary:
        """The placeholder for writing `value` at encrypted `path` (insert, replacement, $set)."""
        raise NotImplementedError

    def mark_equality(self, encryption: Encryption, value: Any, path: str, scope: Scope, name: str | None = None
                      ) -> Binary:
        """The placeholder for comparing `value` with encrypted `path` for equality; `name` is the element
        that held it (for messages; by default the path's last field)."""
        raise NotImplementedError

    # -- expressions ---------------------------------------------------------------------------

    def compare(self, op: str, arguments: list[Any], scope: Scope) -> tuple[Any, Value]:
        """$eq, $ne, $in, $gt, $gte, $lt, $lte, $cmp in an expression."""
        raise NotImplementedError

    def refuse_evaluation(self, value: Value, op: str, scope: Scope) -> NoReturn:
        """An encrypted (or unknown) value reached an operator that evaluates it."""
        raise NotImplementedError

    # -- match language ------------------------------------------------------------------------

    def match_leaf(self, leaf: Leaf, metadata: Metadata, scope: Scope) -> list[Node]:
        """A field predicate at a path that is encrypted, above an encrypted path, or unknown."""
        raise NotImplementedError

    def finish_and(self, nodes: list[Node], scope: Scope, in_and: bool) -> list[Any]:
        """An AND level's children once all are known (QE merges range predicates here)."""
        return nodes

    # -- where values flow ------------------------------------------------------------------------

    def forwards(self, value: Value, op: str, scope: Scope) -> None:
        """`op` passes `value` on unexamined ($cond branches, $ifNull, $getField...)."""

    def included(self, node: SchemaNode) -> SchemaNode:
        """What an inclusion projection keeps of a field's schema."""
        return node

    def projected(self, value: Value, renamed: bool, scope: Scope) -> SchemaNode:
        """The schema of a computed (or, `renamed`, moved by name) projection field."""
        return value.node

    def compared_output(self, expression: Any, scope: Scope, random: Callable[[str], NoReturn]
                        ) -> tuple[Any, SchemaNode]:
        """A value that is compared and passed on (a group key, an $addToSet argument): its serialization and
        schema; `random` (given the field read) refuses it when it may hold randomly encrypted (or unknown)
        values."""
        from markd.analysis import expressions

        serialized, value = expressions.analyse(expression, scope)
        expressions.check_output(value, scope)
        if value.node.may_hold_random:
            random(value.source)
        return serialized, value.node

    def accumulated(self, op: str, value: Value, field: str, scope: Scope) -> SchemaNode:
        """The schema of what an accumulator's argument yields."""
        return value.node

    def check_added_field(self, root: SchemaNode, path: str, child: SchemaNode, scope: Scope) -> None:
        """A stage adds `child` at `path` of `root`."""

    def same_encryption(self, after: SchemaNode, before: SchemaNode) -> bool:
        """Whether a pipeline update left the encrypted fields as they were."""
        return shape(after) == shape(before)

    # -- create, collMod, createIndexes ----------------------------------------------------------

    def check_validator(self, validator: Mapping[str, Any], scope: Scope) -> None:
        from markd.analysis.match import mark_filter

        # A comparison with an encrypted field refuses the validator even when it folded away (mongocryptd
        # counts placeholders only, and returns the validator, its plaintext included, when there are none).
        before = scope.analysis.encrypted_values
        mark_filter(validator, scope)
        if scope.analysis.encrypted_values > before:
            scope.fail("validator_compare")

    def check_index(self, index: Mapping[str, Any], scope: Scope) -> None:
        partial = index.get("partialFilterExpression")
        if not isinstance(partial, Mapping):
            return
        from markd.analysis.match import mark_filter

        before = scope.analysis.encrypted_values
        mark_filter(partial, scope.with_collation(index.get("collation")))
        if scope.analysis.encrypted_values > before:
            scope.fail("partial_filter_compare")

    def schema_command_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """create/collMod/createIndexes: the command libmongocrypt may forward (the rules removed)."""
        return result

    def schema_command_requires(self, encrypts_anything: bool) -> bool:
        return encrypts_anything

    # -- bulkWrite -----------------------------------------------------------------------------

    def check_bulk_write(self, command: Any) -> None:
        """Whether this scheme accepts a bulkWrite at all."""

    def check_bulk_op(self, kind: str, op: Mapping[str, Any], count: int, command: Any) -> None:
        """One bulkWrite operation of `count`."""

    # -- analysis ------------------------------------------------------------------------------

    def new_analysis(self, rules: Rules) -> Analysis:
        """The analysis of a command over `rules.namespace` (for bulkWrite, the one nsInfo names)."""
        from markd.analysis.context import Analysis

        database, _, collection = rules.namespace.partition(".")
        return Analysis(self, rules.schemas, database, collection)
