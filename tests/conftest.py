"""Shared fixtures. Every test owns its jobs dir, ports and processes.

- ``jobs_dir``: a fresh jobs directory, exported as FORGATHER_JOBS_DIR for the test.
- ``procs``: starts real subprocesses in their own session and, at teardown, kills each
  one's whole process tree and asserts none is left.
- ``cli``: runs the real ``forgather`` command line as a subprocess.
- ``wait_for``: waits on a condition, never on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "trainer_control"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_EXE = Path(sys.executable).with_name("forgather")
#: The ``forgather`` command line as a user runs it: the installed console script.
FORGATHER: list[str] = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "forgather_control.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_record(jobs_dir: Path, job_id: str, name: str) -> dict:
    """One of a job's JSON records, or {} while it is missing or being replaced."""
    try:
        return json.loads((jobs_dir / job_id / name).read_text())
    except (OSError, ValueError):
        return {}


def wait_for(cond: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(name="wait_for")
def _wait_for_fixture() -> Callable[..., Any]:
    return wait_for


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "jobs"
    monkeypatch.setenv("FORGATHER_JOBS_DIR", str(d))
    return d


def base_env(jobs_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FORGATHER_JOB_ID", None)
    for k in list(env):
        if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k)
    if jobs_dir is not None:
        env["FORGATHER_JOBS_DIR"] = str(jobs_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process {self.pid} did not exit within {timeout}s; output:\n{self.output()[-4000:]}") from None


class Procs:
    """Process owner for one test: start, and guarantee that nothing outlives it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Proc] = []
        self._tree: dict[int, set[int]] = {}

    def start(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, name: str | None = None) -> Proc:
        log = self.tmp_path / f"{name or Path(argv[1] if len(argv) > 1 else argv[0]).stem}-{len(self.started)}.log"
        fh = open(log, "wb")
        popen = subprocess.Popen(argv, env=env, cwd=cwd or REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        fh.close()
        p = Proc(popen, log)
        self.started.append(p)
        return p

    def descendants(self, proc: Proc) -> list[psutil.Process]:
        try:
            return psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def cleanup(self) -> list[str]:
        leftovers: list[str] = []
        for p in self.started:
            procs = []
            try:
                root = psutil.Process(p.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for q in procs:
                try:
                    q.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=10)
            try:
                p.popen.wait(5)
            except subprocess.TimeoutExpired:
                leftovers.append(f"pid {p.pid} did not die")
        return leftovers


@pytest.fixture
def procs(tmp_path: Path):
    owner = Procs(tmp_path)
    yield owner
    left = owner.cleanup()
    assert not left, left


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120.0, input: str | None = None) -> CliResult:
    """Run ``forgather ARGS`` exactly as a user would (the installed console script)."""
    proc = subprocess.run([*FORGATHER, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input, cwd=REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(jobs_dir: Path) -> Callable[..., CliResult]:
    env = base_env(jobs_dir)

    def _run(*args: str, timeout: float = 120.0, input: str | None = None, extra_env: dict[str, str] | None = None) -> CliResult:
        return run_cli(*args, env={**env, **(extra_env or {})}, timeout=timeout, input=input)

    return _run


def require_service(name: str, available: bool, why: str) -> None:
    """Skip locally when a service is missing; fail under CI, where it must be there."""
    if available:
        return
    msg = f"{name} is not available: {why}"
    if CI:
        pytest.fail(msg + " (CI=true: .ci/run must start it)")
    pytest.skip(msg)
