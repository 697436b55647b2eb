"""benchmarks/bench_cli.py is a script, not a test; this only keeps it from rotting:
a tiny run with a budget nothing can miss must print its tables and exit 0 (the
operations at one size only: 20 folders are all recent past, so a second size would
not be the same recent past behind a longer history)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env
from support.paths import REPO

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_cli_runs(tmp_path) -> None:
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_cli.py"), "--jobs", "20", "--ops-at", "0", "--repeat", "1", "--budget", "100"],
        env=base_env(tmp_path / "unused"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "list --json (21 folders)" in p.stdout and "PASS" in p.stdout
    assert "python -c pass (baseline)" in p.stdout
    assert "first list (settles the history)" in p.stdout and "21 folders" in p.stdout  # the operations, counted
