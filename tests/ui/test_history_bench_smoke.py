"""benchmarks/bench_history.py is a script, not a test; this only keeps it from rotting: a
small history (2 series of 20,000 points), one timed round, a budget nothing can miss,
must print its three rows and exit 0."""

from __future__ import annotations

import pytest
from support.bench import assert_rows, run_bench
from support.env import base_env

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_history_runs(tmp_path) -> None:
    out = run_bench("bench_history.py", "--points", "20000", "--series", "2", "--repeat", "1", "--budget", "1000", env=base_env(tmp_path / "unused"))
    assert_rows(out, "read_history (baseline)", "GET .../metrics (the whole view)", "GET .../metrics?since=19999", "PASS")
