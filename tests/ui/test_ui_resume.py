"""Pause, resume, roll back and logs on the page (issue 23), in a real browser (Debian's
Chromium, Playwright).

- From records (no launch): a paused job is listed under a heading of its own (not
  among the ended jobs, and with "Show ended" off), its view offers Resume and lists its
  checkpoints (on disk or not, left behind or not, the resume point), and both ways to
  resume ask first, naming the checkpoint and step the library chose; a cancel starts
  nothing. A hostile log line is text.
- On a real two-rank ``forgather launch`` of the plain loop (one job, three runs): the
  Logs tab shows both ranks and follows new lines, hostile ones as text; the Pause
  button pauses the job; Resume relaunches it (detached, as the page server's user)
  and it runs again from the paused step; "resume from here" on an older checkpoint
  starts the next run there and leaves the newer ones behind. The screenshots of the
  Logs tab and the checkpoint list, light and dark, come from here.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.launcher import launch, wait_running
from support.paths import EXAMPLES
from support.processes import Procs, gone
from support.records import identity, read_record
from support.ui import browser, history, rank_log, screenshot_dir, ui_server, watched_page, write_job, write_starting_job
from support.waiting import wait_for

from forgather_control.core import write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.outcome import EXIT_STOPPED
from forgather_control.core.records import Relaunch
from forgather_control.core.relaunch import write_relaunch
from forgather_control.launcher.proctree import ProcessTree

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chromium")]

TIMEOUT = 240.0

#: A log line that moves a terminal's cursor, names a window, holds markup and turns text around.
HOSTILE = b"\x1b[2J\x1b]0;pwned\x07<img src=x onerror=alert(1)> \xe2\x80\xaeevil\n"
#: HOSTILE as the library makes it printable (core.logs.clean_lines), and as the page shows it
HOSTILE_SHOWN = "\\x1b[2J\\x1b]0;pwned\\x07<img src=x onerror=alert(1)> \\u202eevil"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


def paused_job(jobs_dir: Path, out: Path, job_id: str = "paused-1") -> JobPaths:
    """A paused job as its records say it: four checkpoints over two runs (step 20's file
    gone, step 80 left behind by a roll back), a relaunch record, both ranks' logs."""
    out.mkdir(parents=True, exist_ok=True)
    for step in (40, 80, 120):
        (out / f"checkpoint-{step}.pt").write_text("weights")
    paths = write_job(jobs_dir, job_id, state="paused", step=120, max_steps=1000, series=history(120), restarts=1)
    now = time.time()
    job = json.loads(paths.job.read_text())
    job["output_dir"] = str(out)
    job["checkpoints"] = [
        {"path": str(out / f"checkpoint-{step}.pt"), "step": step, "run": run, "saved_at": now - 600 + step, **({"left_behind": True} if step == 80 else {})}
        for step, run in ((20, 0), (40, 0), (80, 0), (120, 1))
    ]
    job["last_checkpoint"] = str(out / "checkpoint-120.pt")
    paths.job.write_text(json.dumps(job))
    write_relaunch(paths, Relaunch(job_id=job_id, argv=["launch", "--job-id", job_id, "train.py"], python=sys.executable, cwd=str(out)))
    with rank_log(paths.dir, 0) as log:
        log.write(b"".join(b"step %d loss 0.5\n" % i for i in range(1, 121)))
    with rank_log(paths.dir, 1) as log:
        log.write(b"rank 1 says hello\n" + HOSTILE)
    return paths


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


