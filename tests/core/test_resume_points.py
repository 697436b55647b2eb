"""A resume point is never lost: the job keeps its newest completed checkpoint across any
number of runs, crashes and requeues; resume takes the newest one still on disk and
says which it skipped; cleanup keeps a job that holds one unless asked."""

from __future__ import annotations

import json
from pathlib import Path

from support.history import launch_run, rank0_status
from support.records import typed

from forgather_control.client import cleanup, find_job
from forgather_control.core import JobPaths
from forgather_control.core.checkpoints import MAX_KEPT, Checkpoint, Skipped, choose, history
from forgather_control.core.records import Job, Status
from forgather_control.launcher import LaunchConfig, make_plan, render_plan
from forgather_control.launcher.records import JobRecords, read_previous


def test_history_merges_runs_newest_last_and_ignores_garbage() -> None:
    # garbage of the right types (a checkpoint record of the wrong type makes job.json corrupt, where it is read)
    job = typed(Job, {"checkpoints": [{"path": "/a", "step": 10, "run": 0}, {"path": "relative/ck"}, {"step": 7}, {"path": "/b", "step": 20, "run": 1}]})
    status = typed(Status, {"restarts": 2, "resume_point": {"path": "/c", "step": 5, "saved_at": 1.0}, "unsynced_checkpoint": {"path": "/d", "step": 6}})
    assert [c.path for c in history(job, status)] == ["/a", "/b", "/c"]  # run 2's step 5 is newer than run 1's step 20
    assert [c.path for c in history(job, status, clean_exit=True)] == ["/a", "/b", "/c", "/d"]
    assert [c.path for c in history(job, typed(Status, {"restarts": 3, "resume_point": None}))] == ["/a", "/b"]  # a run that saved nothing
    many = typed(Job, {"checkpoints": [{"path": f"/p{i}", "step": i} for i in range(MAX_KEPT + 5)]})
    assert len(history(many)) == MAX_KEPT and history(many)[-1].path == f"/p{MAX_KEPT + 4}"
    legacy = typed(Job, {"last_checkpoint": "/old", "restarts": 1})
    assert history(legacy) == [Checkpoint("/old", None, 1, None)]


def test_choose_takes_the_newest_that_still_exists() -> None:
    points = [Checkpoint("/a", 1), Checkpoint("/b", 2), Checkpoint("/c", 3)]
    point, gone = choose(points, exists=lambda p: p in ("/a", "/b"))
    assert point == Checkpoint("/b", 2) and gone == [Skipped(Checkpoint("/c", 3), "no longer on disk")]
    assert choose(points, exists=lambda p: False) == (None, [Skipped(p, "no longer on disk") for p in reversed(points)])


