"""The page in a real browser (Debian's Chromium, driven by Playwright), against job
folders: logging in with the token, another site's requests, a rebinding DNS name,
hostile text in records, and 1,000 jobs at once. The tests against real training
loops are in test_ui_training.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.ui import browser, history, ui_server, watched_page, write_job, write_starting_job

REBIND = "rebind.test"
#: One worker runs these, so the module's Chromium starts once.
pytestmark = pytest.mark.xdist_group("chromium")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser(extra_args=[f"--host-resolver-rules=MAP {REBIND} 127.0.0.1"]) as b:
        yield b


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    with watched_page(chromium) as page:
        yield page


def test_token_flow(page: Any, jobs_dir: Path) -> None:
    write_job(jobs_dir, "private-run-7", state="running", step=3, max_steps=10, alive=True)
    with ui_server(jobs_dir) as server:
        page.goto(server.url + "/")
        assert page.url == server.url + "/login", "no token: the login page"
        assert "private-run-7" not in page.content()
        assert page.context.cookies() == []
        page.goto(server.url + "/api/jobs")
        assert "private-run-7" not in page.content() and "log in" in page.content()

        page.goto(server.login_url)
        page.wait_for_selector("tr[data-job='private-run-7']")
        assert page.url == server.url + "/", "the token is gone from the address bar"
        assert server.config.token not in page.evaluate("location.href + document.cookie + history.length")
        cookies = {c["name"]: c for c in page.context.cookies()}
        session = cookies[f"forgather_ui_session_{server.port}"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        assert session["value"] not in page.evaluate("document.cookie"), "no script reads the session"
        assert not cookies[f"forgather_ui_csrf_{server.port}"]["httpOnly"]

        page.goto(server.url + "/jobs/private-run-7")  # the cookie carries on; no token needed
        page.wait_for_selector("h1:text('private-run-7')")
        page.goto(f"{server.url}/?token={'w' * 43}")
        page.wait_for_selector("#wrong:visible")
        assert page.url == server.url + "/login"
    assert page.errors == []


def test_the_host_check_holds_in_a_browser(page: Any, jobs_dir: Path) -> None:
    """A name that resolves to 127.0.0.1 (DNS rebinding) gets nothing, not even the login."""
    write_job(jobs_dir, "private-run-8", state="running", step=3, alive=True)
    with ui_server(jobs_dir) as server:
        res = page.goto(f"http://{REBIND}:{server.port}/?token={server.config.token}")
        assert res.status == 403 and "not local" in page.content()
        assert page.context.cookies() == []
        res = page.goto(f"http://{REBIND}:{server.port}/api/jobs")
        assert res.status == 403 and "private-run-8" not in page.content()


class _EvilSite:
    """Another web page on this machine (another port: the same *site* as the page,
    for cookies), or under another name (another site)."""

    def __init__(self, target: str) -> None:
        html = f"""<!doctype html><title>evil</title><script>
