"""benchmarks/bench_step.py is a script, not a test; this only keeps it from rotting: a
few thousand steps, one round, budgets nothing can miss, must print its rows (the knobs'
among them, issue 22) and exit 0."""

from __future__ import annotations

import pytest
from support.bench import assert_rows, run_bench
from support.env import base_env

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_step_runs(tmp_path) -> None:
    out = run_bench("bench_step.py", "--steps", "2000", "--repeats", "1", "--budget-scale", "1000", env=base_env(tmp_path / "unused"))
    assert_rows(
        out,
        "empty loop (baseline)",
        "Controller.step added, no command",
        "with guards declared, none firing",
        "with 4 knobs declared, none pending",
        "x the step without)",
        "PASS",
    )
