"""The job view's Ranks panel in a real browser (Chromium, Playwright): a bar per rank
for its own time per step, the straggler marked with its factor; a host name is text;
a one-rank or ended job has no panel; a big job draws its slowest ranks (issue 21)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.ui import browser, history, ui_server, watched_page, write_job

pytestmark = pytest.mark.xdist_group("chromium")

HTML = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture
def page() -> Iterator[Any]:
    with browser() as b, watched_page(b, width=1280) as page:
        yield page


def test_each_rank_is_a_bar_and_the_straggler_is_marked(page: Any, jobs_dir: Path, tmp_path: Path) -> None:
    ranks = [
        {"rank": 0, "node": 0, "seconds": 0.0321, "ratio": 0.68},
        {"rank": 1, "node": 0, "seconds": 0.0470, "ratio": 1.46},
        {"rank": 2, "node": 1, "seconds": 0.0330, "ratio": 0.71},
        {"rank": 3, "node": 1, "seconds": 0.0325, "ratio": 0.70, "host": HTML},
    ]
    stragglers = [{"rank": 1, "factor": 1.46, "since": 1.0, "step": 103, "node": 0}]
    write_job(jobs_dir, "four", state="running", step=900, max_steps=5000, alive=True, series=history(900, every=10), metrics={"loss": 0.9},
              world_size=4, ranks=ranks, stragglers=stragglers)  # fmt: skip
    write_job(jobs_dir, "ended", state="finished", step=90, max_steps=90, world_size=2, ranks=ranks[:2], stragglers=stragglers)
    write_job(jobs_dir, "many", state="running", step=10, max_steps=5000, alive=True, world_size=100,
              ranks=[{"rank": r, "node": r // 8, "seconds": 0.01 + r * 1e-4, "ratio": 1 + r / 1000} for r in range(100)])  # fmt: skip
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/four")
        page.wait_for_selector(".ranks-panel:visible .rank-bar")
        bars = page.locator(".rank-bar")
        assert bars.count() == 4
        assert [bars.nth(i).get_attribute("data-straggler") for i in range(4)] == ["0", "1", "0", "0"]
        slow = page.locator(".rank-bar[data-rank='1']").locator("span").all_inner_texts()
        assert slow[:2] == ["rank 1", "node 0"] and slow[-3:] == ["47.0 ms", "1.46\u00d7", "straggler"], slow
        assert page.locator(".rank-bar[data-rank='3'] .rank-host").inner_text() == HTML
        assert page.locator("img[src='x']").count() == 0 and page.evaluate("window.__pwned") is None
        widths = [page.locator(f".rank-bar[data-rank='{r}'] .rank-fill").evaluate("e => e.style.width") for r in range(4)]
        assert widths == ["68%", "100%", "70%", "69%"], widths
        page.wait_for_selector(".chart[data-chart='loss'] canvas")
        page.locator(".ranks-panel").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "ranks.png"), full_page=True)

        page.goto(server.url + "/jobs/many")
        page.wait_for_selector(".ranks-panel:visible .rank-bar")
        assert page.locator(".rank-bar").count() == 64
        assert page.locator(".rank-bar").first.get_attribute("data-rank") == "99"
        assert "the 64 slowest of 100" in page.locator(".ranks-panel .panel-head").inner_text()

        page.goto(server.url + "/jobs/ended")
        page.wait_for_selector("h1:text('ended')")
        page.wait_for_selector(".kpi[data-kpi='step'] .kpi-value:text('90')")
        assert page.locator(".ranks-panel").is_hidden()
    assert page.errors == []