const target = {json.dumps(target)};
(async () => {{
  const out = [];
  try {{ await fetch(target, {{method: "POST", mode: "no-cors", credentials: "include",
    headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{command: "abort"}})}}); out.push("no-cors sent"); }}
  catch (e) {{ out.push("no-cors blocked"); }}
  try {{ const r = await fetch(target, {{method: "POST", credentials: "include",
    headers: {{"Content-Type": "application/json", "X-Forgather-CSRF": "a-guess"}}, body: JSON.stringify({{command: "abort"}})}});
    out.push("cors " + r.status); }}
  catch (e) {{ out.push("cors blocked"); }}
  document.title = "done: " + out.join(", ");
}})();
</script>
<form id="f" method="post" enctype="text/plain" action={json.dumps(target)}><input name='{{"command":"abort","x":"' value='"}}'></form>
"""
        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_cross_site_posts_are_refused(page: Any, jobs_dir: Path) -> None:
    paths = write_starting_job(jobs_dir, "inbox-job")  # takes any command in its inbox
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)  # the victim is logged in: the cookie is in the browser
        page.wait_for_selector("tr[data-job='inbox-job']")
        target = f"{server.url}/api/jobs/inbox-job/commands"
        evil = _EvilSite(target)
        try:
            same_site, other_site = f"http://127.0.0.1:{evil.port}", f"http://localhost:{evil.port}"
            seen: dict[str, list[tuple[str, str, int]]] = {same_site: [], other_site: []}
            at = [same_site]  # the origin whose page is open
            page.on("response", lambda r: seen[at[0]].append((r.request.method, r.request.resource_type, r.status)) if r.url == target else None)
            for origin in (same_site, other_site):
                at[0] = origin
                page.goto(origin + "/")
                page.wait_for_function("document.title.startsWith('done')", timeout=10_000)
                page.goto(origin + "/")
                with page.expect_navigation():
                    page.evaluate("document.getElementById('f').submit()")
        finally:
            evil.close()
        assert list(paths.inbox.iterdir()) == [], f"a cross-site request reached the job: {seen}"
        for origin, status, why in (
            (same_site, 403, "the same-site page's cookie came along, and was refused all the same"),
            (other_site, 401, "another site's request carries no cookie: it is not logged in"),
        ):
            posts = [answer for method, _, answer in seen[origin] if method == "POST"]
            assert posts and all(answer == status for answer in posts), (why, seen)

        # the page itself can: Save on the job view drops one command in the inbox
        page.goto(server.url + "/jobs/inbox-job")
        page.click("button[data-command='save']")
        page.wait_for_selector(".flash:text('inbox')")
        assert len(list(paths.inbox.iterdir())) == 1
    assert page.errors == []


def test_hostile_text_is_text(page: Any, jobs_dir: Path) -> None:
    html = '<img src=x onerror="window.__pwned=1">'
    series = {**history(50), f"<b>{html}</b>": {"step": [1, 2], "time": [1.0, 2.0], "value": [1.0, 2.0]}}
    failure = {"rank": 0, "type": f"Err{html}", "message": f"<script>window.__pwned=2</script>{html}", "traceback": [html]}
    write_job(jobs_dir, "hostile", state="failed", step=5, host=html, error=html, series=series, failure=failure, stop_reason=html)
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.click("label.toggle")
        page.wait_for_selector("tr[data-job='hostile']")
        assert page.locator("tr[data-job='hostile'] .col-host").inner_text() == html
        page.goto(server.url + "/jobs/hostile")
        page.wait_for_selector(".failure:visible")
        page.wait_for_selector(".chart")
        # no <img> or <script> of the text exists, so none can run later (an onerror fires
        # only on an element); the text is there, as text, once the page has drawn it
        page.wait_for_function("t => document.querySelector('.failure').innerText.includes(t)", arg=html)
        assert page.locator("img[src='x'], script:text('pwned')").count() == 0
        assert page.evaluate("window.__pwned") is None
    assert page.errors == []


def test_a_thousand_jobs_load_and_show(page: Any, jobs_dir: Path) -> None:
    """1,000 jobs, ended ones shown: every one is a row. How fast is benchmarks/bench_ui.py's
    (a ratio to one job's page, measured in the same run)."""
    for i in range(1000):
        alive = i % 5 != 0
        state = "running" if alive else "finished"
        write_job(jobs_dir, f"sweep-{i:04d}", state=state, step=i * 10, max_steps=10_000, alive=alive, metrics={"loss": 2.0 - i / 1000})
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.wait_for_selector("tr[data-job]")
        page.evaluate("localStorage.setItem('forgather.ui.showEnded', '1')")
        page.goto(server.url + "/")
        page.wait_for_function("() => document.body.dataset.jobsShown === '1000'", timeout=30_000)
        assert page.locator("tr[data-job]").count() == 1000
        assert page.locator("tr[data-job='sweep-0999']").count() == 1 and page.locator("tr[data-job='sweep-0000']").count() == 1
    assert page.errors == []


def test_a_page_that_hides_ended_jobs_never_lists_them(page: Any, jobs_dir: Path) -> None:
    """With "Show ended" off the page asks only for what may be live (a listing whose
    cost does not grow with the history); turning it on lists the ended jobs at once,
    and off again goes back to the live listing."""
    write_job(jobs_dir, "now-running", state="running", step=3, max_steps=10, alive=True)
    for i in range(3):
        write_job(jobs_dir, f"old-{i}", state="finished", step=10, max_steps=10)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url.split("?", 1)[1]) if "/api/jobs?" in r.url else None)
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.wait_for_selector("tr[data-job='now-running']")
        page.wait_for_function("() => document.querySelectorAll('tr[data-job]').length === 1")
        assert asked and set(asked) == {"ended=false"}, asked
        page.click("label.toggle")
        page.wait_for_function("() => document.querySelectorAll('tr[data-job]').length === 4", timeout=5_000)
        assert asked[-1] == "ended=true"
        page.click("label.toggle")
        page.wait_for_function("() => document.querySelectorAll('tr[data-job]').length === 1", timeout=5_000)
        n = len(asked)
        page.wait_for_function(f"() => performance.getEntriesByType('resource').filter(e => e.name.includes('/api/jobs?')).length > {n}", timeout=5_000)
        assert asked[-1] == "ended=false"
    assert page.errors == []