def test_a_paused_jobs_view_offers_resume_from_its_checkpoints_and_shows_its_logs(chromium: Any, jobs_dir: Path, tmp_path: Path) -> None:
    paths = paused_job(jobs_dir, tmp_path / "out")
    with ui_server(jobs_dir) as server, watched_page(chromium) as page:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/paused-1")
        page.wait_for_selector(".checkpoints-panel tr[data-path]")
        assert page.locator("button[data-command='resume']").is_visible() and page.locator(".actions button[data-command='pause']").is_hidden()
        table = page.locator(".checkpoints-panel tr[data-path]")
        assert table.evaluate_all("rows => rows.map(r => r.dataset.step)") == ["120", "80", "40", "20"], "newest first"
        chips = table.evaluate_all("rows => rows.map(r => r.querySelector('.ckpt-chips').innerText)")
        assert chips == ["resume point", "left behind", "", "not on disk"]
        assert table.evaluate_all("rows => rows.map(r => !!r.querySelector('button'))") == [True, True, True, False], "nothing resumes from a file that is gone"

        # Resume: asked first, naming what the library chose; Cancel starts nothing
        page.click("button[data-command='resume']")
        page.wait_for_selector("#confirm[open]")
        assert page.locator("#confirm-title").inner_text() == "Resume job paused-1 from step 120?"
        assert page.locator("#confirm-body .confirm-change").inner_text() == f"{tmp_path / 'out' / 'checkpoint-120.pt'} at step 120"
        assert "in the background, as run 3" in page.locator("#confirm-body").inner_text()
        page.click("#confirm-cancel")
        wait_for(lambda: page.locator(".flash").inner_text() == "Not resumed: cancelled.", timeout=10, what="the cancel")

        # resume from here, an older one: a roll back, its newer checkpoint named as left behind
        page.click(".checkpoints-panel tr[data-step='40'] button")
        page.wait_for_selector("#confirm[open]")
        assert page.locator("#confirm-title").inner_text() == "Roll job paused-1 back to step 40?"
        assert "Newer checkpoints stay on disk, marked left behind: checkpoint-120.pt (step 120)." in page.locator("#confirm-body").inner_text()
        page.click("#confirm-cancel")
        wait_for(lambda: page.locator(".flash").inner_text() == "Not resumed: cancelled.", timeout=10, what="the cancel")
        assert not list(paths.dir.glob("launcher-run-*.log")), "nothing was started"

        # the Logs tab: rank 0's tail, then rank 1's hostile line as text
        page.click("button.tab[data-tab='logs']")
        page.wait_for_selector(".log .log-line")
        assert page.url.endswith("/jobs/paused-1#logs")
        assert page.locator(".rank-chip").all_inner_texts() == ["rank 0", "rank 1"]
        wait_for(lambda: page.locator(".log .log-line").count() == 120, timeout=10, what="rank 0's tail")
        assert page.locator(".log .log-line").last.inner_text() == "step 120 loss 0.5"
        page.click(".rank-chip[data-rank='1']")
        wait_for(lambda: page.locator(".log").get_attribute("data-rank") == "1", timeout=10, what="rank 1's log")
        assert page.locator(".log .log-line").all_inner_texts() == ["rank 1 says hello", HOSTILE_SHOWN]
        assert page.locator(".log img, .log script").count() == 0 and page.evaluate("window.__pwned") is None
        assert page.locator(".log-state").inner_text() == "the job has ended: its log is whole"
        page.reload()  # the tab is kept in the address
        page.wait_for_selector(".log .log-line")
        assert page.locator(".logs-panel").is_visible() and page.locator(".checkpoints-panel").is_hidden()
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


#: The plain loop (two gloo ranks), each rank first starting a thread that prints a line
#: with HOSTILE's text once the file named by its first argument exists (the test's way
#: to make a running job say something new); the rest of the arguments are the loop's.
SAYING_LOOP = (
    textwrap.dedent(
        """
    import os, runpy, sys, threading, time
    from pathlib import Path

    rank, say = int(os.environ["RANK"]), Path(sys.argv[1])

    def listen():
        while not say.exists():
            time.sleep(0.05)
        print(f"rank {rank} heard you: " + HOSTILE_TEXT, flush=True)

    threading.Thread(target=listen, daemon=True).start()
    sys.argv = [PLAIN, *sys.argv[2:]]
    runpy.run_path(PLAIN, run_name="__main__")
    """
    )
    .replace("PLAIN", repr(str(EXAMPLES / "plain_loop.py")))
    .replace("HOSTILE_TEXT", repr(HOSTILE.decode().rstrip("\n")))
)


def log_lines(page: Any) -> list[str]:
    return page.locator(".log .log-line").all_inner_texts()


def run_of(jobs_dir: Path, job_id: str, run: int, past: int) -> dict[str, Any] | None:
    """The job's status once its run ``run`` serves and has stepped past ``past``."""
    st = read_record(jobs_dir, job_id, "status.json")
    ok = st.get("restarts") == run and st.get("state") == "running" and (st.get("step") or 0) > past and (jobs_dir / job_id / "endpoint.json").exists()
    return st if ok else None


