"""benchmarks/bench_footprint.py is a script, not a test; this only keeps it from rotting:
its four two-rank jobs for a few steps, a status poll and an evaluation served, budgets
not enforced; it must print every row and exit 0, and leave no process behind."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env
from support.paths import REPO

pytestmark = pytest.mark.slow  # a benchmark script starting torchrun and a launcher (support.tiers)


def test_bench_footprint_runs(tmp_path) -> None:
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_footprint.py"), "--smoke"]
    p = subprocess.run(argv, env=base_env(tmp_path / "unused", TMPDIR=str(tmp_path)), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    for row in ("bare (torchrun, no control)", "import only (not budgeted)", "torchrun + Controller", "forgather launch"):
        assert sum(line.startswith(row) for line in p.stdout.splitlines()) == 2, p.stdout
    assert "threads control adds, forgather launch rank 1" in p.stdout and "SMOKE: budgets not enforced" in p.stdout
    assert list(tmp_path.glob("bench-footprint-*")) == []  # its folder removed: every job killed first