#: The elements a selector names whose content is wider than their box (cut, or behind a
#: scrollbar), with their text and both widths.
OVERFLOWING = "s => [...document.querySelectorAll(s)].filter(e => e.scrollWidth > e.clientWidth).map(e => [e.textContent, e.scrollWidth, e.clientWidth])"
#: The right edge of each job row's last cell (UPDATED).
ROW_ENDS = "[...document.querySelectorAll('tr[data-job] td:last-child')].map(td => td.getBoundingClientRect().right)"


def test_at_1280_wide_long_reasons_and_big_steps_are_not_cut(page: Any, jobs_dir: Path, tmp_path: Path) -> None:
    """A stalled and a failed job with long one-line reasons under their state (and a
    long host name) keep every column of the jobs table on screen, each cut text a hover
    away; a job's STEP card shows 3,391 / 20,000 whole."""
    reason = "rank 3 raised in the all-reduce of step 3,391: NCCL watchdog timeout after 600 s waiting for ranks 4-7 on node gpu-node-0142"
    stall = {"for": 612.0, "after": 300.0, "step": 3391, "phase": "agreement"}
    write_job(jobs_dir, "stalled-long-reason", state="running", step=3391, max_steps=20_000, alive=True, stall=stall, restarts=2, world_size=8)
    write_job(jobs_dir, "failed-long-reason", state="failed", step=3391, max_steps=20_000, error=reason, restarts=1, host="gpu-node-0142.cluster.example.org")
    write_job(jobs_dir, "run-3391", state="running", step=3391, max_steps=20_000, alive=True, series=history(3391, every=10), metrics={"loss": 0.512},
              steps_per_second=7.9, eta_seconds=20_700, last_checkpoint="/scratch/run/checkpoint-3000")  # fmt: skip
    page.set_viewport_size({"width": 1280, "height": 800})
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.click("label.toggle")
        page.wait_for_selector("tr[data-job='failed-long-reason'] .col-job .sub:text('NCCL')")
        page.wait_for_selector("tr[data-job='stalled-long-reason'] .col-job .sub:text('no step')")
        page.screenshot(path=str(tmp_path / "jobs-1280.png"))
        assert page.evaluate(OVERFLOWING, ".table-wrap") == [], "the table fits: no column behind a scrollbar"
        right = page.evaluate("document.querySelector('.table-wrap').getBoundingClientRect().right")
        assert page.evaluate(ROW_ENDS) == [pytest.approx(right, abs=1)] * 3
        assert page.locator("tr[data-job='failed-long-reason'] .col-job .sub").get_attribute("title") == reason
        assert page.locator("tr[data-job='failed-long-reason'] .col-host").get_attribute("title") == "gpu-node-0142.cluster.example.org"

        page.goto(server.url + "/jobs/run-3391")
        page.wait_for_selector(".kpi[data-kpi='step'] .kpi-value:text('20,000')")
        page.wait_for_selector(".chart[data-chart='loss'] canvas")
        page.screenshot(path=str(tmp_path / "job-1280.png"), full_page=True)
        assert page.locator(".kpi[data-kpi='step'] .kpi-value").inner_text() == "3,391 / 20,000"
        assert page.evaluate(OVERFLOWING, ".kpi-value, .kpi-sub") == []
    assert page.errors == []


