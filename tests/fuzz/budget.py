"""How many examples the fuzzers and property tests try in a pytest run.

The numbers in the tests are CI's: enough to exercise every strategy on every run (CI derandomizes, so
a run repeats the same examples), small enough that the suite stays quick on a loaded machine. For a
deeper run without editing anything, scale them all: `MARKD_FUZZ_SCALE=20 pytest tests/test_fuzz_*.py`;
for the long, finding-grouping run, `python -m tests.fuzz.run_long --all` (tests/fuzz/README.md).
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("MARKD_FUZZ_SCALE", "1"))


def examples(ci_size: int) -> int:
    """`ci_size`, scaled by MARKD_FUZZ_SCALE (at least one example)."""
    return max(1, round(ci_size * SCALE))
