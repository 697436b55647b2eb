"""Fixtures only; the helpers are in ``tests/support/``. Every test owns its jobs dir,
ports and processes.

- ``jobs_dir``: a fresh jobs directory, exported as FORGATHER_JOBS_DIR for the test.
- ``procs``: starts real subprocesses in their own session and, at teardown, kills each
  one's whole process tree and asserts none is left.
- ``cli``: runs the real ``forgather`` command line as a subprocess (in ``cwd=`` if given).
- ``wait_for``: ``support.waiting.wait_for``, for a test that takes it as a fixture.
- ``framework_py``: the python3.12 of a venv with the real Forgather framework and this
  checkout's package (``support.framework``; run its ``forgather`` with ``framework_env``).

A test not marked ``slow`` may not start torchrun, Ray, a SLURM job, a launcher or a
package build (``support.tiers``): it fails, naming the marker.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import CliResult, run_cli
from support.env import base_env
from support.framework import framework_python
from support.processes import Procs
from support.tiers import quick_tier, trainers_loaded
from support.waiting import wait_for as _wait_for

from forgather_control.core.env import ENV_OUTPUT_DIR

# A suite started in the background of a shell without job control (`pytest ... &`) runs
# with SIGINT ignored, and every child inherits it: a CLI under test would never see the
# Ctrl-C a test sends it. Python's own handler here makes the children start with SIGINT
# at its default (exec resets a caught signal), as from a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """The quick tier's guard, around the test's setup (module fixtures included), call
    and teardown."""
    if item.get_closest_marker("slow"):
        yield
        return
    with quick_tier(item.nodeid):
        yield


def _no_trainer_loaded(item: pytest.Item) -> Iterator[None]:
    """A quick test that loads a trainer framework into the process (in its setup or its
    call) fails, naming the marker."""
    if item.get_closest_marker("slow"):
        return (yield)
    before = trainers_loaded()
    result = yield
    loaded = trainers_loaded() - before
    if loaded:
        pytest.fail(f"{item.nodeid} loads {', '.join(sorted(loaded))} (a trainer framework) but is not marked slow: add @pytest.mark.slow", pytrace=False)
    return result


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_no_trainer_loaded)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_no_trainer_loaded)


@pytest.fixture(scope="session", autouse=True)
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test writes its checkpoints under pytest's temp root: that is the output
    directory of every job a test runs (a run resumes only from inside its own), for
    the launchers and ranks it starts too (they inherit the variable)."""
    root = tmp_path_factory.getbasetemp()
    before = os.environ.get(ENV_OUTPUT_DIR)
    os.environ[ENV_OUTPUT_DIR] = str(root)
    yield root
    if before is None:
        os.environ.pop(ENV_OUTPUT_DIR, None)
    else:
        os.environ[ENV_OUTPUT_DIR] = before


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "jobs"
    monkeypatch.setenv("FORGATHER_JOBS_DIR", str(d))
    return d


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    owner = Procs(tmp_path)
    yield owner
    left = owner.cleanup()
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def cli(jobs_dir: Path) -> Callable[..., CliResult]:
    env = base_env(jobs_dir)

    def _run(*args: str, timeout: float = 120.0, input: str | None = None, extra_env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
        return run_cli(*args, env={**env, **(extra_env or {})}, timeout=timeout, input=input, cwd=cwd)

    return _run


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return _wait_for


@pytest.fixture(scope="session")
def framework_py() -> Path:
    """Built once for all workers (a file lock), cached across runs; skips without Python
    3.12 (fails under CI=true). Only slow tests may use it: a build installs packages."""
    return framework_python()
