"""A paused job (issue 23) waits to be resumed: ``list`` shows it without ``--all``, even
days later (it is never settled), ``cleanup`` keeps it unless ``--include-paused``, and
its end is alerted as a stop. In process, on real folders; a real pause under
``forgather launch``: tests/launcher/test_launch_pause.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

from support.history import DAY, ended_job, launch_run, listed, rank0_status, settled_ids

from forgather_control.client import cleanup
from forgather_control.core.alerts import events
from forgather_control.core.records import Status
from forgather_control.core.states import JobState


def test_a_paused_job_is_listed_without_all_and_never_settled(tmp_path: Path, cli) -> None:
    jobs = tmp_path / "jobs"
    ended_job(jobs, "old-pause", state="paused", ended=time.time() - 3 * DAY)  # three days old
    ended_job(jobs, "done", state="finished", ended=time.time() - 3 * DAY)
    for _ in range(2):  # the first listing settles what it may; the second reads the index
        assert listed(jobs) == ["old-pause"]
    assert settled_ids(jobs) == {"done"}
    rows = cli("control", "list", "--json", "--jobs-dir", str(jobs)).json()
    assert [(r["job_id"], r["state"]) for r in rows] == [("old-pause", "paused")]
    table = cli("control", "list", "--jobs-dir", str(jobs))
    assert table.code == 0 and "old-pause" in table.out and "paused" in table.out and "1 ended job hidden" in table.out, table.out


def test_cleanup_keeps_a_paused_job_unless_asked(tmp_path: Path, cli) -> None:
    jobs, point = tmp_path / "jobs", tmp_path / "out" / "checkpoint-100"
    point.mkdir(parents=True)
    ended_job(jobs, "paused-ckpt", state="paused", checkpoint=point)
    ended_job(jobs, "paused-bare", state="paused")  # paused whatever its checkpoints: kept too
    ended_job(jobs, "done")
    found = {c.info.job_id: c.kept for c in cleanup.candidates(jobs, include_resumable=True)}
    assert found["done"] is None
    assert found["paused-ckpt"] == f"paused at {point} (step 100), waiting to be resumed (--include-paused deletes it)"
    assert found["paused-bare"] == "paused, waiting to be resumed (--include-paused deletes it)"
    assert not cleanup.delete_job(jobs, "paused-ckpt", include_resumable=True).deleted

    dry = cli("control", "cleanup", "--dry-run", "--json", "--jobs-dir", str(jobs))
    assert dry.code == 0 and [r["job_id"] for r in dry.json()["candidates"]] == ["done"], dry.out
    res = cli("control", "cleanup", "--yes", "--jobs-dir", str(jobs))
    assert res.code == 0 and sorted(p.name for p in jobs.iterdir() if not p.name.startswith(".")) == ["paused-bare", "paused-ckpt"], res.out
    assert "kept paused-ckpt: paused at" in res.out
    res = cli("control", "cleanup", "--yes", "--include-paused", "--json", "--jobs-dir", str(jobs))
    assert res.code == 0 and sorted(res.json()["deleted"]) == ["paused-bare", "paused-ckpt"], res.out
    assert point.is_dir()  # its records go; the checkpoint on disk is never cleanup's


def test_a_launched_run_that_ends_paused_records_it_and_is_not_settled(tmp_path: Path) -> None:
    jobs, point = tmp_path / "jobs", tmp_path / "out" / "checkpoint-40"
    point.mkdir(parents=True)
    rec = launch_run(jobs, "p")
    rank0_status(jobs, rec, "paused", point)
    out = rec.outcome(0)
    assert out.state is JobState.PAUSED and not out.by_signal
    rec.finish(out.state, 76, reason=out.reason, torchrun_exit_code=0)
    job = json.loads((jobs / "p" / "job.json").read_text())
    # what a resume needs: the state, and the checkpoint it continues from
    assert job["state"] == "paused" and job["exit_code"] == 76 and job["last_checkpoint"] == str(point)
    assert [(c["path"], c["step"]) for c in job["checkpoints"]] == [(str(point), 40)]
    assert settled_ids(jobs) == set() and listed(jobs) == ["p"]
    again = launch_run(jobs, "p")  # a relaunch of the same id resumes from it
    assert again.plan.resume_from == str(point) and again.plan.restarts == 1
    again.finish("stopped", 76)


def test_a_pause_is_alerted_as_a_stop_whose_state_says_paused() -> None:
    before = Status(job_id="j", state=JobState.STOPPING, step=9, restarts=0)
    after = Status(job_id="j", state=JobState.PAUSED, step=9, restarts=0, stop_reason="pause")
    (alert,) = events(before, after, job_id="j", run=0, command="forgather launch train.py", now=time.time())
    assert (alert.event, alert.state, alert.reason, alert.step) == ("stopped", "paused", "pause", 9)
