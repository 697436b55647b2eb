"""The job view's Knobs panel and the marks on its charts, in a real browser (Debian's
Chromium, Playwright) against a real controlled loop (one process, torch on CPU) with a
knob of its own and the learning-rate knobs (issue 22): a value typed, checked by the
page server against the job's knobs, confirmed and sent as a ``set`` (the page's CSRF
rules); the receipt old -> new at its step, the job's status with the new value, the
value the loop reads, and a mark at that step on every chart. A bad value is refused
with the job's rule's message and nothing is sent. The job's text (a knob's help, name,
a mark's label) is shown as text, never run. The screenshots of the panel and of a mark,
light and dark, come from here (docs/screenshots with FORGATHER_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.env import base_env
from support.records import read_record
from support.ui import browser, history, screenshot_dir, ui_server, wait_serving, watched_page, write_job
from support.waiting import wait_for

from forgather_control.core import write_json_atomic
from forgather_control.ui.auth import CSRF_HEADER

pytestmark = pytest.mark.xdist_group("chromium")

HTML = '<img src=x onerror="window.__pwned=1">'
HELP = "the sampler's temperature: higher is more adventurous"

#: A plain torch loop under a Controller (one process, CPU) with the learning-rate knobs
#: (``ctl.optimizer``) and a knob of its own that it reads every step and logs as a
#: metric. ``argv``: job id, help text of the knob.
KNOB_LOOP = """
import sys, time
import torch
from torch import nn
from forgather_control.callback import Controller

job_id, help_text = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
gen = torch.Generator().manual_seed(1)
with Controller(job_id=job_id, max_steps=1_000_000) as ctl:
    temperature = ctl.knob("temperature", 1.0, min=0.0, help=help_text)
    ctl.optimizer(opt)
    for step in range(1, 1_000_001):
        x = torch.randn(16, 8, generator=gen)
        loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(0.01)
        act = ctl.step(step, {"loss": float(loss), "learning_rate": opt.param_groups[0]["lr"], "temperature": temperature.value})
        if act.stop:
            print("stopped at", step, act.command, flush=True)
            break
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


def start_knob_loop(procs: Any, jobs_dir: Path, job_id: str) -> Any:
    return procs.start([sys.executable, "-c", KNOB_LOOP, job_id, HELP], env=base_env(jobs_dir), name=job_id)


def knob(jobs_dir: Path, job_id: str, name: str) -> dict[str, Any]:
    """The knob ``name`` as the job's status.json says it now."""
    return next((k for k in read_record(jobs_dir, job_id, "status.json").get("knobs") or [] if k.get("name") == name), {})


def sets(jobs_dir: Path, job_id: str) -> list[dict[str, Any]]:
    """The set commands in the job's ledger (status.json)."""
    return [c for c in read_record(jobs_dir, job_id, "status.json").get("commands") or [] if c.get("command") == "set"]


def row(page: Any, name: str) -> dict[str, str]:
    cells = page.locator(f".knobs-panel tr[data-knob='{name}'] td")
    texts = cells.all_inner_texts()
    return dict(zip(("knob", "now", "script", "from", "range"), texts[:5], strict=True))


def point_at(page: Any, mark: Any) -> None:
    """The mouse on a mark's line (the chart's cursor there: the strip takes no mouse events)."""
    box = mark.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=4)


def review(page: Any, **typed: str) -> None:
    for name, value in typed.items():
        page.fill(f".knobs-panel tr[data-knob='{name}'] .knob-input", value)
    page.click(".knobs-panel button:text('Review change')")


