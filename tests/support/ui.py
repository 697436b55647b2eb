"""The web page's tests: its server in this process, Debian's Chromium driven by
Playwright, and job folders written as rank 0 and the launcher write them.

- ``ui_server(jobs_dir)``: a :class:`forgather_control.ui.UiServer` on a free loopback port;
- ``browser()``: a headless Chromium (``/usr/bin/chromium``), no download, no sandbox as root;
- ``write_job``/``history``: a job folder in any state, with a metric history;
- ``rank_log``: a rank's log in it, written as the launcher writes it;
- ``screenshot_dir()``: ``docs/screenshots`` when ``FORGATHER_UPDATE_SCREENSHOTS=1``, else a
  temp folder (a test run leaves the repository as it was).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.ui import UiConfig, UiServer

from .paths import REPO
from .records import identity

CHROMIUM = os.environ.get("FORGATHER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "docs" / "screenshots"


@contextlib.contextmanager
def ui_server(jobs_dir: Path, **options: Any) -> Iterator[UiServer]:
    server = UiServer(UiConfig(jobs_dir=jobs_dir, port=0, **options))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def require_chromium() -> None:
    """Skip the test where there is no Chromium; under CI, fail it (CI installs it)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")


@contextlib.contextmanager
def watched_page(chromium: Any, *, width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A page in a fresh context of ``chromium`` whose script errors are kept in
    ``page.errors`` (a test ends asserting there are none)."""
    ctx = chromium.new_context(viewport={"width": width, "height": height})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    try:
        yield page
    finally:
        ctx.close()


@contextlib.contextmanager
def browser(*, extra_args: list[str] | None = None) -> Iterator[Any]:
    """A headless Chromium; the test is skipped where there is none (CI installs it)."""
    require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *(extra_args or ())], headless=True)
        try:
            yield b
        finally:
            b.close()


def screenshot_dir() -> Path:
    if os.environ.get("FORGATHER_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return Path(tempfile.mkdtemp(prefix="forgather-screenshots-"))


def history(
    steps: int, *, every: int = 1, eval_every: int = 0, seed: int = 0, start_loss: float = 2.4, floor: float = 0.35, lr: float = 3e-4
) -> dict[str, Any]:
    """A metric history in the shape rank 0 writes: a loss that falls with noise, eval
    loss every ``eval_every`` steps, a warm-up and cosine learning rate, speed, grad norm."""
    rng = random.Random(seed)
    t0 = time.time() - steps / 8.0
    names = ("loss", "learning_rate", "grad_norm", "steps_per_second")
    series: dict[str, dict[str, list]] = {n: {"step": [], "time": [], "value": []} for n in (*names, *(("eval_loss",) if eval_every else ()))}
    warm = max(1, steps // 20)
    for step in range(every, steps + 1, every):
        frac = step / steps
        loss = floor + (start_loss - floor) * math.exp(-4.0 * frac) + rng.gauss(0, 0.04) * (1.2 - frac)
        rate = lr * min(1.0, step / warm) * (0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, (step - warm) / (steps - warm))))))
        values = {
            "loss": loss,
            "learning_rate": rate,
            "grad_norm": 0.6 + 1.8 * math.exp(-3 * frac) + abs(rng.gauss(0, 0.15)),
            "steps_per_second": 8.0 + rng.gauss(0, 0.25),
        }
        for name, value in values.items():
            s = series[name]
            s["step"].append(step), s["time"].append(t0 + step / 8.0), s["value"].append(round(value, 6))
        if eval_every and step % eval_every == 0:
            s = series["eval_loss"]
            (
                s["step"].append(step),
                s["time"].append(t0 + step / 8.0),
                s["value"].append(round(floor * 1.08 + (start_loss - floor) * 1.02 * math.exp(-3.6 * frac), 6)),
            )
    return series


def _write(path: Path, data: Any) -> None:
    """A record as rank 0 writes it (0600, replaced whole), without the fsync: a test
    writes a thousand of them."""
    tmp = path.with_name(f".tmp-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def write_job(
    root: Path,
    job_id: str,
    *,
    state: str = "running",
    step: int = 0,
    max_steps: int | None = None,
    alive: bool = False,
    host: str | None = None,
    restarts: int = 0,
    metrics: dict[str, Any] | None = None,
    series: dict[str, Any] | None = None,
    commands: list[dict[str, Any]] | None = None,
    failure: dict[str, Any] | None = None,
    ago: float = 60.0,
    **status: Any,
) -> JobPaths:
    """A job folder: job.json as the launcher writes it, status.json as rank 0 does, and
    metrics.json when ``series`` is given. ``alive``: the records name this test process
    (a live pid on this host), so the job is judged running; else a process that ended."""
    paths = JobPaths(root, job_id).create()
    now = time.time()
    me = identity()
    ident = dict(me) if alive else {**me, "pid": 2**22 - 7, "pid_start_time": 1.0}
    if host is not None:
        ident["host"] = host
    final = state in ("finished", "stopped", "aborted", "failed", "paused")
    _write(
        paths.job,
        {
            "job_id": job_id,
            "argv": ["train.py"],
            "host": ident["host"],
            "scheduler": {"type": "local"},
            "created_at": now - ago - 600,
            "started_at": now - ago - 600,
            "updated_at": now - ago,
            "restarts": restarts,
            "state": state if final else "running",
            **({"ended_at": now - ago, "exit_code": {"failed": 1, "paused": 76}.get(state, 0)} if final else {}),
        },
    )
    st: dict[str, Any] = {
        **ident,
        "job_id": job_id,
        "state": state,
        "step": step,
        "started_at": now - ago - 600,
        "updated_at": now - (0 if alive else ago),
        "heartbeat_at": now - (0 if alive else ago),
        "restarts": restarts,
        "world_size": 1,
        "metrics": metrics or {},
        "commands": commands or [],
        **status,
    }
    if max_steps is not None:
        st["max_steps"] = max_steps
    if final:
        st["ended_at"] = now - ago
    _write(paths.status, st)
    if series is not None:
        _write(paths.dir / "metrics.json", {"version": 1, "job_id": job_id, "series": series})
    if failure is not None:
        paths.failures.mkdir(exist_ok=True)
        _write(
            paths.failures / f"run-{restarts}-rank-{failure.get('rank', 0)}.json",
            {"run": restarts, "host": ident["host"], "pid": 4242, "at": now - ago, **failure},
        )
    return paths


@contextlib.contextmanager
def rank_log(job_dir: Path, rank: int, *, host: str = "node-a", run: int = 0) -> Iterator[Any]:
    """The rank's log in the job folder, open for appending as its node's launcher keeps
    it (core.logs.RankLog): ``.write(bytes)``."""
    from forgather_control.core.logs import RankLog

    logs = job_dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(logs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        log = RankLog(fd, rank, host=host, run=run)
        try:
            yield log
        finally:
            log.close()
    finally:
        os.close(fd)


def remove_jobs(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def write_starting_job(root: Path, job_id: str) -> JobPaths:
    """A job whose launcher (this test process) runs and whose rank 0 is not up yet: it
    shows ``starting`` and takes commands in its inbox."""
    paths = JobPaths(root, job_id).create()
    now = time.time()
    me = identity()
    write_json_atomic(
        paths.job, {"job_id": job_id, "argv": ["train.py"], "host": me["host"], "state": "running", "control": True, "restarts": 0, "started_at": now}
    )
    paths.nodes.mkdir(exist_ok=True)
    write_json_atomic(paths.node(0), {**me, "job_id": job_id, "node_rank": 0, "started_at": now, "heartbeat_at": now, "state": "running", "restarts": 0})
    return paths


def start_plain_loop(procs: Any, jobs_dir: Path, job_id: str, out: Path, *args: str) -> Any:
    """``examples/trainer_control/plain_loop.py`` in a process of its own (one rank)."""
    import sys

    from .env import base_env
    from .paths import EXAMPLES

    argv = [sys.executable, str(EXAMPLES / "plain_loop.py"), "--job-id", job_id, "--output-dir", str(out), "--step-time", "0.01", *args]
    return procs.start(argv, env=base_env(jobs_dir), name=job_id)


def wait_serving(jobs_dir: Path, job_id: str, proc: Any, *, min_step: int = 5, timeout: float = 120.0) -> None:
    """Until the loop's rank 0 serves HTTP and has reached ``min_step``."""
    from .records import read_record
    from .waiting import wait_for

    def ready() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{job_id} exited early ({proc.popen.returncode}):\n{proc.output()[-3000:]}")
        st = read_record(jobs_dir, job_id, "status.json")
        return (jobs_dir / job_id / "endpoint.json").exists() and st.get("state") == "running" and (st.get("step") or 0) >= min_step

    wait_for(ready, timeout=timeout, interval=0.1, what=f"{job_id} serving")
