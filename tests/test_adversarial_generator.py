"""Issue 12's adversarial generator in CI: derandomized, bounded, in-process and over a real socket.

Every drawn command is judged by tests/adversarial/oracle.py; a failing finding that no class in
tests/adversarial/known.py explains fails the test (hypothesis then shrinks it to a small command).
Known findings are counted and printed, never skipped: each class has strict-xfail rows in
test_adversarial_regressions.py.  The run must also have exercised what it claims to: every command,
scheme and stage, (nearly) every operator of the tables, accepted and marked replies.
Sizes: MARKD_ADVERSARIAL_EXAMPLES (in-process, 4,000) and MARKD_ADVERSARIAL_WIRE (300).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.adversarial import grammar, schemas, secrets, sweep, tables
from tests.adversarial.check import Finding, findings
from tests.adversarial.coverage import TABLES, Tally
from tests.adversarial.drive import Outcome, Wire, in_process
from tests.adversarial.grammar import Case
from tests.adversarial.render import to_json

EXAMPLES = int(os.environ.get("MARKD_ADVERSARIAL_EXAMPLES", "4000"))
WIRE_EXAMPLES = int(os.environ.get("MARKD_ADVERSARIAL_WIRE", "300"))
BOUNDED = dict(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


def new_findings(case: Case, found: list[Finding]) -> str:
    return "\n".join(f"{f.signature}: {f.detail}" for f in found if f.failing and not f.known) and (
        f"new finding(s) for {case.describe()}:\n"
        + "\n".join(f"  {f.signature}: {f.detail[:300]}" for f in found if f.failing and not f.known)
        + f"\ncommand: {to_json(case.command)}\nduplicates: {case.duplicates}")


def test_generator_in_process() -> None:
    tally = Tally()

    @settings(max_examples=EXAMPLES, **BOUNDED)
    @given(grammar.cases())
    def check(case: Case) -> None:
        outcome = in_process(case.raw)
        found = findings(case, outcome)
        tally.add(case, outcome, found)
        message = new_findings(case, found)
        assert not message, message

    check()
    print("\nadversarial generator, in-process:\n" + tally.summary())
    if EXAMPLES >= 2000:  # what a bounded run must have exercised (smaller runs by hand are not held to it)
        assert set(tally.commands) == set(grammar.COMMANDS)
        assert set(tally.schemes) == set(schemas.SCHEMES)
        assert not tally.missing("stages"), tally.missing("stages")
        for table in ("query operators", "update operators"):
            assert not tally.missing(table), (table, tally.missing(table))
        # The rest are swept row by row in test_sweep_every_table_row; the random draws still reach most.
        for table in ("expressions", "accumulators", "window operators"):
            assert len(tally.missing(table)) <= len(TABLES[table]) * 2 // 5, (table, tally.missing(table))
        assert tally.accepted >= EXAMPLES // 10 and tally.marked >= EXAMPLES // 40, tally.summary()


def test_sweep_every_table_row() -> None:
    """Every expression, accumulator, window, query, update and search operator, once per scheme."""
    tally = Tally()
    failures = []
    for case in sweep.all_cases():
        outcome = in_process(case.raw)
        found = findings(case, outcome)
        tally.add(case, outcome, found)
        message = new_findings(case, found)
        if message:
            failures.append(message)
    print("\nadversarial sweep:\n" + tally.summary())
    assert failures == [], "\n\n".join(failures[:5])
    swept = {name for name, shape in tables.EXPRESSIONS.items() if grammar.has_marker(shape, tables.X)}
    swept |= set(tables.VALUE_ACCUMULATORS) | set(tables.WINDOW_VALUE_OPERATORS)
    swept |= {name for name, shape in tables.QUERY_OPERATORS.items() if grammar.has_marker(shape, tables.V)}
    swept |= {name.split("-")[0] for name, shape in tables.UPDATE_OPERATORS.items()
              if grammar.has_marker(shape, tables.V)}
    assert swept - tally.names == set()


def test_generator_over_the_wire(markd: Any) -> None:
    """The same oracle over a real socket; the replies are byte for byte the in-process ones; no log holds a secret."""
    tally = Tally()
    wire = Wire(markd.port)
    differences: list[str] = []

    @settings(max_examples=WIRE_EXAMPLES, **BOUNDED)
    @given(grammar.cases())
    def check(case: Case) -> None:
        remote = wire.send(case.raw)
        local = in_process(case.raw)
        found = findings(case, Outcome(remote.reply, remote.crash, local.collapsed))
        tally.add(case, remote, found)
        if remote.reply != local.reply:
            differences.append(case.describe())
        message = new_findings(case, found)
        assert not message, message

    try:
        check()
    finally:
        wire.close()
    print("\nadversarial generator, over the wire:\n" + tally.summary())
    assert differences == [], f"replies over the wire differ from in-process ones: {differences[:5]}"
    assert secrets.STRING_MARK not in markd.log_text(), "a secret reached markd's log"
    assert tally.accepted > 0
