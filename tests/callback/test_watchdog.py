"""A worker whose launcher is gone ends itself, and rank 0 leaves the job's final state
behind: the watch itself, on a real process standing in for the launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
from support.records import identity

from forgather_control.callback.watchdog import EXIT_ORPHANED, LauncherWatch, launcher_from_env, record_orphaned
from forgather_control.client import find_job
from forgather_control.core import JobPaths, read_json, write_json_atomic


def test_the_launcher_named_in_the_environment() -> None:
    assert launcher_from_env({"FORGATHER_LAUNCHER_PID": "123:456.5"}) == (123, 456.5)
    assert launcher_from_env({"FORGATHER_LAUNCHER_PID": "123"}) == (123, None)
    assert launcher_from_env({"FORGATHER_LAUNCHER_PID": "x:1"}) is None and launcher_from_env({}) is None


def test_a_dead_launcher_ends_the_worker_after_rank0_records_why(tmp_path: Path, wait_for) -> None:
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        started = psutil.Process(launcher.pid).create_time()
        exits: list[int] = []
        reasons: list[str] = []
        watch = LauncherWatch((launcher.pid, started), interval=0.02, exit_process=exits.append, final_record=reasons.append).start()
        assert watch.gone() is None
        launcher.kill()
        launcher.wait()
        wait_for(lambda: exits, timeout=30, what="the watch to end the worker")
        assert exits == [EXIT_ORPHANED] and reasons == [f"the launcher (pid {launcher.pid}) is gone"]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_a_recycled_launcher_pid_counts_as_gone() -> None:
    me = identity()
    watch = LauncherWatch((os.getpid(), float(me["pid_start_time"]) - 1000.0))
    assert watch.gone() is not None and "launcher" in watch.gone()


def test_rank0_records_the_end_so_the_job_is_not_running_forever(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "orphan").create()
    write_json_atomic(paths.endpoint, {"job_id": "orphan", "url": None, "token": "t", **identity()})
    write_json_atomic(paths.status, {"job_id": "orphan", "state": "running", "step": 9, **identity()})
    record_orphaned(paths, "the launcher (pid 1) is gone")
    status = read_json(paths.status)
    assert status["state"] == "failed" and "launcher died" in status["error"] and status["step"] == 9
    assert not paths.endpoint.exists()
    info = find_job(tmp_path, "orphan")
    assert info.details().state == "failed" and "launcher died" in str(info.details().error)
    before = read_json(paths.status)
    # a second call must not rewrite a final record
    record_orphaned(paths, "again")
    assert read_json(paths.status) == before
