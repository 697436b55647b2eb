"""benchmarks/bench_ui.py is a script, not a test; this only keeps it from rotting: a
tiny run (20 jobs, one timed round) with budgets nothing can miss must print both
sides' rows and exit 0."""

from __future__ import annotations

import pytest
from support.bench import assert_rows, run_bench
from support.env import base_env
from support.ui import CHROMIUM, require_chromium

#: It drives Chromium: on the browser tests' worker, one Chromium at a time, and scheduled
#: with their group at the start of a run instead of last (tests/ui is collected last, and
#: a long test there ran alone at the end while the other worker had nothing left).
pytestmark = [pytest.mark.xdist_group("chromium"), pytest.mark.slow]  # a benchmark script (support.tiers)


def test_bench_ui_runs(tmp_path) -> None:
    require_chromium()
    out = run_bench(
        "bench_ui.py",
        "--jobs",
        "20",
        "--repeat",
        "1",
        "--page-budget",
        "1000",
        "--api-budget",
        "1000",
        env=base_env(tmp_path / "unused", FORGATHER_CHROMIUM=CHROMIUM),
    )
    assert_rows(
        out,
        "GET /api/jobs (1 job, baseline)",
        "GET /api/jobs (20 jobs)",
        "page: navigation to the last row (1 job, baseline)",
        "page: navigation to the last row (20 jobs)",
        "PASS",
    )
