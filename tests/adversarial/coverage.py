"""What a batch of generated commands exercised: commands, schemes, and every $-name of the tables seen."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tests.adversarial import oracle, rawbson, tables
from tests.adversarial.check import Finding
from tests.adversarial.drive import Outcome
from tests.adversarial.grammar import Case

TABLES: dict[str, frozenset[str]] = {
    "stages": frozenset(tables.STAGES),
    "expressions": frozenset(tables.EXPRESSIONS),
    "accumulators": frozenset(tables.ACCUMULATORS),
    "window operators": frozenset(tables.WINDOW_OPERATORS),
    "query operators": frozenset(tables.QUERY_OPERATORS),
    "update operators": frozenset(name.split("-")[0] for name in tables.UPDATE_OPERATORS),
}


@dataclass
class Tally:
    commands: Counter[str] = field(default_factory=Counter)
    schemes: Counter[str] = field(default_factory=Counter)
    names: set[str] = field(default_factory=set)  # every key starting with "$" in any command
    accepted: int = 0
    marked: int = 0  # accepted replies holding at least one placeholder
    placements: int = 0
    known: Counter[str] = field(default_factory=Counter)  # failing findings by class
    informational: Counter[str] = field(default_factory=Counter)

    def add(self, case: Case, outcome: Outcome, found: list[Finding]) -> None:
        raw = case.raw
        self.commands[case.command_name] += 1
        self.schemes[case.scheme] += 1
        self.placements += len(case.placements)
        self.names.update(e.key for e in rawbson.walk(raw) if e.key.startswith("$"))
        if outcome.reply is not None:
            result = rawbson.sub_document(outcome.reply, "result")
            if result is not None:
                self.accepted += 1
                self.marked += bool(oracle.scan(result).placeholders)
        for finding in found:
            if finding.failing:
                for name in finding.classes:
                    self.known[name] += 1
            else:
                self.informational[finding.kind] += 1

    def missing(self, table: str) -> set[str]:
        return set(TABLES[table]) - self.names

    def summary(self) -> str:
        lines = [f"{sum(self.commands.values())} commands ({dict(self.commands)}), schemes {dict(self.schemes)}",
                 f"{self.accepted} accepted, {self.marked} of them with placeholders; {self.placements} secrets placed",
                 "known failing findings by class: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.known.items())),
                 "informational: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.informational.items()))]
        for table, names in TABLES.items():
            lines.append(f"{table}: {len(names) - len(self.missing(table))}/{len(names)} drawn"
                         + (f" (not drawn: {sorted(self.missing(table))})" if self.missing(table) else ""))
        return "\n".join(lines)
