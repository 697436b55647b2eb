"""A writer whose clock runs far ahead (a heartbeat dated ten years on) does not keep its
job out of the settled form for ever: its times prove nothing, the storage's clock
judges its silence, and ``status`` says the clock is ahead."""

from __future__ import annotations

import time
from pathlib import Path

from support.history import DAY, age, listed, other_host_job, settled_ids

from forgather_control.client import find_job
from forgather_control.core.markers import read_entry

TEN_YEARS = 10 * 365 * DAY


def test_a_job_whose_heartbeat_is_ten_years_ahead_settles_once_the_storage_says_it_is_silent(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    now = time.time()
    paths = other_host_job(root, "ahead", beat=now + TEN_YEARS)
    info = find_job(root, "ahead")
    assert info.state == "stale" and "ahead" in info.evidence, info.evidence
    assert listed(root) == ["ahead"] and settled_ids(root) == set()  # the storage saw it written just now
    age(paths.dir, now - DAY - 60)  # the storage last saw it a day ago
    assert listed(root) == ["ahead"]  # shown this last time, and settled
    assert settled_ids(root) == {"ahead"} and read_entry(root, "ahead").verdict == "stale"
    assert listed(root) == [] and listed(root, include_finished=True) == ["ahead"]