@pytest.mark.slow
def test_the_knob_panel_sets_a_value_on_a_real_job_and_its_step_is_marked_on_every_chart(chromium: Any, procs: Any, jobs_dir: Path, tmp_path: Path) -> None:
    loop = start_knob_loop(procs, jobs_dir, "knobs-1")
    wait_serving(jobs_dir, "knobs-1", loop, min_step=5, timeout=120)
    with ui_server(jobs_dir) as server, watched_page(chromium, width=1440) as page:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/knobs-1")
        page.wait_for_selector(".knobs-panel tr[data-knob='temperature'] .knob-input:enabled")
        assert page.locator(".knobs-panel tr[data-knob]").evaluate_all("rows => rows.map(r => r.dataset.knob)") == ["temperature", "lr_scale", "lr"]
        assert row(page, "temperature") == {"knob": f"temperature\n{HELP}", "now": "1", "script": "1", "from": "script", "range": "float \u2265 0"}
        assert row(page, "lr_scale")["range"] == "float > 0" and row(page, "lr")["now"] == "0.01"
        note = page.locator(".knobs-note")

        # A bad value: the check's message, no confirmation asked, nothing sent.
        review(page, temperature="-1")
        wait_for(lambda: note.inner_text().startswith("Not sent"), timeout=10, what="the refusal")
        assert note.inner_text() == "Not sent: temperature must be at least 0, not -1"
        review(page, temperature="", lr_scale="half")
        wait_for(lambda: "not a number" in note.inner_text(), timeout=10, what="the refusal")
        assert note.inner_text() == "Not sent: lr_scale is a float: 'half' is not a number"
        assert page.locator("#confirm[open]").count() == 0
        page.fill(".knobs-panel tr[data-knob='lr_scale'] .knob-input", "")

        # The page server refuses a bad set sent around the page too (its message, 422),
        # and one without the CSRF header (403); the job's ledger never hears of them.
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        with httpx.Client(base_url=server.url, cookies=cookies, headers={"Origin": server.url}) as c:
            bad = c.post("/api/jobs/knobs-1/commands", json={"command": "set", "changes": [{"name": "temperature", "value": -1}]},
                         headers={CSRF_HEADER: cookies[f"forgather_ui_csrf_{server.port}"]})  # fmt: skip
            assert bad.status_code == 422 and bad.json() == {"detail": "temperature must be at least 0, not -1", "refused": "knob"}
            unknown = c.post("/api/jobs/knobs-1/commands", json={"command": "set", "changes": [{"name": "warmth", "value": 2}]},
                             headers={CSRF_HEADER: cookies[f"forgather_ui_csrf_{server.port}"]})  # fmt: skip
            assert unknown.status_code == 422 and unknown.json()["detail"] == "this job has no knob 'warmth'; its knobs: lr, lr_scale, temperature"
            forged = c.post("/api/jobs/knobs-1/commands", json={"command": "set", "changes": [{"name": "temperature", "value": 0.1}]})
            assert forged.status_code == 403, forged.text
        assert sets(jobs_dir, "knobs-1") == [], "a refused set leaves nothing in the job's ledger"
        assert knob(jobs_dir, "knobs-1", "temperature")["value"] == 1.0

        # A good one: what changes, asked first; the receipt old -> new at its step.
        review(page, temperature="0.25")
        page.wait_for_selector("#confirm[open]")
        assert page.locator("#confirm-title").inner_text() == "Change a knob of job knobs-1?"
        assert page.locator("#confirm-body .confirm-change").all_inner_texts() == ["temperature 1 -> 0.25"]
        page.click("#confirm-ok")
        wait_for(lambda: note.inner_text().startswith("Set completed"), timeout=30, what="the set's receipt")
        done = re.fullmatch(r"Set completed: temperature 1 -> 0\.25 at step (\d+)", note.inner_text())
        assert done, note.inner_text()
        step = int(done.group(1))
        ledger = page.locator("table.ledger tr[data-command='set'][data-state='completed']")
        assert ledger.locator(".result").inner_text() == "temperature 1 -> 0.25"
        assert page.locator(".knobs-panel tr[data-knob='temperature'] .knob-input").input_value() == ""

        # The job: its status, its ledger, the value the loop reads.
        wait_for(lambda: knob(jobs_dir, "knobs-1", "temperature").get("value") == 0.25, timeout=10, what="the status's new value")
        temperature = knob(jobs_dir, "knobs-1", "temperature")
        assert (temperature["origin"], temperature["step"], temperature["command_id"]) == ("set", step, sets(jobs_dir, "knobs-1")[0]["id"])
        assert [c["result"]["changes"] for c in sets(jobs_dir, "knobs-1")] == [[{"name": "temperature", "value": 0.25, "old": 1.0}]]
        wait_for(lambda: read_record(jobs_dir, "knobs-1", "status.json").get("metrics", {}).get("temperature") == 0.25, timeout=10, what="the loop to read it")
        wait_for(lambda: row(page, "temperature")["from"] == f"set at step {step:,}", timeout=5, what="the panel's origin")
        assert row(page, "temperature")["now"] == "0.25"

        # The mark: on every chart, at the step, its label on hover.
        charts = page.locator(".chart")
        wait_for(
            lambda: charts.count() >= 3 and page.locator(f".chart .chart-mark[data-step='{step}']").count() == charts.count(),
            timeout=15,
            what="a mark on every chart",
        )
        mark = page.locator(f".chart[data-chart='loss'] .chart-mark[data-step='{step}']")
        assert mark.get_attribute("title") == f"step {step:,}: temperature 1 -> 0.25"
        label = mark.locator(".chart-mark-label")
        assert label.is_hidden() and label.text_content() == f"step {step:,}: temperature 1 -> 0.25"

        def pointed() -> bool:
            """The cursor on the mark, and its label shown on every chart (their cursors
            move together); pointed again when new points moved the line meanwhile."""
            point_at(page, mark)
            return page.locator(".chart-mark-label:visible").count() == charts.count()

        wait_for(pointed, timeout=10, what="the mark's label under the cursor")

        # The screenshots: the panel with its receipt and a new value typed, light and dark.
        out = screenshot_dir()
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            page.fill(".knobs-panel tr[data-knob='lr_scale'] .knob-input", "0.5")
            page.locator(".knobs-panel").scroll_into_view_if_needed()
            page.locator(".knobs-panel").screenshot(path=str(out / f"knobs-{scheme}.png"))
            wait_for(pointed, timeout=10, what="the mark's label under the cursor")
            page.locator(".chart[data-chart='loss']").screenshot(path=str(out / f"knobs-mark-{scheme}.png"))
            page.click(".knobs-panel button:text('Review change')")
            page.wait_for_selector("#confirm[open]")
            page.screenshot(path=str(tmp_path / f"knobs-confirm-{scheme}.png"))
            page.click("#confirm-cancel")
            page.wait_for_selector("#confirm", state="hidden")
        wait_for(lambda: note.inner_text() == "Not sent: cancelled.", timeout=10, what="the note to say the change was not sent")
        assert len(sets(jobs_dir, "knobs-1")) == 1, "Cancel sent nothing"
        print(f"screenshots in {out}")
        assert page.errors == []


