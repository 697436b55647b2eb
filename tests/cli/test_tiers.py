"""The quick tier's guard (support.tiers): what counts as slow, and that a test without
the ``slow`` marker (this one) cannot start it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.paths import FORGATHER, REPO
from support.tiers import slow_reason

PY = sys.executable


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        ([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py"], "torchrun"),
        (["/usr/bin/torchrun", "train.py"], "torchrun"),
        ([*FORGATHER, "launch", "--jobs-dir", "/j", "train.py"], "a launcher (forgather launch)"),
        ([*FORGATHER, "-v", "launch", "train.py"], "a launcher (forgather launch)"),
        ([PY, "-m", "forgather_control.cli.main", "launch", "train.py"], "a launcher (forgather launch)"),
        (["sbatch", "--parsable", "train.sbatch"], "a SLURM job (sbatch)"),
        (["/opt/ray/bin/ray", "start", "--head"], "a Ray node (ray start)"),
        ([PY, "-m", "pip", "install", "--no-deps", "x.whl"], "a package build or install"),
        ([PY, "-m", "venv", "/tmp/v"], "a package build or install"),
        ([PY, "-m", "build", "--wheel"], "a package build or install"),
        ("torchrun --standalone train.py", "torchrun"),
        ([PY, str(REPO / "benchmarks" / "bench_cli.py"), "--jobs", "20"], "a benchmark script"),
    ],
)
def test_what_is_slow(argv, reason: str) -> None:
    assert slow_reason(argv) == reason


@pytest.mark.parametrize(
    "argv",
    [
        [PY, "examples/trainer_control/plain_loop.py", "--job-id", "j"],
        [*FORGATHER, "launch", "--dry-run", "train.py"],
        [*FORGATHER, "launch", "--help"],
        [*FORGATHER, "control", "list", "--json"],
        [PY, "-m", "pip", "list"],
        ["scontrol", "show", "hostnames", "n[1-2]"],
        ["bash", "slurm/train.sbatch", "train.py"],
        [PY, "-c", "print('launch')", "launch"],
        [PY, "examples/benchmarks/train.py"],
    ],
)
def test_what_is_quick(argv) -> None:
    assert slow_reason(argv) is None


def test_a_quick_test_cannot_start_torchrun() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"torchrun .* but is not marked slow: add @pytest\.mark\.slow"):
        subprocess.run([PY, "-m", "torch.distributed.run", "--help"], capture_output=True, timeout=60)
    assert subprocess.run([PY, "-c", "pass"], timeout=60).returncode == 0  # anything else starts
