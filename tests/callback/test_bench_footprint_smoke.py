"""benchmarks/bench_footprint.py is a script, not a test; this only keeps it from rotting:
its four two-rank jobs for a few steps, a status poll and an evaluation served, budgets
not enforced; it must print every row and exit 0, and leave no process behind."""

from __future__ import annotations

import pytest
from support.bench import assert_rows, run_bench
from support.env import base_env

pytestmark = pytest.mark.slow  # a benchmark script starting torchrun and a launcher (support.tiers)


def test_bench_footprint_runs(tmp_path) -> None:
    out = run_bench("bench_footprint.py", "--smoke", env=base_env(tmp_path / "unused", TMPDIR=str(tmp_path)), timeout=600)
    for row in ("bare (torchrun, no control)", "import only (not budgeted)", "torchrun + Controller", "forgather launch"):
        assert sum(line.startswith(row) for line in out.splitlines()) == 2, out  # a row a rank
    assert_rows(out, "threads control adds, forgather launch rank 1", "SMOKE: budgets not enforced")
    assert list(tmp_path.glob("bench-footprint-*")) == []  # its folder removed: every job killed first
