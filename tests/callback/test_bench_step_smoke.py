"""benchmarks/bench_step.py is a script, not a test; this only keeps it from rotting: a
few thousand steps, one round, budgets nothing can miss, must print its rows (the knobs'
among them, issue 22) and exit 0."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env
from support.paths import REPO

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_step_runs(tmp_path) -> None:
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_step.py"), "--steps", "2000", "--repeats", "1", "--budget-scale", "1000"]
    p = subprocess.run(argv, env=base_env(tmp_path / "unused"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for row in ("empty loop (baseline)", "Controller.step added, no command", "with guards declared, none firing", "with 4 knobs declared, none pending"):
        assert row in p.stdout, p.stdout
    assert "x the step without)" in p.stdout and "PASS" in p.stdout
