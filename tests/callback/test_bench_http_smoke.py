"""benchmarks/bench_http.py is a script, not a test; this only keeps it from rotting: a
few requests a measure, one round, a budget nothing can miss; it must print every row
(ours, the bare ASGI app, the reference) and exit 0."""

from __future__ import annotations

import pytest
from support.bench import assert_rows, run_bench
from support.env import base_env

pytestmark = pytest.mark.slow  # a benchmark script (support.tiers)


def test_bench_http_runs(tmp_path) -> None:
    out = run_bench("bench_http.py", "--requests", "60", "--rounds", "1", "--budget", "1000", env=base_env(tmp_path / "unused"))
    assert_rows(
        out,
        "ours health kept-alive",
        "ours status new connection",
        "ours receipt kept-alive",
        "bare health kept-alive",
        "reference status kept-alive",
        "x the reference",
        "PASS",
    )
