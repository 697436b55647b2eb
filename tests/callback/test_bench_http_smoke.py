"""benchmarks/bench_http.py is a script, not a test; this only keeps it from rotting: a
few requests a measure, one round, a budget nothing can miss; it must print every row
(ours, the bare ASGI app, the reference) and exit 0."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env
from support.paths import REPO

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_http_runs(tmp_path) -> None:
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_http.py"), "--requests", "60", "--rounds", "1", "--budget", "1000"]
    p = subprocess.run(argv, env=base_env(tmp_path / "unused"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for row in ("ours health kept-alive", "ours status new connection", "ours receipt kept-alive", "bare health kept-alive", "reference status kept-alive"):
        assert row in p.stdout, p.stdout
    assert "x the reference" in p.stdout and "PASS" in p.stdout
