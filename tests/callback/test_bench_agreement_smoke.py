"""benchmarks/bench_agreement.py is a script, not a test; this only keeps it from rotting:
2 ranks, a few steps a block and three commands, budgets not enforced; it must print the
control share, the reference and the command latency rows and exit 0."""

from __future__ import annotations

import pytest
from support.bench import assert_rows, run_bench
from support.env import base_env

pytestmark = pytest.mark.slow  # a benchmark script starting torchrun (support.tiers)


def test_bench_agreement_runs(tmp_path) -> None:
    out = run_bench("bench_agreement.py", "--smoke", env=base_env(tmp_path / "unused", TMPDIR=str(tmp_path)), timeout=600)
    assert_rows(
        out,
        "2 ranks, 10ms step: callback added / step",
        "2 ranks, 10ms step: reference (2 broadcasts/step)",
        "2 ranks: command accepted -> applied on all ranks (median)",
        "2 ranks: command accepted -> applied on all ranks (max)",
        "SMOKE: budgets not enforced",
    )
    assert "no data" not in out
