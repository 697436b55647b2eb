"""Rank 0's I/O when the job's folder is removed while it trains: one line saying so, no
traceback per heartbeat, and the I/O goes on (the real job: tests/hostile/test_hostile_pid_namespace.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from forgather_control.callback.publisher import Publisher
from forgather_control.core import JobPaths, Ledger
from forgather_control.core.records import Status


def test_a_removed_job_folder_is_said_once_and_the_io_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = JobPaths(tmp_path / "jobs", "removed").create(mark=False)
    pub = Publisher(paths=paths, ledger=Ledger(), status=lambda: Status(job_id="removed", state="running"), heartbeat_interval=0.0)
    pub.tick()
    assert paths.status.exists()
    shutil.rmtree(paths.dir)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            pub.tick()  # a heartbeat due every time
    said = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert len(said) == 1 and str(paths.dir) in said[0].getMessage()
    assert not any(r.exc_info for r in caplog.records), "no traceback for a folder that is gone"
    assert pub.errors == 5


def test_another_failure_is_still_reported_with_its_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = JobPaths(tmp_path / "jobs", "broken").create(mark=False)

    def status() -> Status:
        raise FileNotFoundError("not the folder")

    pub = Publisher(paths=paths, ledger=Ledger(), status=status)
    with caplog.at_level(logging.WARNING):
        pub.tick()
    assert [r.exc_info is not None for r in caplog.records] == [True]
