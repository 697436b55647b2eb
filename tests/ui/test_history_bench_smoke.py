"""benchmarks/bench_history.py is a script, not a test; this only keeps it from rotting: a
small history (2 series of 20,000 points), one timed round, a budget nothing can miss,
must print its three rows and exit 0."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env
from support.paths import REPO

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_history_runs(tmp_path) -> None:
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_history.py"), "--points", "20000", "--series", "2", "--repeat", "1", "--budget", "1000"]
    p = subprocess.run(argv, env=base_env(tmp_path / "unused"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "read_history (baseline)" in p.stdout and "GET .../metrics (the whole view)" in p.stdout and "GET .../metrics?since=19999" in p.stdout
    assert "PASS" in p.stdout
