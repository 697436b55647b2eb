"""The ``forgather`` command line, run as a subprocess exactly as a user runs it, or in
this process for a test of what it prints and returns."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import FORGATHER, REPO


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120.0, input: str | None = None, cwd: Path | None = None) -> CliResult:
    """Run ``forgather ARGS`` (the installed console script) in ``cwd`` (the repository
    unless given) and collect its result."""
    proc = subprocess.run([*FORGATHER, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input, cwd=cwd or REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def run_cli_here(*args: str, env: Mapping[str, str] | None = None) -> CliResult:
    """``forgather ARGS`` in this process (``cli.main.run``, what the console script runs)
    with ``env`` added to the environment, its stdout and stderr its own: the same code
    without an interpreter's start (a fifth of a second each, more on a busy machine).
    For what the CLI prints and returns; a test of how it starts (imports, signals, a
    terminal) runs it as a subprocess. The environment and the logging it configures are
    put back afterwards."""
    from forgather_control.cli.main import run

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = {k: os.environ.get(k) for k in env or {}}
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(list(args))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        root.handlers[:] = handlers
        root.setLevel(level)
    return CliResult(code, out.getvalue(), err.getvalue())
