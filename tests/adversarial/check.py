"""A case through a driver and the oracle: findings, each attributed to a known class or not."""

from __future__ import annotations

from dataclasses import dataclass

from tests.adversarial import known, oracle, rawbson, schemas
from tests.adversarial.drive import Outcome
from tests.adversarial.grammar import Case

# Tags that say how a value was written, not which construct carried it: left out of a route.
_DETAIL_PREFIXES = ("cmd:", "cmp:", "match:", "doc:", "search:", "sec:literal", "sec:$literal", "ref:path",
                    "upd:assign", "upd:$")


@dataclass(frozen=True)
class Finding:
    kind: str  # an oracle verdict kind
    signature: str  # what findings are grouped by
    classes: tuple[str, ...]  # known classes that explain it (empty: new)
    serials: tuple[int, ...] = ()
    detail: str = ""

    @property
    def known(self) -> bool:
        return bool(self.classes)

    @property
    def failing(self) -> bool:
        return self.kind in oracle.FAILING


def route(tags: frozenset[str]) -> str:
    """The constructs a placement went through (how the value was written left out)."""
    kept = sorted(t for t in tags if not t.startswith(_DETAIL_PREFIXES))
    return " ".join(kept) or "(direct)"


def findings(case: Case, outcome: Outcome) -> list[Finding]:
    flavour = schemas.SCHEMES[case.scheme].flavour
    raw = case.raw
    # The grammar says where it repeated a key; the bytes must say so too.
    duplicates = case.duplicates if rawbson.has_duplicates_raw(raw) else ()
    duplicate_classes = ("9",) if duplicates else ()
    found: list[Finding] = []
    if outcome.collapsed:
        found.append(Finding("DECODER", "DECODER markd.bsonvalues.decode keeps the last of duplicate keys", ("9",)))
    for verdict in oracle.judge(raw, outcome.reply, duplicates=duplicates):
        if verdict.kind == oracle.CRASH:
            crash = outcome.crash or verdict.detail
            known_crash = known.KNOWN_CRASHES.get(crash) or (
                "N7" if crash == "InternalError" and case.command_name == "explain" and duplicates else None)
            found.append(Finding(verdict.kind, f"CRASH {crash}", (known_crash,) if known_crash else (),
                                 detail=verdict.detail))
        elif verdict.kind == oracle.DUPLICATE:
            found.append(Finding(verdict.kind, f"DUPLICATE accepted: {verdict.detail}", ("9",), verdict.serials))
        elif verdict.kind in (oracle.LEAK, oracle.FLAG, oracle.FLAG_HEP, oracle.DROPPED):
            for serial in verdict.serials or (0,):
                placement = case.placements.get(serial)
                if placement is None:
                    found.append(Finding(verdict.kind, f"{verdict.kind} {flavour} secret #{serial} with no placement",
                                         duplicate_classes, (serial,), verdict.detail))
                    continue
                classes = tuple(known.classes_of(placement.tags, placement.field)) + duplicate_classes
                duplicated = " (duplicate keys)" if duplicates else ""
                found.append(Finding(verdict.kind, f"{verdict.kind} {flavour} {route(placement.tags)}{duplicated}",
                                     classes, (serial,), verdict.detail))
        else:
            found.append(Finding(verdict.kind, f"{verdict.kind} {verdict.detail}", (), verdict.serials))
    return found
