"""Running a benchmark script as its smoke test does: the script under ``benchmarks/``
with a few steps and a budget nothing can miss, its output read for its rows. A smoke
test keeps a script from rotting; it measures nothing."""

from __future__ import annotations

import subprocess
import sys

from .env import base_env
from .paths import REPO


def run_bench(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """``benchmarks/<script> ARGS`` run to its end; its stdout, once it exited 0."""
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args], env=env if env is not None else base_env(), capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode == 0, f"{script} exited {p.returncode}:\n{p.stdout}{p.stderr}"
    return p.stdout


def assert_rows(out: str, *rows: str) -> None:
    """Every one of ``rows`` is in the script's output ``out``."""
    missing = [row for row in rows if row not in out]
    assert not missing, f"rows missing {missing} in:\n{out}"
