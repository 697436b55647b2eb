"""A command is "sent, may still apply" (exit 6) only when its request was written; a
failure before that (refused, reset, a /hello unanswered) is "not sent": exit 4 on
--channel http, and with channel auto a local job's command goes to its inbox instead,
saying so. Against rank 0's real server whose connection cap this test holds full."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import run_cli_here
from support.records import identity

from forgather_control.callback.server import create_app
from forgather_control.client import open_job
from forgather_control.core import JobPaths, Ledger, Unreachable, read_json, write_json_atomic
from forgather_control.core.errors import OutcomeUnknown
from forgather_control.core.records import Status, encode
from forgather_control.serving.thread import ServerThread

TOKEN = "not-sent-token-0123456789abcdef"
CAP = 2


@dataclass
class FullJob:
    root: Path
    paths: JobPaths
    ledger: Ledger


def _answers(port: int) -> bool:
    """True when a newcomer gets an HTTP answer (the cap has room)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1")
    except OSError:
        return False


@pytest.fixture
def full_job(tmp_path: Path, wait_for) -> Iterator[FullJob]:
    """A running job whose rank 0 server takes at most CAP connections, all held by
    idle connections of this process: a newcomer is accepted and aborted at once."""
    job_id = "capped"
    ledger = Ledger()
    status = lambda: Status(job_id=job_id, state="running", step=3, commands=ledger.recent(), **identity())  # noqa: E731
    server = ServerThread(create_app(job_id=job_id, ledger=ledger, status=status, token=TOKEN), cap=CAP, read_deadline=120)
    port = server.start()
    held: list[socket.socket] = []
    try:
        root = tmp_path / "jobs"
        paths = JobPaths(root, job_id).create()
        write_json_atomic(paths.endpoint, {"job_id": job_id, "url": server.url, "token": TOKEN, "protocol": 1, **identity()})
        write_json_atomic(paths.status, {**encode(status()), "heartbeat_at": time.time()})
        assert _answers(port)
        held += [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(CAP)]
        wait_for(lambda: not _answers(port), timeout=30, what="the connection cap to be full")
        yield FullJob(root, paths, ledger)
    finally:
        for s in held:
            s.close()
        server.stop()


def _inbox(paths: JobPaths) -> list[dict]:
    return [read_json(p) for p in sorted(paths.inbox.glob("*.json"))]


def test_a_full_connection_cap_sends_nothing_and_auto_falls_back_to_the_inbox(full_job: FullJob, caplog: pytest.LogCaptureFixture) -> None:
    with open_job("capped", jobs_dir=full_job.root) as h, caplog.at_level(logging.WARNING, logger="forgather_control.client.handle"):
        assert h.channel == "http"
        receipt = h.send("eval", key="k-eval")
        assert h.channel == "file" and receipt.state == "sent" and receipt.key == "k-eval" and receipt.command == "evaluate"
    assert [(c["id"], c["command"], c["key"]) for c in _inbox(full_job.paths)] == [(receipt.id, "evaluate", "k-eval")]
    assert full_job.ledger.pending_count() == 0  # nothing came over HTTP
    assert "nothing was sent" in caplog.text and "inbox" in caplog.text


def test_a_full_connection_cap_on_channel_http_is_not_sent_exit_4(full_job: FullJob) -> None:
    with open_job("capped", jobs_dir=full_job.root, channel="http") as h, pytest.raises(Unreachable) as exc:
        h.send("eval", key="k-http")
    assert not isinstance(exc.value, OutcomeUnknown) and exc.value.exit_code == 4
    assert _inbox(full_job.paths) == [] and full_job.ledger.pending_count() == 0


def test_eval_against_a_full_connection_cap_is_dropped_in_the_inbox_not_exit_6(full_job: FullJob) -> None:
    env = {"FORGATHER_JOBS_DIR": str(full_job.root)}
    http = run_cli_here("control", "eval", "capped", "--channel", "http", env=env)
    assert http.code == 4, http
    assert "may still apply" not in http.err and "nothing was sent" in http.err
    auto = run_cli_here("control", "eval", "capped", env=env)
    assert auto.code == 0, auto
    assert "dropped in its inbox" in auto.out and "inbox" in auto.err and "nothing was sent" in auto.err
    assert [c["command"] for c in _inbox(full_job.paths)] == ["evaluate"]
