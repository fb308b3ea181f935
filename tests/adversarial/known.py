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
    requires: frozenset[str] = frozenset()  # ... or with all of these tags and a field starting with field_prefix
    field_prefix: str = ""

    def explains(self, tags: frozenset[str], field: str) -> bool:
        if self.tags & tags or any(tag.startswith(prefix) for tag in tags for prefix in self.prefixes):
            return True
        return bool(self.requires) and self.requires <= tags and field.startswith(self.field_prefix)


CLASSES: tuple[KnownClass, ...] = (
    KnownClass("1", "$getField on an encrypted name", frozenset(), ("ref:getField", "ref:derived:$getField")),
    KnownClass("2", "$let binding an encrypted value, $$ROOT, or rebinding CURRENT; $function of one",
               frozenset({"ref:let-var", "ref:let-root", "ref:let-current-rebind", "ref:function-let",
                          "ref:derived:$let"})),
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
    KnownClass("N5", "CSFLE expressions do not look inside object-shaped values: an encrypted field in an object "
               "literal ({k: '$ssn'}) or in an operator's object argument ($mergeObjects, $objectToArray, $bsonSize, "
               "$hash, $hexHash, $encStr* in CSFLE)",
               frozenset({"cmp:$eq-object", "ref:derived:$mergeObjects", "ref:derived:$objectToArray",
                          "ref:derived:$bsonSize", "ref:derived:$hash",
                          "ref:derived:$hexHash"}), ("ref:derived:$encStr",)),
    KnownClass("N6", "CSFLE update operators other than $set/$setOnInsert given the parent object of an encrypted "
               "field ({$inc: {nested: {pin: N}}}, $mul, $pull, $pullAll, $bit) pass the value in clear",
               frozenset(f"upd:{op}-object" for op in ("$inc", "$mul", "$pull", "$pullAll", "$bit", "$min", "$max",
                                                       "$push", "$addToSet", "$push-each", "$addToSet-each"))),
    KnownClass("N7", "explain with a field repeated beside `explain` (its rules, verbosity) crashes the analysis: "
               "AttributeError in markd/analysis/__init__.py:_explain, InternalError (found on 8c28e00)", frozenset()),
    KnownClass("N4", "CSFLE update pipelines writing a patternProperties-encrypted field pass the value in clear",
               frozenset(), requires=frozenset({"upd:pipeline"}), field_prefix="enc_"),
)
CLASSES = CLASSES + NEW_CLASSES
DUPLICATES = KnownClass("9", "duplicate keys in rules and command fields", frozenset())
# Crashes are known by signature (exception and innermost markd frame), not by tags.
KNOWN_CRASHES: dict[str, str] = {"AttributeError at markd/analysis/__init__.py:_explain": "N7"}


def classes_of(tags: frozenset[str], field: str = "") -> list[str]:
    """The known classes a placement with these tags, tied to `field`, belongs to."""
    return [c.name for c in CLASSES if c.explains(tags, field)]
