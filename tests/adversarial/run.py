"""The long run: `python -m tests.adversarial.run --examples N --seconds S`.

Draws N adversarial commands (or as many as fit in S seconds), puts each to markd in-process (and every
--wire-every'th one to a real markd process over a socket), judges every reply with the oracle, groups
the findings by signature and prints, for each, how often it was seen, the known class that explains it
(or NEW) and the smallest command that produced it.  Exit status 1 when a failing finding no known class
explains turned up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.adversarial import grammar, oracle, render, schemas
from tests.adversarial.check import Finding, findings
from tests.adversarial.drive import Outcome, Wire, in_process
from tests.adversarial.grammar import Case


class TimeUp(BaseException):  # a BaseException: hypothesis lets it through instead of shrinking
    pass


@dataclass
class Group:
    finding: Finding
    count: int = 0
    smallest: Case | None = None
    size: int = 0
    commands: Counter[str] = field(default_factory=Counter)

    def add(self, case: Case, finding: Finding) -> None:
        self.count += 1
        self.commands[case.command_name] += 1
        size = len(case.raw)
        if self.smallest is None or size < self.size:
            self.smallest, self.size, self.finding = case, size, finding


@dataclass
class Report:
    examples: int = 0
    accepted: int = 0
    wire: int = 0
    groups: dict[str, Group] = field(default_factory=dict)
    by_class: Counter[str] = field(default_factory=Counter)
    diverged: int = 0

    def record(self, case: Case, found: list[Finding]) -> None:
        seen: set[str] = set()
        for finding in found:
            if finding.signature in seen:
                continue
            seen.add(finding.signature)
            group = self.groups.setdefault(finding.signature, Group(finding))
            group.add(case, finding)
            if finding.failing:
                for name in finding.classes or ("NEW",):
                    self.by_class[name] += 1

    def new_failing(self) -> list[Group]:
        return [g for g in self.groups.values() if g.finding.failing and not g.finding.known]


def explore(examples: int, seconds: float, wire_every: int, port: int | None, seed_value: int | None,
            schemes: list[str], commands: list[str]) -> Report:
    report = Report()
    wire = Wire(port) if port else None
    deadline = time.monotonic() + seconds

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(grammar.cases(schemes, commands))
    def one(case: Case) -> None:
        if time.monotonic() > deadline:
            raise TimeUp
        report.examples += 1
        outcome = in_process(case.raw)
        found = findings(case, outcome)
        if outcome.reply and oracle.rawbson.sub_document(outcome.reply, "result") is not None:
            report.accepted += 1
        if wire is not None and report.examples % wire_every == 0:
            report.wire += 1
            remote: Outcome = wire.send(case.raw)
            wire_found = findings(case, Outcome(remote.reply, remote.crash, outcome.collapsed))
            if remote.reply != outcome.reply:
                report.diverged += 1
            found += [f for f in wire_found if f.signature not in {g.signature for g in found}]
        report.record(case, found)

    if seed_value is not None:
        one = seed(seed_value)(one)
    try:
        one()
    except TimeUp:  # hypothesis prints how to reproduce the "failure": the run simply stopped on time
        pass
    finally:
        if wire is not None:
            wire.close()
    return report


def print_report(report: Report, out: object = sys.stdout) -> None:
    write = out.write  # type: ignore[attr-defined]
    write(f"{report.examples} commands, {report.accepted} accepted, {report.wire} also over the wire "
          f"({report.diverged} replies differed)\n")
    write("failing findings by class (a finding counts once per command): "
          + ", ".join(f"{name}: {count}" for name, count in sorted(report.by_class.items())) + "\n\n")
    order = sorted(report.groups.values(), key=lambda g: (g.finding.known, not g.finding.failing, -g.count))
    for group in order:
        finding = group.finding
        label = "NEW" if finding.failing and not finding.known else (
            "class " + "+".join(finding.classes) if finding.classes else "info")
        write(f"[{label}] x{group.count} {finding.signature}\n")
        assert group.smallest is not None
        write(f"    commands: {dict(group.commands)}; smallest ({group.smallest.scheme}"
              f"{'; ' + ', '.join(group.smallest.duplicates) if group.smallest.duplicates else ''}):\n")
        write(f"    {render.to_json(group.smallest.command)}\n")
        if finding.detail:
            write(f"    where: {finding.detail[:300]}\n")
        write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--wire-every", type=int, default=10,
                        help="send every Nth command over a socket too (0: never)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--scheme", action="append", choices=sorted(schemas.SCHEMES))
    parser.add_argument("--command", action="append", choices=grammar.COMMANDS)
    parser.add_argument("--json", help="also write the groups as JSON here")
    args = parser.parse_args(argv)
    process = None
    if args.wire_every:
        from tests.support.process import MarkdProcess

        process = MarkdProcess(args=["--quiet"]).start()
    started = time.monotonic()
    try:
        report = explore(args.examples, args.seconds, args.wire_every or 1, process.port if process else None,
                         args.seed, args.scheme or list(schemas.SCHEMES), args.command or list(grammar.COMMANDS))
    finally:
        if process is not None:
            log = process.log_text()
            process.cleanup()
            if oracle.secrets.STRING_MARK in log:
                print("markd's log holds a secret value", file=sys.stderr)
    print_report(report)
    print(f"{time.monotonic() - started:.1f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([{"signature": g.finding.signature, "count": g.count, "classes": g.finding.classes,
                        "failing": g.finding.failing, "smallest": render.to_json(g.smallest.command) if g.smallest
                        else None, "scheme": g.smallest.scheme if g.smallest else None}
                       for g in report.groups.values()], handle, indent=1)
    return 1 if report.new_failing() else 0


if __name__ == "__main__":
    sys.exit(main())