def in_scheme(page: Any, scheme: str) -> None:
    """The page in ``scheme``, once its colours have moved there (a button's background
    is a transition: a screenshot taken at once would catch it half way)."""
    page.emulate_media(color_scheme=scheme)
    page.wait_for_function("() => document.getAnimations().every(a => !(a instanceof CSSTransition))")


def confirm(page: Any, title: str) -> str:
    """Answer the page's question ``title`` with its confirm button; the question's text."""
    page.wait_for_selector("#confirm[open]")
    assert page.locator("#confirm-title").inner_text() == title
    body = page.locator("#confirm-body").inner_text()
    page.click("#confirm-ok")
    return body


def resumed(page: Any, jobs_dir: Path, run: int, step: int) -> int:
    """The pid of the launcher the page's resume started, as its flash says it."""
    flash = page.locator(".flash")
    wait_for(lambda: flash.inner_text().startswith("Job ui-res resumed") or flash.inner_text().startswith("Not resumed"), timeout=TIMEOUT, what="the resume")
    pattern = rf"Job ui-res resumed as run {run + 1} from checkpoint-{step}\.pt at step {step}: its launcher is pid (\d+), its output in (.+)"
    said = re.fullmatch(pattern, flash.inner_text())
    assert said, flash.inner_text()
    assert said.group(2) == str(jobs_dir / "ui-res" / f"launcher-run-{run}.log")
    return int(said.group(1))


