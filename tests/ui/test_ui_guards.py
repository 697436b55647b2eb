"""The job view's Guards panel in a real browser (Chromium, Playwright): the rules the job
declared and what fired (guard, step, rank, evidence, the command it queued), newest
first; the command a guard queued says so in the ledger. The job's text (a rule, the
evidence) is shown as text, never run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.ui import browser, history, ui_server, watched_page, write_job

pytestmark = pytest.mark.xdist_group("chromium")

HTML = '<img src=x onerror="window.__pwned=1">'
RULES = [
    {"kind": "nan", "action": "abort", "text": "nan:abort,metric=loss", "metric": "loss"},
    {"kind": "spike", "action": "save", "text": "spike:save,factor=3,window=5,times=2,metric=loss", "factor": 3.0, "window": 5, "times": 2, "metric": "loss"},
    {"kind": "slowdown", "action": "alert", "text": "slowdown:alert,fraction=0.5,for=2", "fraction": 0.5, "for": 2.0},
]


@pytest.fixture
def page() -> Iterator[Any]:
    with browser() as b, watched_page(b) as page:
        yield page


def test_the_guards_panel_shows_the_rules_and_what_fired(page: Any, jobs_dir: Path, tmp_path: Path) -> None:
    now = time.time()
    spike = {
        "id": "g-spike",
        "guard": RULES[1]["text"],
        "kind": "spike",
        "action": "save",
        "step": 640,
        "rank": 0,
        "at": now - 30,
        "evidence": "the loss 91.2 is 88.4x its average 1.03 over the last 5 checks, 2 checks in a row",
        "values": {"loss": 91.2, "average": 1.03, "ratio": 88.4},
        "command_id": "c-save-640",
    }
    slow = {
        "id": "g-slow",
        "guard": RULES[2]["text"],
        "kind": "slowdown",
        "action": "alert",
        "step": 700,
        "at": now - 10,
        "evidence": f"3.1 steps/s is 6% of the run's median 52 for 2 s {HTML}",
        "values": {"steps_per_second": 3.1, "median": 52.0, "for": 2.0},
    }
    receipt = {
        "id": "c-save-640",
        "command": "save_checkpoint",
        "state": "completed",
        "source": "guard",
        "step": 640,
        "created_at": now - 30,
        "updated_at": now - 29,
        "result": {"checkpoint": "/scratch/run/checkpoint-640.pt"},
        "guard": spike,
    }
    write_job(jobs_dir, "guarded", state="running", step=900, max_steps=5000, alive=True, series=history(900, every=10), metrics={"loss": 0.91},
              commands=[receipt], guards=RULES, guard_events=[spike, slow], world_size=2)  # fmt: skip
    write_job(jobs_dir, "unguarded", state="running", step=90, max_steps=5000, alive=True)
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/guarded")
        page.wait_for_selector(".guards-panel:visible .guard-events tbody tr")
        assert page.locator(".guards-panel .guard-rule").all_inner_texts() == [r["text"] for r in RULES]
        assert page.locator(".guards-panel .panel-head").inner_text().replace("\n", " ").strip() == "Guards 2 fired"
        rows = page.locator(".guard-events tbody tr")
        assert rows.count() == 2
        first, second = (rows.nth(i).locator("td").all_inner_texts() for i in range(2))
        assert first[:3] == [RULES[2]["text"], "700", "\u2013"] and first[3].endswith(HTML) and first[4] == "alert only", first  # newest first
        assert second[:3] == [RULES[1]["text"], "640", "0"] and second[3] == spike["evidence"] and second[4] == "Save c-save-640", second
        reason = page.locator(".ledger-panel tr[data-id='c-save-640'] td.reason").inner_text()
        assert reason == f"by guard {spike['guard']}: {spike['evidence']}"
        assert page.locator("img[src='x']").count() == 0 and page.evaluate("window.__pwned") is None
        page.wait_for_selector(".chart[data-chart='loss'] canvas")
        page.locator(".guards-panel").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "guards.png"), full_page=True)

        page.goto(server.url + "/jobs/unguarded")  # no guards: no panel
        page.wait_for_selector("h1:text('unguarded')")
        page.wait_for_selector(".kpi[data-kpi='step'] .kpi-value:text('5,000')")
        assert page.locator(".guards-panel").is_hidden()
    assert page.errors == []
