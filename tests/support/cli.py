"""The ``forgather`` command line, run as a subprocess exactly as a user runs it."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from .paths import FORGATHER, REPO


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120.0, input: str | None = None) -> CliResult:
    """Run ``forgather ARGS`` (the installed console script) and collect its result."""
    proc = subprocess.run([*FORGATHER, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input, cwd=REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
