"""The page server's routes of issue 23, without a browser: a rank's log
(``GET /api/jobs/<id>/logs``: the tail, then what came after an offset; bad parameters
refused; no log said so; every line printable text) and resume (``POST
/api/jobs/<id>/resume/check`` and ``/resume``: the body checked, the library's refusals
with their messages, the buttons' CSRF rules). Logs are written by the launcher's own
writer (core.logs.RankLog); the real launches are in test_ui_resume.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from support.processes import Procs
from support.ui import rank_log, ui_server, write_job
from support.users import ATTACKER_UID, VICTIM_UID, OtherUser, require_setpriv, shared_dir, users_python
from support.waiting import wait_for

from forgather_control.client import ray_logs
from forgather_control.core.logs import LogRead, LogText
from forgather_control.ui.auth import CSRF_HEADER

#: A log line that moves a terminal's cursor, names a window, holds markup and turns text around.
HOSTILE = b"\x1b[2J\x1b]0;pwned\x07<img src=x onerror=alert(1)> \xe2\x80\xaeevil\n"


def write_log(job_dir: Path, rank: int, data: bytes, *, host: str = "node-a") -> None:
    with rank_log(job_dir, rank, host=host) as log:
        log.write(data)


def bearer(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.config.token}"}, timeout=30)


def test_a_ranks_log_is_its_tail_then_what_came_after_as_printable_text(jobs_dir: Path) -> None:
    paths = write_job(jobs_dir, "logged", state="running", step=5, alive=True)
    write_log(paths.dir, 0, b"".join(b"rank 0 line %d\n" % i for i in range(300)))
    with rank_log(paths.dir, 1) as log1, ui_server(jobs_dir) as server, bearer(server) as c:
        log1.write(b"rank 1 says hello\n" + HOSTILE + b"half a line")
        first = c.get("/api/jobs/logged/logs").json()
        assert (first["ranks"], first["rank"], first["host"], first["ended"]) == ([0, 1], 0, "node-a", False)
        assert first["lines"] == [f"rank 0 line {i}" for i in range(100, 300)], "the tail: 200 lines"
        assert c.get("/api/jobs/logged/logs", params={"lines": "3"}).json()["lines"] == ["rank 0 line 297", "rank 0 line 298", "rank 0 line 299"]

        one = c.get("/api/jobs/logged/logs", params={"rank": "1"}).json()
        # the library's cleaning: escapes and the direction mark written out, markup as it is; a line not ended waits
        assert one["lines"] == ["rank 1 says hello", "\\x1b[2J\\x1b]0;pwned\\x07<img src=x onerror=alert(1)> \\u202eevil"]
        log1.write(b" and its end\nrank 1 again\n")
        more = c.get("/api/jobs/logged/logs", params={"rank": "1", "after": str(one["offset"])}).json()
        assert more["lines"] == ["half a line and its end", "rank 1 again"] and more["offset"] > one["offset"]
        assert c.get("/api/jobs/logged/logs", params={"rank": "1", "after": str(more["offset"])}).json()["lines"] == []

        for params, why in (
            ({"rank": "-1"}, "rank is a whole number from 0 to 1048576, not '-1'"),
            ({"rank": "1.5"}, "rank is a whole number from 0 to 1048576, not '1.5'"),
            ({"rank": "٣"}, "rank is a whole number from 0 to 1048576, not '٣'"),
            ({"after": "x"}, "after is a whole number from 0 to 4611686018427387904, not 'x'"),
            ({"lines": "0"}, "lines is a whole number from 1 to 1000, not '0'"),
            ({"lines": "5000"}, "lines is a whole number from 1 to 1000, not '5000'"),
        ):
            res = c.get("/api/jobs/logged/logs", params=params)
            assert (res.status_code, res.json()) == (400, {"detail": why}), params
        missing = c.get("/api/jobs/logged/logs", params={"rank": "7"})
        assert (missing.status_code, missing.json()) == (404, {"detail": "job logged has no log of rank 7; rank(s) 0, 1 have one", "no_logs": True})
        assert c.get("/api/jobs/nobody/logs").status_code == 404
        assert c.get("/api/jobs/..%2Fetc/logs").status_code in (400, 404)


def test_a_job_without_logs_says_why(jobs_dir: Path) -> None:
    write_job(jobs_dir, "by-hand", state="finished", step=5)
    with ui_server(jobs_dir) as server, bearer(server) as c:
        res = c.get("/api/jobs/by-hand/logs")
        assert res.status_code == 404 and res.json()["no_logs"] is True
        assert "has no logs" in res.json()["detail"] and "forgather launch" in res.json()["detail"]


def test_a_resume_is_checked_and_refused_with_the_librarys_reason(jobs_dir: Path) -> None:
    write_job(jobs_dir, "runs", state="running", step=5, alive=True)
    write_job(jobs_dir, "by-hand", state="paused", step=5)
    with ui_server(jobs_dir) as server, bearer(server) as c:
        running = c.post("/api/jobs/runs/resume/check", json={})
        assert running.status_code == 409 and running.json()["refused"] == "resume"
        assert running.json()["detail"].startswith("job runs is running: it still runs; stop it first")
        assert c.post("/api/jobs/runs/resume", json={"from": None}).json() == running.json()
        norecord = c.post("/api/jobs/by-hand/resume", json={})
        assert norecord.status_code == 409 and norecord.json()["detail"].startswith("job by-hand has no relaunch record")
        for body in ({"from": "relative/ckpt"}, {"from": True}, {"from": -3}, {"from": ""}, {"from": 1.5}, {"from": "/a\x00b"}, {"step": 3}, [3]):
            res = c.post("/api/jobs/by-hand/resume", json=body)
            assert res.status_code == 422 and res.json()["detail"].startswith(("from is a checkpoint's absolute path", "send {")), body
        assert c.post("/api/jobs/by-hand/resume", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
        assert c.post("/api/jobs/by-hand/resume", content=b"{}").status_code == 415
        assert c.post("/api/jobs/nobody/resume", json={}).status_code == 404


@pytest.mark.parametrize("path", ["/api/jobs/by-hand/resume", "/api/jobs/by-hand/resume/check"])
def test_a_resume_with_the_cookie_needs_the_csrf_header_and_this_origin(jobs_dir: Path, path: str) -> None:
    write_job(jobs_dir, "by-hand", state="paused", step=5)
    with ui_server(jobs_dir) as server:
        with httpx.Client(base_url=server.url, follow_redirects=False) as c:
            c.get(f"/?token={server.config.token}")
            csrf = c.cookies[f"forgather_ui_csrf_{server.port}"]
            forged = c.post(path, json={}, headers={"Origin": server.url})
            assert forged.status_code == 403 and "X-Forgather-CSRF" in forged.json()["detail"]
            elsewhere = c.post(path, json={}, headers={CSRF_HEADER: csrf, "Origin": "http://127.0.0.1:1"})
            assert elsewhere.status_code == 403
            ours = c.post(path, json={}, headers={CSRF_HEADER: csrf, "Origin": server.url})
            assert ours.status_code == 409 and ours.json()["detail"].startswith("job by-hand has no relaunch record")


def test_a_ray_jobs_log_is_read_on_its_node(monkeypatch: pytest.MonkeyPatch, jobs_dir: Path) -> None:
    """With ``--ray`` the page reads a log through the cluster (client.ray_logs: a task on
    every node; a stand-in here, the real cluster is the logs command's test): the rank
    asked, else the first that has a log, and what came after an offset."""
    asked: list[tuple] = []

    def logs_cluster(ref: str, *, address, jobs_dir, ranks, tail, after, partial, timeout) -> LogRead:
        asked.append((ref, address, list(ranks or []), tail, dict(after), partial))
        have = [1, 2]
        texts = [LogText(r, [f"rank {r} line"], 100 + r, 0, "node-b") for r in ranks or have if r in have]
        return LogRead("ray-job-1", texts=texts, missing=[r for r in ranks or [] if r not in have], have=have)

    monkeypatch.setattr(ray_logs, "logs_cluster", logs_cluster)
    with ui_server(jobs_dir, ray="head:6379") as server, bearer(server) as c:
        first = c.get("/api/jobs/ray-job-1/logs").json()
        assert (first["ranks"], first["rank"], first["lines"], first["offset"], first["host"]) == ([1, 2], 1, ["rank 1 line"], 101, "node-b")
        assert c.get("/api/jobs/ray-job-1/logs", params={"rank": "2", "after": "7"}).json()["lines"] == ["rank 2 line"]
        missing = c.get("/api/jobs/ray-job-1/logs", params={"rank": "5"})
        assert (missing.status_code, missing.json()["detail"]) == (404, "job ray-job-1 has no log of rank 5; rank(s) 1, 2 have one")
        refused = c.post("/api/jobs/ray-job-1/resume/check", json={})
        assert refused.status_code == 409 and "run `forgather control resume ray-job-1` on the node that holds it" in refused.json()["detail"]
    assert asked[:3] == [
        ("ray-job-1", "head:6379", [0], 200, {}, False),
        ("ray-job-1", "head:6379", [1], 200, {}, False),
        ("ray-job-1", "head:6379", [2], None, {2: 7}, False),
    ]


@pytest.mark.slow
def test_another_users_private_job_is_refused_by_the_logs_and_resume_as_by_every_route(procs: Procs) -> None:
    """uid 1002 serves the page (the real ``forgather control ui``) over a root holding uid
    1001's private job folder (0700) with its ranks' logs: the logs route gives the
    refusal the job's own route gives, word for word; a resume is refused with the
    library's reason; nothing of the log reaches the answer."""
    require_setpriv()
    them = OtherUser(ATTACKER_UID).with_python(users_python())
    with shared_dir(0o1777) as shared:
        paths = write_job(shared.root, "a-train", state="paused", step=5)
        with rank_log(paths.dir, 0) as log:
            log.write(b"the victim's secret line\n")
        subprocess.run(["chown", "-R", f"{VICTIM_UID}:{VICTIM_UID}", str(paths.dir)], check=True)
        os.chmod(paths.dir, 0o700)
        token = "t" * 40
        proc = procs.start(
            them.cli("control", "ui", "--no-browser", "--port", "0", "--jobs-dir", str(shared.root)), env=them.env(FORGATHER_UI_TOKEN=token), name="ui-as-1002"
        )
        url = wait_for(lambda: next((w for w in proc.output().split() if w.startswith("http://127.0.0.1:")), None), timeout=60, what="the page's address")
        base = url.split("/?")[0].rstrip("/")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            job = c.get("/api/jobs/a-train")
            logs = c.get("/api/jobs/a-train/logs", params={"rank": "0"})
            assert job.status_code == 503 and "only its owner can see or command it" in job.json()["detail"]
            assert (logs.status_code, logs.json()) == (job.status_code, job.json())
            resume = c.post("/api/jobs/a-train/resume", json={})
            assert resume.status_code == 409 and resume.json()["detail"].endswith("only its owner can resume it"), resume.json()
            assert "secret line" not in logs.text + resume.text
