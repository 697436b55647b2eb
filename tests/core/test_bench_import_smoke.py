"""benchmarks/bench_import.py is a script, not a test; this only keeps it from rotting:
one timed round, no torch row and a time budget nothing can miss must print both trees'
rows and exit 0. The rule that holds at any speed still holds: the rank's import loads
no client module, and before the split it did (so the old tree really was the one run)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env
from support.paths import REPO

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)

BEFORE = "6a810b1"


def has_commit(rev: str) -> bool:
    return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{rev}^{{commit}}"], capture_output=True).returncode == 0


def test_bench_import_runs_on_both_trees(tmp_path) -> None:
    before = has_commit(BEFORE)  # a clone without the history measures this checkout only
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_import.py"), "--repeat", "1", "--torch-repeat", "0", "--margin", "100", "--memory-margin", "100"]
    p = subprocess.run([*argv, "--before", BEFORE] if before else [*argv, "--no-before"], env=base_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "python -c pass (interpreter start)" in p.stdout and "PASS" in p.stdout
    assert "import forgather_control.client" in p.stdout and "forgather control --help" in p.stdout
    if before:
        assert "the rank's import (import forgather_control.callback), after / before" in p.stdout
        assert "control.handle" in p.stdout, "the old tree's rank import did not load the old client: the before side ran other code"