def test_save_stop_then_a_crash_before_any_save_then_relaunch_resumes_from_the_save(tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a = out / "checkpoint-100"
    a.mkdir(parents=True)
    first = launch_run(jobs, "keep")
    rank0_status(jobs, first, "stopped", a)  # save-stop: checkpoint A
    first.finish("stopped", 0)
    second = launch_run(jobs, "keep")
    assert second.plan.resume_from == str(a)
    rank0_status(jobs, second, "failed", None)  # crashed before its first save
    second.finish("failed", 1)
    third = launch_run(jobs, "keep")
    assert third.plan.resume_from == str(a) and third.plan.restarts == 2
    job = json.loads((jobs / "keep" / "job.json").read_text())
    assert job["resume_from"] == str(a) and [c["path"] for c in job["checkpoints"]] == [str(a)]
    third.finish("failed", 1)


def test_a_launcher_killed_mid_run_still_passes_its_checkpoint_on(tmp_path: Path) -> None:
    """No finish(): the next run reads the killed run's status.json."""
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a, b = out / "checkpoint-100", out / "checkpoint-200"
    a.mkdir(parents=True)
    b.mkdir()
    first = launch_run(jobs, "killed")
    rank0_status(jobs, first, "stopped", a)
    first.finish("stopped", 0)
    second = launch_run(jobs, "killed")
    rank0_status(jobs, second, "running", b)  # saved B, then the whole node died
    JobPaths(jobs, "killed").node(0).unlink()  # (its launcher's record is gone with it)
    third = launch_run(jobs, "killed")
    assert third.plan.resume_from == str(b)
    third.finish("stopped", 0)


def test_a_vanished_checkpoint_resumes_from_the_newest_older_one_and_says_so(tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a, b = out / "checkpoint-100", out / "checkpoint-200"
    a.mkdir(parents=True)
    b.mkdir()
    for point in (a, b):
        rec = launch_run(jobs, "pruned")
        rank0_status(jobs, rec, "stopped", point)
        rec.finish("stopped", 0)
    b.rmdir()  # a retention policy pruned it
    rec = launch_run(jobs, "pruned")
    assert rec.plan.resume_from == str(a)
    text = render_plan(rec.plan)
    assert f"resume from {a}" in text and f"skipped:        {b} (step 200): no longer on disk" in text
    rec.finish("stopped", 0)


def test_cleanup_keeps_a_job_with_a_resume_point_unless_asked(tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a = out / "checkpoint-100"
    a.mkdir(parents=True)
    rec = launch_run(jobs, "resumable")
    rank0_status(jobs, rec, "stopped", a)
    rec.finish("stopped", 0)
    done = launch_run(jobs, "completed")
    rank0_status(jobs, done, "finished", a)  # ran to its end: nothing to resume
    done.finish("finished", 0)
    found = {c.info.job_id: c.kept for c in cleanup.candidates(jobs)}
    assert found["completed"] is None
    assert "holds a resume point" in found["resumable"] and str(a) in found["resumable"]
    kept = cleanup.delete_job(jobs, "resumable")
    assert not kept.deleted and "--include-resumable" in kept.reason and (jobs / "resumable").is_dir()
    assert cleanup.delete_job(jobs, "resumable", include_resumable=True).deleted
    info = find_job(jobs, "completed")
    assert info.summary().restarts == 0


def test_list_and_status_show_the_run_count_and_what_it_resumed_from(tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a = out / "checkpoint-100"
    a.mkdir(parents=True)
    rec = launch_run(jobs, "shown")
    rank0_status(jobs, rec, "stopped", a)
    rec.finish("stopped", 0)
    rec = launch_run(jobs, "shown")
    rec.finish("failed", 1)
    summary = find_job(jobs, "shown").summary()
    assert summary.restarts == 1 and summary.resumed_from == str(a)


SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "n1",
    "SLURM_STEP_NODELIST": "n1",
    "SLURM_NODEID": "0",
    "SLURM_STEP_TASKS_PER_NODE": "1",
}


def _slurm_run(jobs: Path, restart_count: int) -> JobRecords:
    """One SLURM run of job 4242 (a requeue counts up SLURM_RESTART_COUNT)."""
    env = {**SLURM, "SLURM_RESTART_COUNT": str(restart_count)}
    plan = make_plan(LaunchConfig(script="train.py", requeue=True), env, python="python3", jobs_dir=str(jobs))
    paths = JobPaths(jobs, plan.job_id)
    prev = read_previous(paths, plan.placement, node_rank=0)
    plan = plan.with_history(restarts=prev.restarts, resume_from=prev.resume_from)
    rec = JobRecords(paths, plan)
    rec.claim(prev)
    rec.start(prev, argv=["forgather", "launch", "train.py"], cwd=str(jobs))
    return rec


def test_slurm_preempt_requeue_crash_requeue_keeps_the_checkpoint(tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a = out / "checkpoint-100"
    a.mkdir(parents=True)
    first = _slurm_run(jobs, 0)
    assert first.plan.job_id == "slurm-4242"
    rank0_status(jobs, first, "stopped", a)  # preempted: saved A, requeued
    first.finish("requeued", 75)
    second = _slurm_run(jobs, 1)
    assert second.plan.resume_from == str(a)
    rank0_status(jobs, second, "failed", None)  # crashed before saving
    second.finish("failed", 1)
    third = _slurm_run(jobs, 2)
    assert third.plan.resume_from == str(a) and third.plan.restarts == 2
    third.finish("failed", 1)
