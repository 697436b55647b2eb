"""Every view says the same thing, decided once (client/jobinfo.py): why a job failed is
its root cause (the rank whose own code raised, not rank 0 losing it in a collective
after), and its last checkpoint is the job's (a resumed run that has not saved yet still
has the one it resumed from), in `list --json`, `status --json`, the table and the page
in Chromium."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.ui import browser, ui_server, write_job

from forgather_control.core import JobPaths, write_json_atomic

pytestmark = pytest.mark.xdist_group("chromium")

ROOT_CAUSE = "ValueError: rank 1: a bad batch at step 41"
KNOCK_ON = "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


def failed_job(jobs_dir: Path) -> JobPaths:
    """Rank 1 raised first; rank 0 then failed in the all-reduce and wrote that as its status error."""
    paths = write_job(jobs_dir, "crashed", state="failed", step=41, max_steps=100, restarts=0, error=KNOCK_ON,
                      failure={"rank": 1, "type": "ValueError", "message": "rank 1: a bad batch at step 41"})  # fmt: skip
    later = json.loads((paths.failures / "run-0-rank-1.json").read_text())
    knock_on = {**later, "rank": 0, "type": "RuntimeError", "message": KNOCK_ON.split(": ", 1)[1], "at": later["at"] + 1}
    write_json_atomic(paths.failures / "run-0-rank-0.json", knock_on)
    t = os.stat(paths.failures / "run-0-rank-1.json").st_mtime_ns
    os.utime(paths.failures / "run-0-rank-0.json", ns=(t + 10**9, t + 10**9))
    return paths


def resumed_job(jobs_dir: Path) -> JobPaths:
    """Run 1 resumed from run 0's checkpoint at step 1063 and has not saved yet."""
    paths = write_job(jobs_dir, "resumed", state="running", step=1100, max_steps=5000, alive=True, restarts=1, resumed_from="/ck/checkpoint-1063.pt")
    job = json.loads(paths.job.read_text())
    point = {"path": "/ck/checkpoint-1063.pt", "step": 1063, "run": 0, "saved_at": job["created_at"] + 10}
    write_json_atomic(paths.job, {**job, "resume_from": point["path"], "resume_step": 1063, "checkpoints": [point], "last_checkpoint": point["path"]})
    return paths


def test_why_a_job_failed_and_its_last_checkpoint_are_the_same_in_list_and_status(jobs_dir: Path, cli) -> None:
    failed_job(jobs_dir)
    resumed_job(jobs_dir)
    rows = {r["job_id"]: r for r in cli("control", "list", "--all", "--json").json()}
    why = f"rank 1 ({os.uname().nodename}, pid 4242): {ROOT_CAUSE}"
    assert rows["crashed"]["why"] == why
    status = cli("control", "status", "crashed", "--json").json()
    assert (status["why"], status["failure"]["rank"]) == (why, 1)
    assert rows["resumed"]["last_checkpoint"] == "/ck/checkpoint-1063.pt" and rows["resumed"]["why"] is None
    shown = cli("control", "status", "resumed", "--json").json()
    assert shown["last_checkpoint"] == "/ck/checkpoint-1063.pt" and shown["resume_point"]["step"] == 1063
    table = cli("control", "list").out
    assert "LOSS" in table.splitlines()[0]


def test_the_page_shows_the_root_cause_and_the_jobs_last_checkpoint(chromium: Any, jobs_dir: Path, tmp_path: Path) -> None:
    failed_job(jobs_dir)
    resumed_job(jobs_dir)
    page = chromium.new_context(viewport={"width": 1400, "height": 800}).new_page()
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.click("label.toggle")
        sub = page.locator("tr[data-job='crashed'] .sub:not(.steps)")
        sub.wait_for()
        page.wait_for_function("() => document.querySelector(\"tr[data-job='crashed'] .sub:not(.steps)\").textContent.includes('ValueError')")
        assert "ValueError: rank 1: a bad batch at step 41" in sub.inner_text() and "gloo" not in sub.inner_text()
        assert page.locator("tr[data-job='resumed']").inner_text().count("checkpoint-1063.pt") == 1
        page.screenshot(path=str(tmp_path / "views-agree.png"))
        page.goto(server.url + "/jobs/resumed")
        page.wait_for_function("() => document.body.innerText.includes('resume point: step 1,063')")
        assert "none yet" not in page.locator("body").inner_text()
        page.screenshot(path=str(tmp_path / "resumed-job.png"))