def _falling(start: float, end: float, n: int) -> dict[str, list]:
    steps = list(range(1, n + 1))
    return {"step": steps, "time": [float(s) for s in steps], "value": [start * (end / start) ** (i / (n - 1)) for i in range(n)]}


def test_the_loss_axis_is_logarithmic_when_the_curve_spans_more_than_two_decades(page: Any, jobs_dir: Path, tmp_path: Path) -> None:
    """A loss from 15 to 0.05 (2.5 decades) starts on a log axis, one from 2.4 to 0.35
    on a linear one; the log button still turns it either way."""
    write_job(jobs_dir, "steep", state="finished", step=2000, series={"loss": _falling(15.0, 0.05, 2000), "grad_norm": _falling(40.0, 0.2, 2000)})
    write_job(jobs_dir, "gentle", state="finished", step=2000, series={"loss": _falling(2.4, 0.35, 2000), "grad_norm": _falling(9.0, 0.5, 2000)})
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/steep")
        page.wait_for_selector(".chart[data-chart='loss'] canvas")
        assert {c: page.get_attribute(f".chart[data-chart='{c}']", "data-log") for c in ("loss", "grad")} == {"loss": "true", "grad": "true"}
        page.screenshot(path=str(tmp_path / "steep.png"), full_page=True)
        page.click(".chart[data-chart='loss'] .chip")
        page.wait_for_selector(".chart[data-chart='loss'][data-log='false'] canvas")
        page.goto(server.url + "/jobs/gentle")
        page.wait_for_selector(".chart[data-chart='loss'] canvas")
        assert {c: page.get_attribute(f".chart[data-chart='{c}']", "data-log") for c in ("loss", "grad")} == {"loss": "false", "grad": "false"}
        page.click(".chart[data-chart='loss'] .chip")
        page.wait_for_selector(".chart[data-chart='loss'][data-log='true'] canvas")
    assert page.errors == []


def test_a_hundred_thousand_point_history_is_drawn_and_then_only_its_tail_is_asked(page: Any, jobs_dir: Path, tmp_path: Path) -> None:
    """A metrics.json of 100,000 points a series (14 MB, another writer's): the page draws
    the server's view (4,096 points a series, the bound it names), asks for the whole
    history once, then only for what comes after its last step. A series of the largest
    numbers JSON holds breaks nothing (uPlot finds no y range for it: its chart is empty)."""
    series = {**history(100_000), "wild": {"step": [1, 2, 3, 4], "time": [1.0, 2.0, 3.0, 4.0], "value": [1e308, -1e308, 5e-324, 1.7e308]}}
    write_job(jobs_dir, "huge", state="running", step=100_000, max_steps=100_000, alive=True, series=series)
    page.set_viewport_size({"width": 1280, "height": 800})
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/jobs/huge/metrics" in r.url else None)
    page.clock.install()  # the page's 2 s metric polls are run forward, not waited out
    with ui_server(jobs_dir) as server:
        page.goto(server.login_url)
        page.goto(server.url + "/jobs/huge")
        page.wait_for_selector(".chart[data-chart='loss'] canvas", timeout=30_000)
        for _ in range(2):
            with page.expect_request(lambda r: "/api/jobs/huge/metrics" in r.url, timeout=30_000):
                page.clock.run_for(2_000)
        page.screenshot(path=str(tmp_path / "job-100k.png"), full_page=True)
        fetches = [url.split("/api/jobs/huge/metrics", 1)[1] for url in asked]
        assert fetches[0] == "" and set(fetches[1:]) == {"?since=99999"}, fetches
        points = {c: page.get_attribute(f".chart[data-chart='{c}']", "data-points") for c in ("loss", "lr", "speed", "grad", "s-wild")}
        assert points == {"loss": "4096", "lr": "2447", "speed": "4096", "grad": "4096", "s-wild": "4"}
        assert page.locator(".empty-charts").is_hidden()
        assert page.locator(".chart[data-chart='s-wild'] canvas").count() == 1
    assert page.errors == []
