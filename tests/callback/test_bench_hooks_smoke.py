"""benchmarks/bench_hooks.py is a script, not a test; this only keeps it from rotting: a
few thousand steps, one round, a budget nothing can miss; it must print each
integration's row and exit 0."""

from __future__ import annotations

import pytest
from support.bench import assert_rows, run_bench
from support.env import base_env

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_hooks_runs(tmp_path) -> None:
    out = run_bench("bench_hooks.py", "--steps", "3000", "--rounds", "1", "--budget", "100000", env=base_env(tmp_path / "unused"))
    assert_rows(out, "Controller.step (a plain loop)", "HF / Forgather on_step_end", "Lightning on_train_batch_end", "PASS")
