"""The page in a real browser against real training loops
(``examples/trainer_control/plain_loop.py``, one process each): a job that starts shows up
and a job that stops changes state without a reload, the charts have points, every
button sends its command through the library and the page follows its receipt to
completed, abort (and the other stops) ask first; and the screenshots of both views, in
light and dark, come from here."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.records import read_record
from support.ui import browser, history, screenshot_dir, start_plain_loop, ui_server, wait_serving, write_job
from support.waiting import wait_for

pytestmark = pytest.mark.slow

#: The page polls once a second; a change shows within two.
BEHIND = 2.5
FLASHES = """() => {
  window.__flashes = [];
  const el = document.querySelector('.flash');
  new MutationObserver(() => window.__flashes.push(el.textContent)).observe(el, {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


def new_page(chromium: Any, scheme: str = "light") -> Any:
    ctx = chromium.new_context(viewport={"width": 1440, "height": 900}, color_scheme=scheme)
    page = ctx.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return page


def row_state(page: Any, job_id: str) -> str | None:
    loc = page.locator(f"tr[data-job='{job_id}']")
    return loc.get_attribute("data-state") if loc.count() else None


def test_jobs_appear_and_change_state_live(chromium: Any, procs: Any, jobs_dir: Path, tmp_path: Path, cli: Any) -> None:
    with ui_server(jobs_dir) as server:
        page = new_page(chromium)
        page.goto(server.login_url)
        page.wait_for_selector(".empty:visible")
        page.click("label.toggle")  # show ended jobs too: the stopped one stays in view
        page.evaluate("() => { window.__sameDocument = 42; }")

        loop = start_plain_loop(procs, jobs_dir, "live-1", tmp_path / "out")
        wait_serving(jobs_dir, "live-1", loop, min_step=1)
        t0 = time.monotonic()
        wait_for(lambda: row_state(page, "live-1") == "running", timeout=10, what="the new job's row")
        appeared = time.monotonic() - t0
        step_text = page.locator("tr[data-job='live-1'] .steps").inner_text()
        wait_for(lambda: page.locator("tr[data-job='live-1'] .steps").inner_text() != step_text, timeout=5, what="the step to move")

        assert cli("control", "stop", "live-1", "--wait", "--timeout", "60").code == 0
        assert loop.wait(60) == 0
        t0 = time.monotonic()
        wait_for(lambda: row_state(page, "live-1") == "stopped", timeout=10, what="the row to say stopped")
        changed = time.monotonic() - t0
        assert page.evaluate("() => window.__sameDocument") == 42, "no reload"
        assert page.locator("tr[data-job='live-1'] .pill-text").inner_text() == "stopped"
        assert page.errors == []
    print(f"row appeared {appeared:.2f}s after the job served; changed {changed:.2f}s after it stopped")
    assert appeared < BEHIND and changed < BEHIND


def test_every_button(chromium: Any, procs: Any, jobs_dir: Path, tmp_path: Path) -> None:
    loops = {name: start_plain_loop(procs, jobs_dir, name, tmp_path / name) for name in ("btn-a", "btn-b", "btn-c")}
    for name, proc in loops.items():
        wait_serving(jobs_dir, name, proc, min_step=20)
    with ui_server(jobs_dir) as server:
        page = new_page(chromium)
        page.goto(server.login_url)
        page.wait_for_selector("tr[data-job='btn-a']")

        def open_job(job_id: str) -> None:
            page.click(f"tr[data-job='{job_id}'] a.job-link")
            page.wait_for_selector("button[data-command='save']:enabled")
            page.evaluate(FLASHES)

        def receipt(command: str, state: str = "completed", timeout: float = 60) -> Any:
            row = page.locator(f"table.ledger tr[data-command='{command}'][data-state='{state}']")
            row.wait_for(timeout=timeout * 1000)
            return row

        # A: the charts, Save, Eval, and Stop (asked first)
        open_job("btn-a")
        chart = page.locator(".chart[data-chart='loss']")
        chart.locator("canvas").wait_for()
        wait_for(lambda: int(chart.get_attribute("data-points") or 0) > 10, timeout=10, what="points on the loss chart")
        page.click("button[data-command='save']")
        saved = receipt("save_checkpoint").locator(".result").inner_text()
        path, _, evaluated = saved.partition(" · ")  # save evaluates first where evaluation is configured
        assert "checkpoint-" in path and Path(path.strip()).exists() and "eval_loss" in evaluated, saved
        page.click("button[data-command='eval']")
        assert "eval_loss" in receipt("evaluate").locator(".result").inner_text()
        flashes = page.evaluate("() => window.__flashes")
        assert any("queued" in f for f in flashes) and any("completed" in f for f in flashes), flashes
        wait_for(lambda: "eval_loss" in (chart.get_attribute("data-series") or ""), timeout=10, what="eval loss on the loss chart")

        page.click("button[data-command='stop']")
        page.wait_for_selector("#confirm[open]")
        assert "Stop job btn-a?" in page.locator("#confirm-title").inner_text()
        page.click("#confirm-ok")
        receipt("graceful_stop")
        page.wait_for_selector("body[data-job-state='stopped']", timeout=30_000)
        assert loops["btn-a"].wait(60) == 0

        # B: Save & stop (asked first)
        page.click("a:text('All jobs')")
        open_job("btn-b")
        page.click("button[data-command='save-stop']")
        page.wait_for_selector("#confirm[open]")
        page.click("#confirm-ok")
        assert "checkpoint-" in receipt("save_and_stop").locator(".result").inner_text()
        page.wait_for_selector("body[data-job-state='stopped']", timeout=30_000)

        # C: Abort asks first; Cancel sends nothing
        page.click("a:text('All jobs')")
        open_job("btn-c")
        page.click("button[data-command='abort']")
        page.wait_for_selector("#confirm[open]")
        assert "saves nothing" in page.locator("#confirm-body").inner_text()
        page.click("#confirm-cancel")
        page.wait_for_selector("#confirm", state="hidden")
        assert page.locator("table.ledger tr[data-command='abort']").count() == 0
        assert read_record(jobs_dir, "btn-c", "status.json")["state"] == "running"
        page.click("button[data-command='abort']")
        page.click("#confirm-ok")
        receipt("abort")
        page.wait_for_selector("body[data-job-state='aborted']", timeout=30_000)
        # Cancel sent nothing: a request it had sent would stand in the ledger before this
        # abort (no waiting for something not to happen)
        commands = read_record(jobs_dir, "btn-c", "status.json").get("commands") or []
        assert [c.get("command") for c in commands].count("abort") == 1, commands
        assert page.errors == []


#: Ended jobs beside the running ones in the screenshots: one of each way to end.
ENDED: dict[str, dict[str, Any]] = {
    "bert-base-mlm": {
        "state": "finished",
        "step": 50000,
        "max_steps": 50000,
        "series": history(50000, every=250, eval_every=5000, seed=3),
        "metrics": {"loss": 0.41},
        "last_checkpoint": "/data/runs/bert/checkpoint-50000",
        "ago": 5 * 3600,
    },
    "vit-tiny-sweep-17": {
        "state": "failed",
        "step": 1312,
        "max_steps": 10000,
        "series": history(1312, every=4, seed=4, start_loss=3.1),
        "metrics": {"loss": 1.21},
        "error": "CUDA out of memory",
        "failure": {"rank": 3, "type": "torch.OutOfMemoryError", "message": "CUDA out of memory. Tried to allocate 2.00 GiB", "traceback": []},
        "ago": 2 * 3600,
    },
    "t5-large-distill": {
        "state": "stopped",
        "step": 12000,
        "max_steps": 40000,
        "series": history(12000, every=40, seed=5),
        "metrics": {"loss": 1.02},
        "last_checkpoint": "/data/runs/t5/checkpoint-12000",
        "stop_reason": "save_and_stop command",
        "restarts": 2,
        "ago": 26 * 3600,
    },
    "mistral-lora-r16": {
        "state": "aborted",
        "step": 800,
        "max_steps": 3000,
        "series": history(800, every=2, seed=6),
        "metrics": {"loss": 1.3},
        "ago": 30 * 3600,
    },
}


def test_screenshots(chromium: Any, procs: Any, jobs_dir: Path, tmp_path: Path) -> None:
    """Both views in light and dark, with a real job running next to ended ones; saved
    in docs/screenshots with FORGATHER_UPDATE_SCREENSHOTS=1."""
    loop = start_plain_loop(procs, jobs_dir, "plain-loop-demo", tmp_path / "demo", "--max-steps", "60000", "--eval-every", "250")
    other = start_plain_loop(procs, jobs_dir, "plain-loop-lr-sweep-2", tmp_path / "sweep", "--max-steps", "40000")
    for job_id, record in ENDED.items():
        write_job(jobs_dir, job_id, **record)
    stall = {"for": 431.0, "after": 300.0, "step": 2210, "phase": "agreement"}
    write_job(jobs_dir, "gpt2-medium-ablation", state="running", step=2210, max_steps=8000, alive=True, series=history(2210, every=10, seed=7, start_loss=4.2),
              metrics={"loss": 1.83}, world_size=4, stall=stall, last_checkpoint="/data/runs/gpt2/checkpoint-2000")  # fmt: skip
    wait_serving(jobs_dir, "plain-loop-demo", loop, min_step=20)
    wait_serving(jobs_dir, "plain-loop-lr-sweep-2", other, min_step=20)
    # a curve worth showing in the README's pictures; a few hundred steps for the checks
    worth = 1200 if os.environ.get("FORGATHER_UPDATE_SCREENSHOTS") == "1" else 300
    wait_for(lambda: (read_record(jobs_dir, "plain-loop-demo", "status.json").get("step") or 0) > worth, timeout=120, what="a curve worth showing")
    out = screenshot_dir()
    with ui_server(jobs_dir) as server:
        page = new_page(chromium)
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/plain-loop-demo")
        page.wait_for_selector("button[data-command='save']:enabled")
        page.click("button[data-command='save']")
        page.wait_for_selector("table.ledger tr[data-command='save_checkpoint'][data-state='completed']", timeout=60_000)
        page.click("button[data-command='eval']")
        page.wait_for_selector("table.ledger tr[data-command='evaluate'][data-state='completed']", timeout=60_000)
        page.context.close()
        from forgather_control.client.lookup import open_job

        with open_job("plain-loop-demo", jobs_dir=jobs_dir) as job:  # a knob change: a mark on the charts
            sent = job.set({"lr_scale": 0.5})
            assert job.wait(str(sent.id), timeout=60).state == "completed"
        for scheme in ("light", "dark"):
            page = new_page(chromium, scheme)
            page.goto(server.login_url)
            page.click("label.toggle")
            page.wait_for_selector("tr[data-job='vit-tiny-sweep-17']")
            page.wait_for_selector("tr[data-job='plain-loop-demo'] svg.spark polyline")  # the sparklines' first round is in
            page.mouse.move(0, 0)
            page.screenshot(path=str(out / f"jobs-{scheme}.png"))
            page.click("a.job-link:text('plain-loop-demo')")
            page.wait_for_selector(".chart[data-chart='loss'] canvas")
            if page.get_attribute(".chart[data-chart='loss']", "data-log") != "true":  # more than two decades start on one
                page.click(".chart[data-chart='loss'] .chip")  # the loss on a log axis: its shape after the first drop
            page.wait_for_selector(".chart[data-chart='loss'][data-log='true'] canvas")
            page.wait_for_selector("table.ledger tr[data-command='evaluate']")
            page.wait_for_selector(".chart[data-chart='lr'] canvas")
            page.evaluate("document.fonts.ready")
            page.screenshot(path=str(out / f"job-{scheme}.png"), full_page=True)
            assert page.errors == []
            page.context.close()
    for name in ("jobs-light", "jobs-dark", "job-light", "job-dark"):
        assert (out / f"{name}.png").stat().st_size > 20_000, name
    kept = os.environ.get("FORGATHER_UPDATE_SCREENSHOTS") == "1"
    print(f"screenshots in {out}" + ("" if kept else " (FORGATHER_UPDATE_SCREENSHOTS=1 writes docs/screenshots)"))
