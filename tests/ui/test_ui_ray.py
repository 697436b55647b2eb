"""The page with ``--ray``: the jobs view from the cluster's listing (a node that did not
answer is said so) and a job's commands through the handle Ray found, against a real job
server in this process. Ray's side (``ray_listing``) is a stand-in here; the real
cluster is tested with ``ray_listing`` itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import msgspec
import pytest
from support.records import identity
from support.ui import ui_server

from forgather_control.callback.server import create_app
from forgather_control.client import ray_listing
from forgather_control.core import Ledger
from forgather_control.core.records import CommandResult, JobRow, MetricHistory, MissingNode, Status, decode
from forgather_control.serving.thread import ServerThread

TOKEN = "ray-page-test-token-0123456789abcdef"


@pytest.fixture
def job_server() -> Iterator[tuple[str, Ledger]]:
    ledger = Ledger()

    def status() -> Status:
        return Status(job_id="ray-job-1", state="running", step=12, max_steps=100, commands=ledger.recent(), **identity())

    server = ServerThread(
        create_app(job_id="ray-job-1", ledger=ledger, status=status, token=TOKEN, metrics=lambda since: MetricHistory(version=1, job_id="ray-job-1", series={}))
    )
    server.start()
    yield server.url, ledger
    server.stop()


def test_ray_jobs_and_commands(monkeypatch: pytest.MonkeyPatch, jobs_dir: Path, job_server: tuple[str, Ledger]) -> None:
    url, ledger = job_server
    row = decode(
        {"job_id": "ray-job-1", "state": "running", "liveness": "alive", "host": "node-a", "step": 12, "max_steps": 100, "restarts": 0, "node": "node-a"},
        JobRow,
        name="a row",
    )
    calls: list[str] = []

    def list_cluster(*, address: str, jobs_dir: str | None, include_finished: bool, timeout: float) -> Any:
        calls.append(f"list {address} {include_finished}")
        return SimpleNamespace(jobs=[row], missing_nodes=[MissingNode(node="node-b", reason="timed out")])

    def find_job(ref: str, *, address: str, jobs_dir: str | None, timeout: float) -> ray_listing.Found:
        calls.append(f"find {ref} {address}")
        return ray_listing.Found(msgspec.structs.replace(row, url=url), token=TOKEN)

    monkeypatch.setattr(ray_listing, "list_cluster", list_cluster)
    monkeypatch.setattr(ray_listing, "find_job", find_job)
    with ui_server(jobs_dir, ray="head:6379") as server:
        c = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.config.token}"})
        snap = c.get("/api/jobs").json()
        assert snap["source"] == "ray" and [r["job_id"] for r in snap["rows"]] == ["ray-job-1"]
        assert snap["missing_nodes"] == [{"node": "node-b", "reason": "timed out"}]
        assert c.get("/api/session").json()["where"] == "the Ray cluster"
        d = c.get("/api/jobs/ray-job-1").json()
        assert d["live"] is True and d["step"] == 12 and d["controllable"] and "token" not in str(d)
        receipt = c.post("/api/jobs/ray-job-1/commands", json={"command": "save", "key": "k-ray"}).json()
        assert receipt["state"] == "queued" and receipt["command"] == "save_checkpoint"
        entry = ledger.next_pending()
        ledger.mark_applied(entry.id, 13)
        ledger.complete(entry.id, CommandResult(checkpoint="/ck/13"))
        done = c.get(f"/api/jobs/ray-job-1/commands/{receipt['id']}").json()
        assert done["state"] == "completed" and done["result"]["checkpoint"] == "/ck/13"
        assert c.get("/api/jobs/ray-job-1/metrics").json()["series"] == {}
        c.close()
    assert calls[0] == "list head:6379 True"
    assert sum(call.startswith("find") for call in calls) == 1, "the cluster is asked once; the handle is kept"
