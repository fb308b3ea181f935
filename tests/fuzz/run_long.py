"""The long fuzzing and soak run, by hand (see tests/fuzz/README.md).

    .venv/bin/python -m tests.fuzz.run_long --all              # everything, default sizes
    .venv/bin/python -m tests.fuzz.run_long --oracle 20000     # one part, a bigger budget
    .venv/bin/python -m tests.fuzz.run_long --long          # the 60 s soak, 1,000 connections

Unlike the CI tests, nothing stops at the first finding: every input is tried, findings are grouped
by signature (crash: exception type + innermost markd frame; oracle: the finding's first words) and
the smallest input of each group is printed.  Known findings (tests/fuzz/known.py, xfail tests) are
counted apart.  Exit status 1 when there is a new finding.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@dataclass
class Tally:
    name: str
    tried: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    findings: dict[str, tuple[int, str]] = field(default_factory=dict)  # signature -> (size, example)
    counts: Counter[str] = field(default_factory=Counter)
    known: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def finding(self, signature: str, example: str) -> None:
        self.counts[signature] += 1
        size = len(example)
        if signature not in self.findings or size < self.findings[signature][0]:
            self.findings[signature] = (size, example)

    def report(self) -> dict[str, Any]:
        return {
            "part": self.name, "inputs": self.tried, "seconds": round(self.seconds, 1),
            "totals": {"marked": sum(n for k, n in self.outcomes.items() if "marked" in k),
                       "refused": sum(n for k, n in self.outcomes.items() if "refused" in k)},
            "outcomes": dict(self.outcomes.most_common()), "known": dict(self.known),
            "new_findings": [{"signature": sig, "count": self.counts[sig], "smallest": example[:3000]}
                             for sig, (_, example) in sorted(self.findings.items())],
        }


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def run_wire(examples: int) -> Tally:
    from markd.wire import ProtocolError
    from tests.fuzz import frames
    from tests.fuzz.core import CrashFinding, handle_frame, known_crash

    tally = Tally("wire")

    @_settings(examples)
    @given(st.one_of(frames.mutated_frame(), frames.mutated_frame(fix_length=True), frames.random_frame()))
    def one(frame: bytes) -> None:
        tally.tried += 1
        try:
            reply = handle_frame(frame)
        except ProtocolError:
            tally.outcomes["closed (ProtocolError)"] += 1
            return
        except CrashFinding:
            finding = known_crash(frame)
            if finding:
                tally.known[finding] += 1
            else:
                tally.finding("InternalError reply", repr(frame))
            return
        except Exception as exc:
            tally.finding(f"{type(exc).__name__} escaped handle_frame", repr(frame) + "\n" + traceback.format_exc())
            return
        tally.outcomes["no reply" if reply is None else f"ok={reply.get('ok')} code={reply.get('code')}"] += 1

    started = time.monotonic()
    one()
    tally.seconds = time.monotonic() - started
    return tally


def run_analysis(examples: int) -> Tally:
    from markd import bsonvalues
    from markd.analysis import mark_command
    from markd.errors import CommandError
    from tests.fuzz.known import known_id, signature
    from tests.test_fuzz_analysis import garbage_command, mutated_case

    tally = Tally("analysis")

    @_settings(examples)
    @given(st.one_of(garbage_command(), mutated_case()))
    def one(command: dict[str, Any]) -> None:
        tally.tried += 1
        try:
            mark_command(bsonvalues.decode(bsonvalues.encode(command)))
            tally.outcomes["marked"] += 1
        except CommandError as exc:
            tally.outcomes[f"refused {exc.code}"] += 1
        except Exception as exc:
            finding = known_id(exc)
            if finding:
                tally.known[finding] += 1
            else:
                tally.finding("CRASH " + " ".join(signature(exc)), repr(command) + "\n" + traceback.format_exc())

    started = time.monotonic()
    one()
    tally.seconds = time.monotonic() - started
    return tally


def run_oracle(examples: int) -> list[Tally]:
    from tests.fuzz.inproc import mark
    from tests.fuzz.oracle import command_case, judge, known_trigger

    def part(flavour: str) -> Tally:
        tally = Tally(f"oracle-{flavour}")

        @_settings(examples)
        @given(command_case(flavour))
        def one(case: Any) -> None:
            tally.tried += 1
            reply = mark(case.command)
            outcome = "marked" if reply.get("ok") else f"refused {reply.get('code')}"
            tally.outcomes[f"{case.label} {outcome}"] += 1
            findings = judge(case, reply)
            if not findings:
                return
            known = known_trigger(case)
            if known:
                tally.known[known] += 1
                return
            head = re.sub(r"\(.*", "", findings[0])[:60]
            tally.finding(f"{case.label}: {head}", f"{findings[:3]}\ncommand={case.command!r}\nreply={reply!r}")

        started = time.monotonic()
        one()
        tally.seconds = time.monotonic() - started
        return tally

    return [part("csfle"), part("qe")]


def run_load(seconds: float, connections: int) -> dict[str, Any]:
    from tests.fuzz.core import known_crash
    from tests.fuzz.load import raise_fd_limit
    from tests.fuzz.load import run_load as drive
    from tests.support.process import MarkdProcess

    raise_fd_limit(connections * 2 + 256)
    workdir = Path(tempfile.mkdtemp(prefix="markd-soak-"))
    with MarkdProcess(workdir=workdir, args=["--logpath", str(workdir / "markd.log")]) as process:
        assert process.process is not None
        report = drive(process.port, process.process.pid, connections=connections, duration=seconds)
        alive = process.process.poll() is None
    unknown = [repr(f) for f in report.crash_frames if known_crash(f) is None]
    return {"part": "load", "summary": report.summary(), "alive": alive, "wrong_replies": report.errors[:10],
            "internal_errors": report.internal_errors, "unknown_crash_frames": unknown[:5],
            "fd": [report.fd_baseline, report.fd_peak, report.fd_end],
            "rss_kib": {"start": report.rss_start_kib, "warm": report.rss_warm_kib, "peak": report.rss_peak_kib,
                        "end": report.rss_end_kib, "every_5s": report.rss_samples}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every part with its default size")
    parser.add_argument("--wire", type=int, nargs="?", const=20000, help="wire frames [20000]")
    parser.add_argument("--analysis", type=int, nargs="?", const=10000, help="garbage/mutated commands [10000]")
    parser.add_argument("--oracle", type=int, nargs="?", const=10000, help="oracle cases per flavour [10000]")
    parser.add_argument("--load", type=float, nargs="?", const=60.0, help="soak seconds [60]")
    parser.add_argument("--long", action="store_true", help="the 60 s soak with 1,000 connections (= --load 60)")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.long:
        args.load = args.load or 60.0
    if args.all:
        args.wire = args.wire or 20000
        args.analysis = args.analysis or 10000
        args.oracle = args.oracle or 10000
        args.load = args.load or 60.0
    results: list[dict[str, Any]] = []
    new = 0

    def done(result: dict[str, Any]) -> None:
        """Print and save each part as it finishes (a long run is still worth something if stopped)."""
        results.append(result)
        print(json.dumps(result, indent=2, default=str), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))

    if args.wire:
        done(run_wire(args.wire).report())
    if args.analysis:
        done(run_analysis(args.analysis).report())
    if args.oracle:
        for tally in run_oracle(args.oracle):
            done(tally.report())
    new += sum(len(result["new_findings"]) for result in results)
    if args.load:
        load = run_load(args.load, args.connections)
        done(load)
        new += bool(load["wrong_replies"] or load["unknown_crash_frames"] or not load["alive"]
                    or load["fd"][2] > load["fd"][0])
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
