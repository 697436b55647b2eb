"""A worker whose launcher is gone ends itself, and rank 0 leaves the job's final state
behind: the watch itself, on a real process standing in for the launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from support.processes import Procs, gone
from support.records import identity
from support.waiting import wait_for

from forgather_control.callback.watchdog import EXIT_ORPHANED, ORPHAN_SIGNAL, LauncherWatch, launcher_from_env, record_orphaned
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


PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, sys.argv[1], *sys.argv[2:]])
print("worker", child.pid, flush=True)
child.wait()
"""

WORKER = """
import os, sys, threading, time
from forgather_control.callback.watchdog import watch_launcher
from forgather_control.core.env import ENV_JOB_ID, ENV_JOBS_DIR, ENV_LAUNCHER_PID

jobs, how = sys.argv[1:3]
os.environ.update({ENV_JOB_ID: "orphan", ENV_JOBS_DIR: jobs, ENV_LAUNCHER_PID: str(os.getppid())})
watch_launcher(rank=1)
print("threads", len(os.listdir("/proc/self/task")), flush=True)

def training():
    if how == "sleeps":
        time.sleep(3600)
    i = 0
    while True:
        sum(range(1000))
        i += 1
        if i % 2000 == 0:
            print("tick", i, flush=True)

training()
"""


@pytest.mark.parametrize("how", ["sleeps", "computes"])
def test_a_rank_other_than_0_ends_on_its_parents_death_signal_without_a_thread(procs: Procs, tmp_path: Path, how: str) -> None:
    """Issue 24: no control thread on a rank other than 0. Its parent (a stand-in for
    torchrun, which dies with the launcher) is killed with SIGKILL: the kernel's signal
    makes the rank record why and end, whether its main thread sleeps or computes."""
    (tmp_path / "parent.py").write_text(PARENT)
    (tmp_path / "worker.py").write_text(WORKER)
    paths = JobPaths(tmp_path / "jobs", "orphan").create()
    parent = procs.start([sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "worker.py"), str(paths.root), how])
    wait_for(lambda: "threads" in parent.output(), timeout=60, what="the worker to arm its watch")
    worker = int(parent.output().split("worker ")[1].split()[0])
    assert "threads 1\n" in parent.output(), parent.output()  # its main thread only
    os.kill(parent.pid, signal.SIGKILL)
    wait_for(lambda: gone(worker), timeout=30, what="the orphaned rank to end")
    [failure] = [p for p in (paths.dir / "failures").iterdir()]
    record = read_json(failure)
    assert record["type"] == "LauncherGone" and f"pid {parent.pid}" in record["message"], record


def test_the_death_signal_while_the_parent_lives_ends_nobody(procs: Procs, tmp_path: Path) -> None:
    """The kernel also signals a child whose parent *thread* ended (the parent may live
    on): the look then finds the parent still running, and the rank goes on."""
    (tmp_path / "parent.py").write_text(PARENT)
    (tmp_path / "worker.py").write_text(WORKER)
    paths = JobPaths(tmp_path / "jobs", "orphan").create()
    parent = procs.start([sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "worker.py"), str(paths.root), "computes"])
    wait_for(lambda: "threads" in parent.output(), timeout=60, what="the worker to arm its watch")
    worker = psutil.Process(int(parent.output().split("worker ")[1].split()[0]))
    for _ in range(3):
        os.kill(worker.pid, ORPHAN_SIGNAL)
    ticks = parent.output().count("tick")
    wait_for(lambda: parent.output().count("tick") >= ticks + 2, timeout=60, what="the worker to run on past its handler")
    assert psutil.Process(parent.pid).status() != psutil.STATUS_ZOMBIE  # the parent has not reaped it
    assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
    assert not (paths.dir / "failures").exists() or not list((paths.dir / "failures").iterdir())
