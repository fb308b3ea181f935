"""Sample markd with py-spy while a workload runs, and summarise where its time goes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ProfileSummary:
    workload: str
    samples: int
    top_self: list[tuple[str, float]]  # (function, share of samples where it is the innermost frame)
    top_inclusive: list[tuple[str, float]]  # (function, share of samples where it is on the stack)
    raw_path: str


def py_spy_path() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def start_py_spy(pid: int, seconds: float, output: Path, rate: int = 250,
                 native: bool = True) -> subprocess.Popen[bytes] | None:
    """py-spy on `pid`; with `native`, C frames too (libc write, bson's C codec), at the price of pausing
    the process for each sample (py-spy cannot read native stacks without stopping it)."""
    executable = py_spy_path()
    if executable is None:
        return None
    command = [executable, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
               "--rate", str(rate), "--format", "raw", "--nolineno", "--output", str(output)]
    command += ["--native"] if native else ["--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    """'decode (markd/bsonvalues.py)' -> 'markd/bsonvalues.py:decode'."""
    if " (" in frame and frame.endswith(")"):
        function, location = frame[:-1].split(" (", 1)
        return f"{location}:{function}"
    return frame


def summarise(raw_path: Path, workload: str, top: int = 15) -> ProfileSummary:
    self_counts: Counter[str] = Counter()
    inclusive_counts: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive_counts[frame] += count
    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        # Frames on (nearly) every stack only say "the event loop is running": leave them out.
        ranked = [(name, count / total) for name, count in counter.most_common() if count < 0.97 * total]
        return ranked[:top]

    if not total:
        return ProfileSummary(workload, 0, [], [], str(raw_path))
    return ProfileSummary(workload, total, shares(self_counts), shares(inclusive_counts), str(raw_path))


def format_summary(summary: ProfileSummary) -> str:
    lines = [f"profile of markd under workload {summary.workload}: {summary.samples} samples "
             "(py-spy --native, idle excluded)",
             "  self (innermost frame):"]
    lines += [f"    {share * 100:5.1f}%  {name}" for name, share in summary.top_self]
    lines.append("  inclusive (on the stack):")
    lines += [f"    {share * 100:5.1f}%  {name}" for name, share in summary.top_inclusive]
    return "\n".join(lines)
