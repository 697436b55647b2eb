"""What status says is true: eval metrics stay until the next eval, a dead job has no
speed or ETA, a heartbeat from the future is clock skew, the reason a job failed is
shown (the first rank that raised), the watch line of an ended job has no ETA, and
``~/.forgather`` is private under any umask."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from support.records import identity, typed

from forgather_control.callback import Controller
from forgather_control.cli.output import progress_line
from forgather_control.client import find_job
from forgather_control.core import JobPaths, Liveness, judge, write_json_atomic
from forgather_control.core.failures import read_failures, record_failure, root_cause
from forgather_control.core.records import Status, encode

CLI = [sys.executable, "-m", "forgather_control.cli.main"]


def test_eval_metrics_stay_in_the_status_until_the_next_eval(tmp_path: Path) -> None:
    with Controller(job_id="evals", jobs_dir=tmp_path, enable_http=False, signals=(), max_steps=10) as ctl:
        ctl.step(1, {"loss": 1.0})
        ctl.evaluation_done({"eval_loss": 0.5})
        ctl.step(2, {"loss": 0.9})  # the loop's per-step metrics replace the last step's, not the eval's
        metrics = ctl.status().metrics
        assert metrics == {"loss": 0.9, "eval_loss": 0.5}
        ctl.evaluation_done({"eval_loss": 0.4})
        assert ctl.status().metrics["eval_loss"] == 0.4


def test_a_dead_job_has_no_speed_and_no_eta(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "gone").create()
    ident = {**identity(), "pid_start_time": 1.0}  # our pid, another start time: it died
    write_json_atomic(paths.status, {"job_id": "gone", "state": "running", "step": 5, "max_steps": 10, "steps_per_second": 3.0, "eta_seconds": 2.0, **ident})
    details = find_job(tmp_path, "gone").details()
    assert details.state == "dead" and details.steps_per_second is None and details.eta_seconds is None
    proc = subprocess.run([*CLI, "control", "status", "gone", "--jobs-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "dead" in proc.stdout and "steps/s" not in proc.stdout and "eta" not in proc.stdout, proc.stdout


def test_a_heartbeat_from_the_future_is_clock_skew_not_alive_forever() -> None:
    other = {"host": "elsewhere", "boot_id": "b", "pid": 7, "pid_start_time": 1.0}
    now = time.time()
    verdict, evidence = judge(endpoint=None, status=typed(Status, {**other, "state": "running", "heartbeat_at": now + 3600}), squeue=None, now=now)
    assert verdict == Liveness.STALE and "future" in evidence and "clock" in evidence
    verdict, _ = judge(endpoint=None, status=typed(Status, {**other, "state": "running", "heartbeat_at": now - 5}), squeue=None, now=now)
    assert verdict == Liveness.UNKNOWN  # a fresh heartbeat from another host: cannot tell


def test_the_root_cause_is_the_first_rank_that_raised(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "crashed").create()
    try:
        raise ValueError("bad batch at row 17")
    except ValueError as raised:
        record_failure(paths, rank=1, run=0, exc=raised)
    first = read_failures(paths)[0]
    # rank 0 then loses its peer in the next collective, a little later
    later = dataclasses.replace(first, rank=0, type="RuntimeError", message="Connection closed by peer", at=first.at + 0.5)
    write_json_atomic(paths.failures / "run-0-rank-0.json", encode(later.as_record()))
    try:
        raise KeyError("another run")
    except KeyError as raised:
        record_failure(paths, rank=3, run=1, exc=raised)
    failures = read_failures(paths, run=0)
    assert [f.rank for f in failures] == [1, 0]
    cause = root_cause(paths, run=0)
    assert cause.type == "ValueError" and cause.message == "bad batch at row 17"
    assert any("bad batch at row 17" in line for line in cause.traceback)
    write_json_atomic(paths.job, {"job_id": "crashed", "state": "failed", "exit_code": 1, "restarts": 0})
    write_json_atomic(
        paths.status,
        {"job_id": "crashed", "state": "failed", "restarts": 0, "error": "RuntimeError: Connection closed by peer", **identity(999_999_999)},
    )
    proc = subprocess.run([*CLI, "control", "status", "crashed", "--jobs-dir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=60)
    d = json.loads(proc.stdout)
    assert d["exit_code"] == 1 and d["failure"]["rank"] == 1 and d["failure"]["type"] == "ValueError" and d["error"]
    human = subprocess.run([*CLI, "control", "status", "crashed", "--jobs-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "rank 1" in human.stdout and "ValueError: bad batch at row 17" in human.stdout and "exit code" in human.stdout


def test_the_watch_line_of_an_ended_job_has_no_eta() -> None:
    running = progress_line(
        "j", typed(Status, {"state": "running", "step": 5, "max_steps": 10, "steps_per_second": 2.0, "eta_seconds": 2.5, "metrics": {"loss": 0.5}})
    )
    assert running == "j  running  step 5/10  2.0 steps/s  ETA 2s  loss 0.5"
    stopped = progress_line("j", typed(Status, {"state": "stopped", "step": 7, "max_steps": 10, "steps_per_second": 2.0, "eta_seconds": 1.5}))
    assert stopped == "j  stopped  step 7/10"


def test_the_default_home_is_private_under_any_umask(tmp_path: Path) -> None:
    code = "import os; os.umask(0); from forgather_control.client import JobPaths, resolve_jobs_dir; JobPaths(resolve_jobs_dir(), 'j').create()"
    env = {k: v for k, v in os.environ.items() if k != "FORGATHER_JOBS_DIR"}
    env["HOME"] = str(tmp_path)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    for folder in (tmp_path / ".forgather", tmp_path / ".forgather" / "jobs", tmp_path / ".forgather" / "jobs" / "j"):
        assert oct(folder.stat().st_mode & 0o777) == "0o700", folder


def test_watch_into_a_pipe_prints_plain_lines_and_ends_with_the_job(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "piped").create()
    write_json_atomic(paths.status, {"job_id": "piped", "state": "stopped", "step": 3, "max_steps": 10, "eta_seconds": 4.0, **identity(999_999_999)})
    proc = subprocess.run([*CLI, "control", "status", "piped", "--watch", "--jobs-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["piped  stopped  step 3/10", "job piped stopped at step 3"]


def test_launch_m_finds_a_package_in_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "train.py").write_text("print('trained')\n")
    env = {**os.environ, "FORGATHER_JOBS_DIR": str(tmp_path / "jobs")}
    # the console script, as a user runs it: unlike `python -m`, it does not put the
    # current folder on sys.path by itself
    forgather = str(Path(sys.executable).with_name("forgather"))
    proc = subprocess.run(
        [forgather, "launch", "--dry-run", "--job-id", "m1", "-m", "mypkg.train"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "-m mypkg.train" in proc.stdout
    missing = subprocess.run([forgather, "launch", "--dry-run", "-m", "nopkg.train"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert missing.returncode == 2 and str(tmp_path) in missing.stderr
