"""The state column while a launcher lives, from the records alone (pure: no processes).

``starting``: the launcher runs, rank 0 has not published this run's status (none yet, or
a previous run's, told apart by the run count). ``ending``: rank 0 has ended this run,
the launcher still winds down. A requeued SLURM job waiting in the queue keeps the
launcher's word.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.records import typed

from forgather_control.client.jobinfo import JobInfo
from forgather_control.core import JobPaths
from forgather_control.core.liveness import Liveness
from forgather_control.core.records import Job, Status


def info(status: dict | None, job: dict | None, liveness: Liveness = Liveness.ALIVE) -> JobInfo:
    """A JobInfo of these records (as JSON), read as the listing reads them."""
    st = typed(Status, status) if status is not None else None
    jb = typed(Job, job) if job is not None else None
    return JobInfo(job_id="j", paths=JobPaths(Path("/nonexistent"), "j"), status=st, job=jb, liveness=liveness)


RUN0 = {"state": "running", "restarts": 0, "control": True}
RUN1 = {"state": "running", "restarts": 1, "control": True}


@pytest.mark.parametrize(
    ("status", "job", "expected"),
    [
        (None, RUN0, "starting"),  # launched; rank 0 still importing torch
        ({"state": "running", "restarts": 0}, RUN0, "running"),
        ({"state": "stopped", "restarts": 0}, RUN0, "ending"),  # rank 0 done, torchrun winding down
        ({"state": "stopped", "restarts": 0}, RUN1, "starting"),  # relaunch: the old run's status
        ({"state": "running", "restarts": 1}, RUN1, "running"),
        ({"state": "stopped", "restarts": 0}, {"state": "requeued", "restarts": 0, "control": True}, "requeued"),
        (None, {"state": "running", "restarts": 0, "control": False}, "running"),  # --no-control: never publishes
        ({"state": "running"}, None, "running"),  # a Controller without the launcher
        ({"state": "stopped"}, RUN0, "ending"),  # a status.json without a run count is taken as this run's
    ],
)
def test_state_while_the_launcher_lives(status: dict | None, job: dict | None, expected: str) -> None:
    assert info(status, job).state == expected


def test_after_the_launcher_ended_its_record_wins_over_a_stale_status() -> None:
    # the relaunch died before its rank 0 wrote anything: not the old run's "stopped"
    failed = {"state": "failed", "restarts": 1, "control": True}
    assert info({"state": "stopped", "restarts": 0}, failed, Liveness.FINISHED).state == "failed"
    assert info({"state": "stopped", "restarts": 1}, {**failed, "state": "stopped"}, Liveness.FINISHED).state == "stopped"


def test_a_previous_runs_status_gives_no_step_or_pid() -> None:
    old = {"state": "stopped", "restarts": 0, "step": 1119, "pid": 4242, "max_steps": 20000}
    row = info(old, RUN1).summary()
    assert row.state == "starting" and row.step is None and row.pid is None, row
    assert info({**old, "restarts": 1, "state": "running"}, RUN1).summary().step == 1119