@pytest.mark.timeout(900)
def test_a_real_job_logs_pause_resume_and_roll_back_from_the_page(chromium: Any, procs: Procs, jobs_dir: Path, tmp_path: Path, cli: Any) -> None:
    script, out, say = tmp_path / "saying_loop.py", tmp_path / "out", tmp_path / "say"
    script.write_text(SAYING_LOOP)
    job = launch(procs, jobs_dir, "ui-res", script, str(say), "--output-dir", str(out), "--step-time", "0.05", opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, "ui-res", job)
    older = int(re.search(r"checkpoint-(\d+)\.pt", cli("control", "save", "ui-res", "--wait").out).group(1))
    shots = screenshot_dir()
    detached: list[ProcessTree] = []
    try:
        with ui_server(jobs_dir) as server, watched_page(chromium, width=1440) as page:
            page.goto(server.login_url)
            page.goto(server.url + "/jobs/ui-res#logs")

            # Logs: both ranks; rank 0's tail, then a new line of rank 1 as it is printed, as text
            page.wait_for_selector(".rank-chip[data-rank='1']")
            assert page.locator(".rank-chip").all_inner_texts() == ["rank 0", "rank 1"]
            assert page.locator(".rank-chip[aria-pressed='true']").inner_text() == "rank 0"
            wait_for(lambda: "job ui-res running; control it with `forgather control status ui-res`" in log_lines(page), timeout=30, what="rank 0's line")
            assert page.locator(".log-state").inner_text() == "following"
            page.click(".rank-chip[data-rank='1']")
            wait_for(lambda: page.locator(".log").get_attribute("data-rank") == "1" and log_lines(page), timeout=30, what="rank 1's log")
            assert not any("heard you" in line for line in log_lines(page))
            say.touch()
            wait_for(lambda: f"rank 1 heard you: {HOSTILE_SHOWN}" in log_lines(page), timeout=30, what="rank 1's new line, followed")
            assert page.locator(".log img, .log script").count() == 0 and page.evaluate("window.__pwned") is None
            page.click(".rank-chip[data-rank='0']")
            wait_for(lambda: f"rank 0 heard you: {HOSTILE_SHOWN}" in log_lines(page), timeout=30, what="rank 0's new line")
            say.unlink()  # the next runs say nothing of the kind

            # Pause, from its button: asked first; the job saves, stops, waits to be resumed
            page.click(".actions button[data-command='pause']")
            confirm(page, "Pause job ui-res?")
            flash = page.locator(".flash")
            done = wait_for(lambda: re.match(r"Pause completed at step (\d+)", flash.inner_text()), timeout=TIMEOUT, what="the pause's receipt")
            paused = int(done.group(1))
            assert job.wait(TIMEOUT) == EXIT_STOPPED
            wait_for(lambda: page.locator(".pill-lg .pill-text").inner_text() == "paused", timeout=10, what="the state")
            # the Logs tab followed rank 0 to its end
            wait_for(lambda: f"stopping at step {paused} (pause)" in log_lines(page), timeout=15, what="rank 0's last lines")
            wait_for(lambda: page.locator(".log-state").inner_text() == "the job has ended: its log is whole", timeout=15, what="the end")
            assert page.locator(".actions").is_hidden() and page.locator("button[data-command='resume']").is_visible()

            # Resume: asked first (the checkpoint and step the library chose), then run 2 detached from the pause's step
            page.click("button.tab[data-tab='overview']")
            ckpts = page.locator(".checkpoints-panel tr[data-path]")
            wait_for(lambda: ckpts.evaluate_all("rows => rows.map(r => r.dataset.step)") == [str(paused), str(older)], timeout=10, what="the checkpoints")
            page.click("button[data-command='resume']")
            body = confirm(page, f"Resume job ui-res from step {paused}?")
            assert f"{out / f'checkpoint-{paused}.pt'} at step {paused}" in body and "in the background, as run 2" in body
            pid = resumed(page, jobs_dir, 1, paused)
            detached.append(ProcessTree(pid, session=pid))
            st = wait_for(lambda: run_of(jobs_dir, "ui-res", 1, paused), timeout=TIMEOUT, interval=0.2, what="run 2 past the pause's step")
            assert st["resumed_from"] == str(out / f"checkpoint-{paused}.pt")
            wait_for(lambda: page.locator(".pill-lg .pill-text").inner_text() == "running", timeout=10, what="the page to say running")
            assert page.locator("button[data-command='resume']").is_hidden() and page.locator(".checkpoints-panel button").count() == 0
            page.click("button.tab[data-tab='logs']")
            wait_for(lambda: f"resumed from {out / f'checkpoint-{paused}.pt'} at step {paused}" in log_lines(page), timeout=30, what="run 2's first lines")
            assert f"----- forgather: run 1 of this job, rank 0 on {socket.gethostname()} -----" in log_lines(page)
            for scheme in ("light", "dark"):
                in_scheme(page, scheme)
                page.screenshot(path=str(shots / f"logs-{scheme}.png"))
            in_scheme(page, "light")
            page.click("button.tab[data-tab='overview']")

            # run 2 paused; "resume from here" on the older save: run 3 starts there, both pauses' left behind
            res = cli("control", "pause", "ui-res", "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 30)
            assert res.code == 0, res.out + res.err
            second = int(re.search(r"checkpoint-(\d+)\.pt", res.out).group(1))
            wait_for(lambda: gone(pid), timeout=60, interval=0.2, what="run 2's launcher to end")
            wait_for(lambda: page.locator(f".checkpoints-panel tr[data-step='{older}'] button").count() == 1, timeout=10, what="resume from here")
            page.click(f".checkpoints-panel tr[data-step='{older}'] button")
            body = confirm(page, f"Roll job ui-res back to step {older}?")
            assert f"marked left behind: checkpoint-{paused}.pt (step {paused}), checkpoint-{second}.pt (step {second})." in body
            pid = resumed(page, jobs_dir, 2, older)
            detached.append(ProcessTree(pid, session=pid))
            st = wait_for(lambda: run_of(jobs_dir, "ui-res", 2, older), timeout=TIMEOUT, interval=0.2, what="run 3 past the older step")
            assert st["resumed_from"] == str(out / f"checkpoint-{older}.pt")
            # stopped without a save (a save could land on a left-behind step's file name)
            assert cli("control", "stop", "ui-res", "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 30).code == 0
            wait_for(lambda: gone(pid), timeout=60, interval=0.2, what="run 3's launcher to end")

            # the checkpoints of three runs, newest first: both pauses' left behind, the older one where a resume starts
            def listed() -> list[list[str]]:
                return ckpts.evaluate_all("rows => rows.map(r => [r.dataset.step, r.querySelector('.ckpt-chips').innerText, !!r.querySelector('button')])")

            expected = [[str(second), "left behind", True], [str(paused), "left behind", True], [str(older), "resume point", True]]
            wait_for(lambda: listed() == expected, timeout=15, what=f"the list to be {expected}, not {listed()}")
            for scheme in ("light", "dark"):
                in_scheme(page, scheme)
                page.locator(".checkpoints-panel").screenshot(path=str(shots / f"checkpoints-{scheme}.png"))
        assert page.errors == []
    finally:
        left = [q for tree in detached for q in tree.kill(timeout=10)]
    assert not left, left
