"""The page's JSON API and the Prometheus scrape, against job folders written as rank 0
and the launcher write them: the same jobs as ``list --all --json``, strict JSON, the
failure of a failed job, the metric history, one Prometheus series per job."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.env import base_env
from support.paths import FORGATHER
from support.ui import history, ui_server, write_job

from forgather_control.client.lookup import list_jobs
from forgather_control.core import JobPaths
from forgather_control.core.metrics import VIEW_POINTS, read_history, view
from forgather_control.core.records import JobRow, encode
from forgather_control.core.states import JobState


def strict(text: str):
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are errors."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def bearer(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.config.token}"}


def test_rows_are_the_listing(jobs_dir: Path) -> None:
    write_job(jobs_dir, "run-a", state="running", step=40, max_steps=100, alive=True, metrics={"loss": float("nan")}, steps_per_second=4.5, eta_seconds=13.0)
    write_job(jobs_dir, "run-b", state="finished", step=100, max_steps=100, metrics={"loss": 0.25}, last_checkpoint="/ck/checkpoint-100")
    write_job(jobs_dir, "run-c", state="running", step=7, max_steps=100, alive=False, steps_per_second=9.0, eta_seconds=10.0)  # its process is gone
    write_job(jobs_dir, "run-d", state="running", step=9, max_steps=100, alive=True, stall={"for": 310.0, "after": 300.0, "step": 9, "phase": "agreement"})
    expected = {r.job_id: str(r.state) for r in list_jobs(jobs_dir=jobs_dir, include_finished=True).rows}
    with ui_server(jobs_dir) as server:
        r = httpx.get(server.url + "/api/jobs", headers=bearer(server))
        rows = {row["job_id"]: row for row in strict(r.text)["rows"]}
    assert {k: v["state"] for k, v in rows.items()} == expected == {"run-a": "running", "run-b": "finished", "run-c": "dead", "run-d": "stalled"}
    assert rows["run-d"]["stall"]["for"] == 310.0 and "agreement" in rows["run-d"]["stall"]["why"]
    assert rows["run-a"]["loss"] is None, "NaN is null"
    assert rows["run-a"]["steps_per_second"] == 4.5 and rows["run-a"]["eta_seconds"] == 13.0 and rows["run-a"]["live"]
    assert rows["run-b"]["liveness"] == "finished" and rows["run-b"]["last_checkpoint"] == "/ck/checkpoint-100" and rows["run-b"]["loss"] == 0.25
    assert rows["run-c"].get("steps_per_second") is None and rows["run-c"].get("eta_seconds") is None, "a dead job has no speed"
    assert [row["job_id"] for row in strict(r.text)["rows"]] == ["run-d", "run-a", "run-c", "run-b"], "running first (newest first), ended last"
    assert not any("token" in row for row in rows.values())


def test_job_details_failure_and_history(jobs_dir: Path) -> None:
    series = history(300, every=2, eval_every=100)
    failure = {"rank": 1, "type": "RuntimeError", "message": "NCCL timeout", "traceback": ["Traceback (most recent call last):", "RuntimeError: NCCL timeout"]}
    write_job(jobs_dir, "broken", state="failed", step=300, max_steps=1000, series=series, failure=failure, error="rank 1 failed")
    with ui_server(jobs_dir) as server:
        c = httpx.Client(base_url=server.url, headers=bearer(server))
        d = strict(c.get("/api/jobs/broken").text)
        assert d["state"] == "failed" and d["final"] and not d["controllable"] and "ended" in d["why_not"]
        assert d["failure"]["type"] == "RuntimeError" and d["failure"]["message"] == "NCCL timeout" and d["failure"]["rank"] == 1
        assert d["error"] == "rank 1 failed"
        whole = strict(c.get("/api/jobs/broken/metrics").text)["series"]
        assert whole["loss"]["step"] == series["loss"]["step"] and whole["eval_loss"]["step"] == [100, 200, 300]
        tail = strict(c.get("/api/jobs/broken/metrics", params={"since": 200}).text)["series"]
        assert tail["loss"]["step"][0] == 202 and tail["eval_loss"]["step"] == [300]
        assert c.get("/api/jobs/nobody").status_code == 404
        # an encoded slash is decoded before routing: "../etc" matches no route, no handler runs
        r = c.get("/api/jobs/..%2Fetc")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
        r = c.get("/api/jobs/%2E%2E")  # reaches the handler as ".."
        assert r.status_code == 400 and "invalid job id '..'" in r.json()["detail"]
        assert c.post("/api/jobs/broken/commands", json={"command": "save"}).status_code == 409, "an ended job takes no command"
        assert c.post("/api/jobs/broken/commands", json={"command": "explode"}).status_code == 400
        c.close()


def test_a_long_history_is_served_as_a_bounded_view(jobs_dir: Path) -> None:
    """A metrics.json of 100,000 points a series (another writer's: ours keeps 4,096):
    the page gets the library's view of it, at most the bound it names a series, the
    ends and the extremes kept, and ``since`` asks for the view of what came after."""
    series = history(100_000)
    write_job(jobs_dir, "huge", state="finished", step=100_000, series=series)
    full = read_history(JobPaths(jobs_dir, "huge"))
    with ui_server(jobs_dir) as server, httpx.Client(base_url=server.url, headers=bearer(server), timeout=60) as c:
        r = c.get("/api/jobs/huge/metrics")
        assert r.status_code == 200
        whole = strict(r.text)
        assert whole["max_points"] == VIEW_POINTS == 4096
        counts = {n: len(s["step"]) for n, s in whole["series"].items()}
        assert counts == {"loss": 4096, "grad_norm": 4096, "steps_per_second": 4096, "learning_rate": 2447}, "a flat run (the rate, rounded) is one point"
        assert whole["series"] == encode(view(full))["series"], "the library's view, the same for a Python caller"
        loss = whole["series"]["loss"]
        assert (loss["step"][0], loss["step"][-1]) == (1, 100_000)
        assert (min(loss["value"]), max(loss["value"])) == (min(series["loss"]["value"]), max(series["loss"]["value"]))
        assert len(r.content) < 1_000_000, "a few hundred kilobytes, not the file's 14 MB"
        tail = strict(c.get("/api/jobs/huge/metrics", params={"since": 99_000}).text)["series"]
        assert tail["loss"]["step"] == list(range(99_001, 100_001)) and tail["loss"]["value"] == series["loss"]["value"][-1000:]
        half = strict(c.get("/api/jobs/huge/metrics", params={"since": 50_000}).text)["series"]["loss"]
        assert (len(half["step"]), half["step"][0], half["step"][-1]) == (4096, 50_001, 100_000)
        assert strict(c.get("/api/jobs/huge/metrics", params={"since": 99_999}).text)["series"]["loss"]["step"] == [100_000]


def test_sparklines(jobs_dir: Path) -> None:
    write_job(jobs_dir, "long", state="finished", step=5000, series=history(5000, every=5))
    write_job(jobs_dir, "short", state="finished", step=10, series=history(10))
    write_job(jobs_dir, "none", state="finished", step=10)
    write_job(jobs_dir, "live", state="running", step=10, alive=True, series=history(10))
    with ui_server(jobs_dir) as server:
        loss = strict(httpx.get(server.url + "/api/sparklines", headers=bearer(server)).text)["loss"]
        live_only = strict(httpx.get(server.url + "/api/sparklines?ended=false", headers=bearer(server)).text)["loss"]
    assert set(live_only) == {"live"}, "a page that hides ended jobs reads none of their histories"
    assert len(loss["long"]) == 40 and loss["long"][0] > loss["long"][-1], "the whole run, falling"
    assert len(loss["short"]) == 10 and "none" not in loss


def test_prometheus(jobs_dir: Path) -> None:
    write_job(jobs_dir, "prom-a", state="running", step=40, max_steps=100, alive=True, metrics={"loss": 1.5}, steps_per_second=4.5, eta_seconds=13.0)
    write_job(jobs_dir, "prom-b", state="running", step=3, host='evil"host\nforged_metric 1', metrics={"loss": float("inf")})
    write_job(jobs_dir, "prom-c", state="finished", step=5)  # ended: its series leave the scrape
    write_job(jobs_dir, "prom-d", state="failed", step=6)  # failed a minute ago: listed, and scraped, for a day
    expected = {r.job_id: str(r.state) for r in list_jobs(jobs_dir=jobs_dir).rows}
    with ui_server(jobs_dir) as server:
        r = httpx.get(server.url + "/metrics", headers=bearer(server))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert "forged_metric" not in families, "a label value cannot break the format"
    step = {s.labels["job_id"]: s.value for s in families["forgather_job_step"].samples}
    assert step == {"prom-a": 40, "prom-b": 3, "prom-d": 6}, "what list shows: the history would be unbounded series"
    assert {s.labels["job_id"]: s.value for s in families["forgather_job_loss"].samples} == {"prom-a": 1.5}
    assert {s.labels["job_id"]: s.value for s in families["forgather_job_steps_per_second"].samples} == {"prom-a": 4.5}
    states = {s.labels["job_id"]: (s.labels["state"], s.labels["host"]) for s in families["forgather_job_state"].samples}
    assert states["prom-a"][0] == "running" and states["prom-b"] == (expected["prom-b"], 'evil"host\nforged_metric 1')
    assert states["prom-d"][0] == "failed" and "prom-c" not in states


def test_a_thousand_jobs(jobs_dir: Path) -> None:
    """The listing behind the page over 1,000 job folders has every one of them. How fast
    is benchmarks/bench_ui.py's (a ratio to one job's listing, measured in the same run)."""
    for i in range(1000):
        alive = i % 3 == 0
        write_job(jobs_dir, f"job-{i:04d}", state="running" if alive else "finished", step=i, max_steps=1000, alive=alive, metrics={"loss": 1.0 / (i + 1)})
    with ui_server(jobs_dir, max_age=0.0) as server, httpx.Client(base_url=server.url, headers=bearer(server)) as c:
        r = c.get("/api/jobs")
    assert r.status_code == 200
    rows = {row["job_id"]: row for row in r.json()["rows"]}
    assert len(rows) == 1000 and rows["job-0999"]["state"] == "running" and rows["job-0001"]["state"] == "finished"


def test_cli_prints_one_address_and_stops_on_sigterm(jobs_dir: Path, tmp_path: Path) -> None:
    write_job(jobs_dir, "cli-job", state="running", step=1, alive=True)
    env = base_env(jobs_dir)
    env.pop("FORGATHER_UI_TOKEN", None)
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen([*FORGATHER, "control", "ui", "--port", "0", "--no-browser"], env=env, stdout=fh, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not out.read_text().strip() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        line = out.read_text()
        assert line.count("\n") == 1 and line.startswith("http://127.0.0.1:") and "/?code=" in line, line
        url = line.strip()
        with httpx.Client(follow_redirects=True) as c:
            page = c.get(url)
            assert page.status_code == 200 and 'content="0;url=/"' in page.text, "the page moves on without the code"
            assert c.get(url.split("/?")[0] + "/api/jobs").json()["rows"][0]["job_id"] == "cli-job"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_says_so_off_loopback(jobs_dir: Path) -> None:
    env = base_env(jobs_dir)
    proc = subprocess.Popen(
        [*FORGATHER, "control", "ui", "--host", "0.0.0.0", "--port", "0", "--no-browser"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("http://0.0.0.0:") and "code=" in line
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert "warning: listening on 0.0.0.0" in err and "token" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_help_lists_ui(cli) -> None:
    r = cli("control", "--help")
    assert r.code == 0 and "ui " in r.out
    r = cli("control", "ui", "--help")
    assert r.code == 0 and "--no-browser" in r.out and "--ray-address" in r.out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_json_never_holds_nan(value: float) -> None:
    from forgather_control.ui.feed import Snapshot, job_row

    row = job_row(JobRow(job_id="j", state=JobState.RUNNING, step=1, loss=value), with_status=False)
    text = json.dumps(Snapshot([row], "here", "local", 0.0, 0.0).as_json(), allow_nan=False)  # raises on NaN
    assert row.loss is None and json.loads(text)["rows"][0]["loss"] is None
