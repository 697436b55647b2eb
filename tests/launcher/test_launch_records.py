"""The launcher's records without torchrun: claiming a job id, restarts and the resume
checkpoint across runs, node heartbeats, and the final state."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from support.paths import FORGATHER
from support.records import identity, typed

from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.records import Status
from forgather_control.launcher import LaunchConfig, LaunchError, make_plan
from forgather_control.launcher.records import JobRecords, launcher_stop_key, read_previous, stopped_by_a_signal

SLURM = {
    "SLURM_JOB_ID": "900",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "n[1-2]",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "SLURM_NODEID": "0",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}


def plan(jobs: Path, env: dict | None = None, **options):
    options.setdefault("script", "train.py")
    return make_plan(LaunchConfig(**options), env or {}, python="python3", jobs_dir=str(jobs))


def start(jobs: Path, p, *, heartbeat: float = 10.0) -> JobRecords:
    paths = JobPaths(jobs, p.job_id)
    prev = read_previous(paths, p.placement, node_rank=p.node_rank)
    p = p.with_history(restarts=prev.restarts, resume_from=prev.resume_from)
    rec = JobRecords(paths, p, heartbeat_interval=heartbeat)
    rec.claim(prev)
    rec.start(prev, argv=["forgather", "launch", "train.py"], cwd="/work")
    return rec


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_records_of_a_run(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    rec = start(jobs, plan(jobs, job_id="j1", nproc_per_node="2"))
    job = read(jobs / "j1" / "job.json")
    assert job["state"] == "running" and job["scheduler"] == {"type": "local"} and job["restarts"] == 0
    assert job["argv"] == ["forgather", "launch", "train.py"] and job["cwd"] == "/work" and job["nproc_per_node"] == "2"
    assert job["command"][:3] == ["python3", "-m", "torch.distributed.run"]
    node = read(jobs / "j1" / "nodes" / "0.json")
    assert node["pid"] == os.getpid() and node["boot_id"] and node["pid_start_time"] and node["heartbeat_at"]
    assert oct((jobs / "j1").stat().st_mode & 0o777) == "0o700"
    rec.finish("failed", 1)
    job = read(jobs / "j1" / "job.json")
    assert (job["state"], job["exit_code"]) == ("failed", 1) and job["ended_at"]
    assert read(jobs / "j1" / "nodes" / "0.json")["exit_code"] == 1


def test_heartbeat_is_refreshed(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    rec = start(jobs, plan(jobs, job_id="hb"), heartbeat=0.05)
    first = read(jobs / "hb" / "nodes" / "0.json")["heartbeat_at"]
    deadline = time.monotonic() + 30
    while read(jobs / "hb" / "nodes" / "0.json")["heartbeat_at"] == first:
        assert time.monotonic() < deadline, "heartbeat never refreshed"
        time.sleep(0.02)
    rec.finish("finished", 0)


def test_final_state_comes_from_rank0_status(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    rec = start(jobs, plan(jobs, job_id="fs"))
    write_json_atomic(jobs / "fs" / "status.json", {"state": "aborted", "last_checkpoint": None})
    # an abort stays an abort when a rank then exits non-zero (a second signal ends it with 128+N)
    assert rec.outcome(0).state == "aborted" and rec.outcome(3).state == "aborted"
    write_json_atomic(jobs / "fs" / "status.json", {"state": "stopped"})
    assert rec.outcome(0).state == "stopped" and rec.outcome(3).state == "failed"
    # a user's stop carried out and recorded, then srun's teardown signal killed what was
    # left (another node's launcher had exited with the stop's code): stopped, not failed;
    # a stop the signal itself asked for, or none recorded, stays a failure on a bad exit
    user = {"command": "pause", "state": "completed", "key": "k-1", "source": "http"}
    write_json_atomic(jobs / "fs" / "status.json", {"state": "paused", "commands": [user]})
    assert rec.outcome(143, signalled=True).state == "paused" and not rec.outcome(143, signalled=True).by_signal
    assert rec.outcome(143, signalled=False).state == "failed"
    write_json_atomic(jobs / "fs" / "status.json", {"state": "stopped", "commands": [{**user, "command": "save_and_stop", "source": "signal"}]})
    assert rec.outcome(143, signalled=True).state == "failed"
    write_json_atomic(jobs / "fs" / "status.json", {"state": "stopping", "commands": [user]})
    assert rec.outcome(143, signalled=True).state == "failed"
    write_json_atomic(jobs / "fs" / "status.json", {"state": "running"})
    assert rec.outcome(0).state == "finished"
    # a status.json from another run of the job (its rank 0 wrote another run count)
    write_json_atomic(jobs / "fs" / "status.json", {"state": "aborted", "restarts": 7})
    assert rec.outcome(0).state == "finished"
    write_json_atomic(jobs / "fs" / "status.json", {"state": "aborted", "restarts": 0})
    assert rec.outcome(0).state == "aborted"
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_json_atomic(jobs / "fs" / "endpoint.json", {**identity(gone.pid), "job_id": "fs", "url": None})
    rec.finish(rec.outcome(0).state, 0)  # as the launcher closes a run: the record says it
    assert read(jobs / "fs" / "job.json")["state"] == "aborted"
    # rank 0 wrote its end, then died before removing its endpoint: the launcher removes it
    assert not (jobs / "fs" / "endpoint.json").exists()


def test_live_job_id_is_refused_dead_one_is_reused(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    rec = start(jobs, plan(jobs, job_id="busy"))
    with pytest.raises(LaunchError) as err:
        start(jobs, plan(jobs, job_id="busy"))
    assert "'busy' is in use" in str(err.value) and "still running" in str(err.value)
    ckpt = tmp_path / "ck" / "checkpoint-7"
    ckpt.mkdir(parents=True)  # resume takes only a checkpoint that is on disk
    write_json_atomic(jobs / "busy" / "status.json", {"state": "stopped", "last_checkpoint": str(ckpt)})
    rec.finish("stopped", 0)
    # an old command left in the inbox must not stop the next run
    write_json_atomic(jobs / "busy" / "inbox" / "1-c-old.json", {"id": "c-old", "command": "save_and_stop"})
    rec2 = start(jobs, plan(jobs, job_id="busy"))
    job = read(jobs / "busy" / "job.json")
    assert job["restarts"] == 1 and job["resume_from"] == str(ckpt) and job["state"] == "running"
    assert os.listdir(jobs / "busy" / "inbox") == []
    rec2.finish("finished", 0)


def test_rank0_still_serving_is_refused(tmp_path: Path) -> None:
    """A job started by hand (no launcher records) whose rank 0 still runs here."""
    jobs = tmp_path / "jobs"
    paths = JobPaths(jobs, "byhand").create()
    write_json_atomic(paths.endpoint, {**identity(), "job_id": "byhand", "url": None})
    with pytest.raises(LaunchError) as err:
        start(jobs, plan(jobs, job_id="byhand"))
    assert "in use by a running job" in str(err.value)


def test_other_host_with_fresh_heartbeat_is_refused(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    paths = JobPaths(jobs, "far").create()
    paths.nodes.mkdir()
    write_json_atomic(paths.node(0), {"host": "elsewhere", "boot_id": "b", "pid": 1, "pid_start_time": 1.0, "heartbeat_at": time.time()})
    with pytest.raises(LaunchError) as err:
        start(jobs, plan(jobs, job_id="far"))
    assert "elsewhere" in str(err.value)
    write_json_atomic(paths.node(0), {"host": "elsewhere", "boot_id": "b", "pid": 1, "pid_start_time": 1.0, "heartbeat_at": time.time() - 3600})
    start(jobs, plan(jobs, job_id="far")).finish("finished", 0)


def test_slurm_requeue_reuses_the_folder(tmp_path: Path) -> None:
    """The rerun of a requeued SLURM job: its earlier run's records (even with a fresh
    heartbeat from another host) are its own past, not a live job in the way."""
    jobs = tmp_path / "jobs"
    first = start(jobs, plan(jobs, SLURM, requeue=True))
    assert first.plan.job_id == "slurm-900"
    ckpt = tmp_path / "ck" / "checkpoint-50.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")  # resume takes only a checkpoint that is on disk
    write_json_atomic(jobs / "slurm-900" / "status.json", {"state": "stopped", "last_checkpoint": str(ckpt)})
    first.finish("requeued", 0)
    node = read(jobs / "slurm-900" / "nodes" / "0.json")
    write_json_atomic(jobs / "slurm-900" / "nodes" / "0.json", {**node, "host": "n1-real", "ended_at": None, "heartbeat_at": time.time()})

    env = {**SLURM, "SLURM_RESTART_COUNT": "1"}
    node1_early = read_previous(JobPaths(jobs, "slurm-900"), plan(jobs, {**env, "SLURM_NODEID": "1"}).placement, node_rank=1)
    assert (node1_early.restarts, node1_early.resume_from) == (1, str(ckpt))
    second = start(jobs, plan(jobs, env, requeue=True))
    job = read(jobs / "slurm-900" / "job.json")
    assert job["restarts"] == 1 and job["resume_from"] == str(ckpt) and job["scheduler"]["restart_count"] == 1
    # node 1 starting after node 0 rewrote job.json still gets this run's values
    node1_late = read_previous(JobPaths(jobs, "slurm-900"), plan(jobs, {**env, "SLURM_NODEID": "1"}).placement, node_rank=1)
    assert (node1_late.restarts, node1_late.resume_from) == (1, str(ckpt))
    second.finish("stopped", 0)


@pytest.mark.slow  # a real `forgather launch` (that refuses)
def test_unwritable_jobs_dir_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        jobs = blocker / "jobs"  # a path under a regular file cannot be created, even by root
    else:
        jobs = tmp_path / "ro"
        jobs.mkdir(mode=0o500)
    script = tmp_path / "t.py"
    script.write_text("pass\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    proc = subprocess.run([*FORGATHER, "launch", "--jobs-dir", str(jobs), "--job-id", "x", str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write the job's records" in proc.stderr and "--jobs-dir" in proc.stderr and "Traceback" not in proc.stderr


def test_a_signal_after_a_users_stop_is_not_a_preemption() -> None:
    """What stopped the run is the stop the ranks applied. A two-node SLURM job's
    save-stop: node 1's launcher exits 76 first and srun --kill-on-bad-exit sends node
    0's launcher SIGTERM while its ranks finish the user's stop; that run was stopped by
    the user (76, never requeued), not preempted (75, requeued: CI saw it come back)."""
    user = {"command": "save_and_stop", "state": "completed", "key": "k-9f2", "source": "http"}
    launchers = {**user, "key": launcher_stop_key("slurm-15", 1), "source": "file"}
    ranks_own = {**user, "key": None, "source": "signal"}
    refused = {"command": "save_and_stop", "state": "rejected", "key": launcher_stop_key("slurm-15", 1), "source": "file"}
    assert not stopped_by_a_signal(typed(Status, {"commands": [user, refused], "stopped_by_signal": False}), signalled=True)
    assert stopped_by_a_signal(typed(Status, {"commands": [launchers]}), signalled=True)
    assert stopped_by_a_signal(typed(Status, {"commands": [ranks_own], "stopped_by_signal": True}), signalled=False)
    assert stopped_by_a_signal(typed(Status, {"commands": [{**user, "state": "queued"}]}), signalled=True)  # no stop applied yet: what was seen
    assert not stopped_by_a_signal(typed(Status, {}), signalled=False) and stopped_by_a_signal(typed(Status, {"stopped_by_signal": True}), signalled=False)
    assert stopped_by_a_signal(typed(Status, {"commands": [{"command": "no-such", "state": "completed"}]}), signalled=True)
