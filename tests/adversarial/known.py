"""Known findings: which issue-12 class (or which class found since) a leaked placement belongs to.

A finding is attributed by the tags of the placement whose secret leaked (see grammar.Placement): a class
is a set of tags, any of which marks a placement as going through the construct the class names.  The CI
generator test fails only on findings no class here explains; each class has strict-xfail regression
rows in tests/test_adversarial_regressions.py, and is removed from here when the lead's fix lands.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownClass:
    name: str  # "1" .. "9" for the classes
    title: str
    tags: frozenset[str]  # a placement with any of these tags belongs to the class
    prefixes: tuple[str, ...] = ()  # ... or with a tag starting with one of these


CLASSES: tuple[KnownClass, ...] = (
    KnownClass("1", "$getField on an encrypted name", frozenset(), ("ref:getField",)),
    KnownClass("2", "$let binding an encrypted value, $$ROOT, or rebinding CURRENT; $function of one",
               frozenset({"ref:let-var", "ref:let-root", "ref:let-current-rebind", "ref:function-let"})),
    KnownClass("3", "command let / update c constants", frozenset({"sec:let-cmd", "sec:c"})),
    KnownClass("4", "find min / max index bounds", frozenset({"field:min", "field:max"})),
    KnownClass("5", "findAndModify fields expressions; $elemMatch projection",
               frozenset({"ctx:fam.fields", "proj:$elemMatch"})),
    KnownClass("6", "$group N-accumulators matched later", frozenset({"via:N-accumulator"})),
    KnownClass("7", "$replaceRoot / $replaceWith through $let / $$ROOT", frozenset(),
               ("via:$replaceRoot-root", "via:$replaceRoot-let", "via:$replaceWith-root", "via:$replaceWith-let")),
    KnownClass("8", "$search / $searchMeta / $vectorSearch", frozenset(),
               ("stage:$search", "stage:$vectorSearch")),
)
# Found by this generator on main at 715a881 (tests/adversarial/README.md has the minimal commands).
NEW_CLASSES: tuple[KnownClass, ...] = (
    KnownClass("N1", "once no encrypted field is left in the stream, later stages that read or write another "
               "collection pass unanalysed ($graphLookup restrictSearchWithMatch; QE $unionWith, $merge)",
               frozenset({"ctx:restrictSearchWithMatch", "via:$graphLookup", "stage:$merge-whenMatched",
                          "ctx:$unionWith-pipeline"})),
    KnownClass("N2", "QE range predicate with an empty intersection: {$alwaysFalse} with "
               "hasEncryptionPlaceholders false, or (validators) the predicate returned verbatim",
               frozenset({"match:range2"})),
    KnownClass("N3", "$let binding a constant compared with an encrypted field (CSFLE passes it verbatim)",
               frozenset({"sec:let-expr"})),
)
CLASSES = CLASSES + NEW_CLASSES
DUPLICATES = KnownClass("9", "duplicate keys in rules and command fields", frozenset())


def classes_of(tags: frozenset[str]) -> list[str]:
    """The known classes a placement with these tags belongs to."""
    return [c.name for c in CLASSES
            if c.tags & tags or any(tag.startswith(prefix) for tag in tags for prefix in c.prefixes)]