def test_a_hostile_knob_name_and_mark_label_are_text(chromium: Any, jobs_dir: Path) -> None:
    """Records another writer made: a knob named with markup, a mark labelled with it."""
    knobs = [
        {"name": HTML[:64], "kind": "float", "value": 1.5, "default": 1.0, "origin": "set", "step": 40, "command_id": HTML[:64], "help": HTML},
        {"name": "dropout", "kind": "float", "value": 0.1, "default": 0.1, "min": 0.0, "max": 1.0, "origin": "resumed"},
        {"name": "use_ema", "kind": "bool", "value": True, "default": False, "origin": "script"},
    ]
    paths = write_job(jobs_dir, "hostile-knobs", state="running", step=90, max_steps=500, alive=True, series=history(90), knobs=knobs)
    metrics = read_record(jobs_dir, "hostile-knobs", "metrics.json")
    write_json_atomic(paths.dir / "metrics.json", {**metrics, "marks": [{"step": 40, "time": time.time() - 50, "kind": "set", "label": HTML}]})
    with ui_server(jobs_dir) as server, watched_page(chromium) as page:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/hostile-knobs")
        page.wait_for_selector(".knobs-panel tr[data-knob] .knob-input")
        names = page.locator(".knobs-panel tr[data-knob] .knob-name .mono").all_inner_texts()
        assert names == [HTML[:64], "dropout", "use_ema"]
        assert row(page, "dropout")["range"] == "float 0 \u2013 1" and row(page, "dropout")["from"] == "resumed"
        assert row(page, "use_ema")["now"] == "true" and row(page, "use_ema")["range"] == "true or false"
        assert page.locator(".knobs-panel tr[data-knob='use_ema'] select.knob-input").count() == 1
        first = page.locator(".knobs-panel tr[data-knob]").first
        assert first.locator(".knob-name .sub").inner_text() == HTML and first.locator(".knob-from").get_attribute("title") == f"by {HTML[:64]}"
        mark = page.locator(".chart[data-chart='loss'] .chart-mark[data-step='40']")
        mark.wait_for(state="attached")
        assert mark.get_attribute("title") == f"step 40: {HTML}"
        assert page.locator("img[src='x']").count() == 0 and page.evaluate("window.__pwned") is None
    assert page.errors == []


def test_an_ended_jobs_knobs_are_its_last_values_with_nothing_to_edit(chromium: Any, jobs_dir: Path) -> None:
    knobs = [{"name": "dropout", "kind": "float", "value": 0.2, "default": 0.1, "min": 0.0, "max": 1.0, "origin": "set", "step": 300, "command_id": "c-1"}]
    write_job(jobs_dir, "ended-knobs", state="finished", step=500, max_steps=500, knobs=knobs)
    with ui_server(jobs_dir) as server, watched_page(chromium) as page:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/ended-knobs")
        page.wait_for_selector(".knobs-panel tr[data-knob='dropout']")
        assert row(page, "dropout") == {"knob": "dropout", "now": "0.2", "script": "0.1", "from": "set at step 300", "range": "float 0 \u2013 1"}
        assert page.locator(".knobs-panel .knob-input").is_hidden() and page.locator(".knobs-panel button").is_hidden()
    assert page.errors == []
