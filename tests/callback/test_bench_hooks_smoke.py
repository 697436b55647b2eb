"""benchmarks/bench_hooks.py is a script, not a test; this only keeps it from rotting: a
few thousand steps, one round, a budget nothing can miss; it must print each
integration's row and exit 0."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env
from support.paths import REPO

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_hooks_runs(tmp_path) -> None:
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_hooks.py"), "--steps", "3000", "--rounds", "1", "--budget", "100000"]
    p = subprocess.run(argv, env=base_env(tmp_path / "unused"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for row in ("Controller.step (a plain loop)", "HF / Forgather on_step_end", "Lightning on_train_batch_end"):
        assert row in p.stdout, p.stdout
    assert "PASS" in p.stdout
