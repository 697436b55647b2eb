"""The quick tier (``pytest -m "not slow"``) and what keeps it quick.

A test is ``slow`` when it starts torchrun, Ray, a SLURM job, a launcher (``forgather
launch``, other than ``--dry-run`` or ``--help``), a benchmark script (``benchmarks/*.py``:
their smoke runs keep them from rotting, which is not what one runs while working), builds
or installs packages, or runs a trainer framework (transformers, Lightning: 5-10 s of import a process before the first
step; these tests are the integrations, like torchrun's). While a test without the marker
runs (its fixtures included), ``subprocess.Popen`` refuses to start any of the processes
and fails the test, naming the marker it lacks, and a trainer framework it loads into the
test process fails it too; so the tiers cannot drift (a child process that imports one is
marked by hand). A single plain-loop process, the CLI, uvicorn in the test's own process
stay quick.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .paths import REPO

_FORGATHER = ("forgather", "forgather-control")
_SLURM_JOBS = ("sbatch", "srun", "salloc")
_BENCHMARKS = REPO / "benchmarks"
_PIP_BUILDS = ("install", "wheel", "download", "uninstall")


#: The trainer frameworks a quick test may not load (top-level package names).
TRAINER_PACKAGES = ("transformers", "lightning", "pytorch_lightning")


def trainers_loaded() -> frozenset[str]:
    """The trainer frameworks imported into this process so far."""
    return frozenset(p for p in TRAINER_PACKAGES if p in sys.modules)


def slow_reason(argv: str | bytes | Sequence[str | bytes | Path]) -> str | None:
    """What in ``argv`` makes a test slow, or None when it does not."""
    if isinstance(argv, (str, bytes)):
        argv = shlex.split(argv if isinstance(argv, str) else argv.decode(errors="replace"))
    args = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in argv]
    names = [Path(a).name for a in args]
    program = names[0] if names else ""
    module = args[args.index("-m") + 1] if "-m" in args[:-1] else ""
    if module == "torch.distributed.run" or program == "torchrun":
        return "torchrun"
    if program in _SLURM_JOBS:
        return f"a SLURM job ({program})"
    if (program == "ray" or module == "ray.scripts.scripts") and "start" in args:
        return "a Ray node (ray start)"
    if any(a.endswith(".py") and Path(a).resolve().parent == _BENCHMARKS for a in args[:2]):
        return "a benchmark script"
    if ((program in ("pip", "pip3") or module == "pip") and any(a in _PIP_BUILDS for a in args)) or module in ("build", "venv") or "setup.py" in names:
        return "a package build or install"
    sub = _forgather_subcommand(args, names)
    if sub and sub[0] == "launch" and not {"--dry-run", "--help", "-h"} & set(sub):
        return "a launcher (forgather launch)"
    return None


def _forgather_subcommand(args: list[str], names: list[str]) -> list[str] | None:
    """The words after the ``forgather`` program (its options before the subcommand skipped)."""
    if names and names[0] in _FORGATHER:
        rest = args[1:]
    elif "forgather_control.cli.main" in args:
        rest = args[args.index("forgather_control.cli.main") + 1 :]
    else:
        return None
    while rest and rest[0].startswith("-"):
        rest = rest[1:]
    return rest


@contextlib.contextmanager
def quick_tier(test: str) -> Iterator[None]:
    """While it lasts, starting anything slow fails ``test`` (a test not marked slow)."""
    real = subprocess.Popen

    class QuickTierPopen(real):  # type: ignore[misc, valid-type]
        def __init__(self, args, *more, **kw) -> None:
            reason = slow_reason(args)
            if reason:
                shown = args if isinstance(args, str) else " ".join(str(a) for a in args)
                pytest.fail(f"{test} starts {reason} ({shown[:200]}) but is not marked slow: add @pytest.mark.slow", pytrace=False)
            super().__init__(args, *more, **kw)

    subprocess.Popen = QuickTierPopen  # type: ignore[misc]
    try:
        yield
    finally:
        subprocess.Popen = real  # type: ignore[misc]
