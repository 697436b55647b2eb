"""benchmarks/bench_agreement.py is a script, not a test; this only keeps it from rotting:
2 ranks, a few steps a block and three commands, budgets not enforced; it must print the
control share, the reference and the command latency rows and exit 0."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env
from support.paths import REPO

pytestmark = pytest.mark.slow  # a benchmark script starting torchrun (support.tiers)


def test_bench_agreement_runs(tmp_path) -> None:
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_agreement.py"), "--smoke"]
    p = subprocess.run(argv, env=base_env(tmp_path / "unused", TMPDIR=str(tmp_path)), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    for row in (
        "2 ranks, 10ms step: callback added / step",
        "2 ranks, 10ms step: reference (2 broadcasts/step)",
        "2 ranks: command accepted -> applied on all ranks (median)",
        "2 ranks: command accepted -> applied on all ranks (max)",
    ):
        assert row in p.stdout, p.stdout
    assert "SMOKE: budgets not enforced" in p.stdout and "no data" not in p.stdout
