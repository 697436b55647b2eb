"""Pause, resume, roll back and logs on the page (issue 23), in a real browser (Debian's
Chromium, Playwright): a paused job is listed under a heading of its own, not among the
ended jobs (and with "Show ended" off: it waits to be resumed); a command's final state is
said when the ledger shows it first (a pause completes as the job ends).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.records import identity
from support.ui import browser, ui_server, watched_page, write_job, write_starting_job
from support.waiting import wait_for

from forgather_control.core import write_json_atomic

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chromium")]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


#: The jobs table as a person reads it: each row's job, or a heading's text.
ROWS = "() => [...document.querySelectorAll('table.jobs tbody tr')].map(r => r.dataset.job || r.innerText)"


def test_a_paused_job_is_listed_under_its_own_heading_not_among_the_ended(chromium: Any, jobs_dir: Path) -> None:
    write_job(jobs_dir, "paused-1", state="paused", step=120, max_steps=1000)
    write_job(jobs_dir, "running-1", state="running", step=5, max_steps=10, alive=True)
    write_job(jobs_dir, "done-1", state="finished", step=10, max_steps=10)
    with ui_server(jobs_dir) as server, watched_page(chromium) as page:
        page.goto(server.login_url)
        page.wait_for_selector("tr[data-job='paused-1']")
        # "Show ended" off: the paused job is listed, under its own heading; the ended one is not
        assert page.evaluate(ROWS) == ["running-1", "PAUSED · 1 · WAITING TO BE RESUMED", "paused-1"]
        assert page.locator("tr[data-job='paused-1'] .pill-text").inner_text() == "paused"
        page.click("label.toggle")
        wait_for(lambda: page.locator("tr[data-job='done-1']").count() == 1, timeout=10, what="the ended job")
        assert page.evaluate(ROWS) == ["running-1", "PAUSED · 1 · WAITING TO BE RESUMED", "paused-1", "ENDED · 1", "done-1"]
        page.fill("input.search", "paused")
        wait_for(lambda: page.evaluate(ROWS) == ["PAUSED · 1 · WAITING TO BE RESUMED", "paused-1"], timeout=5, what="the filter")
    assert page.errors == []


def test_a_receipt_the_ledger_saw_completed_first_is_still_said(chromium: Any, jobs_dir: Path) -> None:
    """The job view follows a sent command's receipt, and the details poll reads the
    ledger too: when the ledger has the final state first (a pause completes when the job
    ends: both polls see it at once), the page says it all the same."""
    paths = write_starting_job(jobs_dir, "fast")  # commands go to its inbox
    with ui_server(jobs_dir) as server, watched_page(chromium) as page:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/fast")
        page.route("**/api/jobs/fast/commands/*", lambda route: route.abort())  # no receipt answers, for now
        page.click("button[data-command='save']")
        flash = page.locator(".flash")
        wait_for(lambda: flash.inner_text().startswith("Save dropped in the job's inbox as "), timeout=10, what="the send")
        sent = json.loads(next(paths.inbox.iterdir()).read_text())
        done = {"id": sent["id"], "key": sent["key"], "command": "save_checkpoint", "state": "completed", "step": 7, "result": {"checkpoint": "/ck/7"}}
        status = {**identity(), "job_id": "fast", "state": "running", "step": 7, "heartbeat_at": time.time(), "commands": [done]}
        write_json_atomic(paths.status, status)  # as rank 0 records it
        page.wait_for_selector("table.ledger tr[data-command='save_checkpoint'][data-state='completed']")
        page.unroute("**/api/jobs/fast/commands/*")
        wait_for(lambda: flash.inner_text() == "Save completed at step 7", timeout=10, what=f"the final state said, not {flash.inner_text()!r}")
    assert page.errors == []
