"""A job that failed is what a person most needs to see: `list` shows it for a day, as it
shows a job that died, and says how many ended jobs it leaves out. (A real crash under the
launcher: tests/launcher/test_launch_run.py test_worker_crash_fails_the_job.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from support.ui import write_job

from forgather_control.client import scan
from forgather_control.core.markers import SILENT_FOR, read_index

DAYS = 2 * SILENT_FOR


def _aged(paths, ago: float) -> None:
    """The folder, as the storage's clock saw it, last written ``ago`` seconds back."""
    for path in (paths.dir, paths.job, paths.status):
        t = os.stat(path).st_mtime - ago
        os.utime(path, (t, t))


def test_a_job_that_failed_today_is_listed_and_one_from_days_ago_is_counted_among_the_hidden(jobs_dir: Path, cli) -> None:
    write_job(jobs_dir, "failed-now", state="failed", step=41, ago=60, error="ValueError: a bad batch")
    _aged(write_job(jobs_dir, "failed-long-ago", state="failed", step=7, ago=DAYS, error="old"), DAYS)
    write_job(jobs_dir, "finished-now", state="finished", step=100, ago=60)
    shutil.rmtree(jobs_dir / ".runs")  # written by hand: no launcher's run marker to wait for
    for _ in range(2):  # the first listing settles what it may; the second reads the index
        rows = cli("control", "list", "--json").json()
        assert [(r["job_id"], r["state"], r["why"]) for r in rows] == [("failed-now", "failed", "ValueError: a bad batch")]
    assert read_index(jobs_dir).skips("failed-long-ago") and read_index(jobs_dir).skips("finished-now")
    assert not read_index(jobs_dir).skips("failed-now")  # settled only once it is a day old
    found = scan(jobs_dir)
    assert [i.job_id for i in found] == ["failed-now"] and found.hidden == 2
    table = cli("control", "list")
    assert table.code == 0 and table.out.rstrip().endswith("2 ended jobs hidden; add --all"), table.out
    assert sorted(r["job_id"] for r in cli("control", "list", "--all", "--json").json()) == ["failed-long-ago", "failed-now", "finished-now"]


def test_an_empty_listing_says_how_many_ended_jobs_it_hides(jobs_dir: Path, cli) -> None:
    write_job(jobs_dir, "done", state="finished", step=100, ago=60)
    out = cli("control", "list").out
    assert out == f"no jobs in {jobs_dir} (1 ended job hidden; add --all)\n", out


def test_status_says_why_a_stopped_job_stopped(jobs_dir: Path, cli) -> None:
    write_job(jobs_dir, "halted", state="stopped", step=12, ago=60, stop_reason="SIGTERM came before this run's first training step: nothing to save yet")
    shown = cli("control", "status", "halted")
    assert shown.code == 0 and "why" in shown.out and "nothing to save yet" in shown.out, shown.out
    assert cli("control", "status", "halted", "--json").json()["why"] == "SIGTERM came before this run's first training step: nothing to save yet"
