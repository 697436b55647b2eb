"""A receipt never lies and a retry never duplicates, at the library level: every command
carries a key, one key names one command, a request sent without an answer is an
unknown outcome (not "unreachable"), and re-sending with the key returns the first
receipt on both channels, even after the job has ended."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.records import identity

from forgather_control.callback.publisher import Publisher
from forgather_control.callback.server import create_app
from forgather_control.client import FileTransport, HttpTransport, JobHandle, open_job
from forgather_control.core import Command, IdConflict, JobPaths, KeyConflict, Ledger, OutcomeUnknown, Unreachable, write_json_atomic
from forgather_control.core.proof import proof
from forgather_control.core.records import CommandFile, CommandOptions, CommandResult, Receipt, Status, encode
from forgather_control.serving.thread import ServerThread

TOKEN = "retry-test-token-0123456789abcdef"


def test_one_key_names_one_command() -> None:
    ledger = Ledger()
    first, created = ledger.submit("eval", key="k1")
    again, created_again = ledger.submit("evaluate", key="k1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(KeyConflict, match="already names evaluate"):
        ledger.submit("abort", key="k1")
    assert ledger.pending_count() == 1 and not ledger.stopping  # the abort queued nothing


def test_one_id_names_one_command_under_one_key() -> None:
    ledger = Ledger()
    first, _ = ledger.submit("save", key="k1", source="file", command_id="c-x")
    with pytest.raises(IdConflict, match="'c-x' already names save_checkpoint") as exc:
        ledger.submit("eval", key="k2", source="file", command_id="c-x")  # another command, a fresh key
    assert exc.value.http_status == 409
    with pytest.raises(IdConflict):
        ledger.submit("save", key="k2", source="file", command_id="c-x")  # the same command under another key
    assert ledger.pending_count() == 1
    again, created = ledger.submit("save", key="k1", source="file", command_id="c-x")
    assert again is first and not created and ledger.pending_count() == 1


def test_a_key_names_one_command_with_its_options() -> None:
    ledger = Ledger()
    ledger.submit("save", key="k1")
    with pytest.raises(KeyConflict, match="save_checkpoint"):
        ledger.submit("save", key="k1", options=CommandOptions(evaluate=False))
    assert ledger.pending_count() == 1


def test_server_refuses_a_reused_key_with_409_and_queues_nothing() -> None:
    ledger = Ledger()
    app = create_app(job_id="j", ledger=ledger, status=lambda: {"job_id": "j"}, token=TOKEN)
    client = TestClient(app, base_url="http://127.0.0.1")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/jobs/j/control", json={"command": "evaluate", "key": "k1"}, headers=auth).status_code == 202
    r = client.post("/jobs/j/control", json={"command": "abort", "key": "k1"}, headers=auth)
    assert r.status_code == 409 and "k1" in r.json()["detail"]
    assert ledger.pending_count() == 1 and not ledger.stopping
    same = client.post("/jobs/j/control", json={"command": "evaluate", "key": "k1"}, headers=auth)
    assert same.status_code == 200 and ledger.pending_count() == 1


@pytest.fixture
def server() -> Iterator[tuple[str, Ledger]]:
    ledger = Ledger()
    app = create_app(job_id="j", ledger=ledger, status=lambda: {"job_id": "j", "state": "running"}, token=TOKEN)
    thread = ServerThread(app)
    thread.start()
    yield thread.url, ledger
    thread.stop()


def test_every_command_carries_a_key(server: tuple[str, Ledger]) -> None:
    url, ledger = server
    with JobHandle("j", HttpTransport(url, TOKEN, "j")) as h:
        receipt = h.send("save")
    assert receipt.key.startswith("k-") and ledger.get(receipt.id).key == receipt.key


@pytest.fixture
def frozen() -> Iterator[str]:
    """A server that takes connections into its backlog and never answers: what a client
    meets when rank 0 is stopped (SIGSTOP, a long pause): the kernel completes the
    handshake and buffers the request, nobody reads it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def proves_then_freezes() -> Iterator[str]:
    """A server that proves it holds the token, takes the command and never answers it:
    rank 0 stopped (SIGSTOP, a long pause) just after its /hello."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    done = threading.Event()

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            nonce = urllib.parse.parse_qs(urllib.parse.urlsplit(head.split(b" ")[1].decode()).query)["nonce"][0]
            body = json.dumps({"job_id": "j", "proof": proof(TOKEN, "j", nonce)}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            done.wait(30)  # reads nothing more, answers nothing

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    done.set()
    thread.join(10)
    sock.close()


def test_a_server_that_never_proves_itself_was_sent_nothing(frozen: str) -> None:
    with JobHandle("j", HttpTransport(frozen, TOKEN, "j", timeout=0.3)) as h, pytest.raises(Unreachable) as exc:
        h.send(Command.GRACEFUL_STOP, key="k-stop-0")
    assert not isinstance(exc.value, OutcomeUnknown) and exc.value.exit_code == 4 and "nothing was sent" in str(exc.value)


def test_sent_without_an_answer_is_an_unknown_outcome_with_its_key(proves_then_freezes: str) -> None:
    with JobHandle("j", HttpTransport(proves_then_freezes, TOKEN, "j", timeout=0.3)) as h, pytest.raises(OutcomeUnknown) as exc:
        h.send(Command.GRACEFUL_STOP, key="k-stop-1")
    assert exc.value.key == "k-stop-1" and exc.value.command == "graceful_stop" and exc.value.exit_code == 6
    assert "may still apply" in str(exc.value) and "--key k-stop-1" in str(exc.value)


def test_nothing_sent_is_unreachable_not_unknown() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens
    with JobHandle("j", HttpTransport(f"http://127.0.0.1:{port}", TOKEN, "j", timeout=0.3)) as h, pytest.raises(Unreachable) as exc:
        h.send("save")
    assert not isinstance(exc.value, OutcomeUnknown) and exc.value.exit_code == 4


def _file_job(root: Path) -> tuple[JobPaths, Ledger, Publisher]:
    paths = JobPaths(root, "filejob").create()
    ident = identity()  # this process plays rank 0
    write_json_atomic(paths.endpoint, {"job_id": "filejob", "url": None, "token": "t", "protocol": 1, **ident})
    ledger = Ledger()
    pub = Publisher(paths=paths, ledger=ledger, status=lambda: Status(job_id="filejob", state="running", commands=ledger.recent(), **ident), inbox_grace=0)
    pub.write_status()
    return paths, ledger, pub


def test_file_channel_retry_follows_the_first_receipt_and_a_reused_key_is_rejected(tmp_path: Path) -> None:
    _, ledger, pub = _file_job(tmp_path / "jobs")
    with open_job("filejob", jobs_dir=tmp_path / "jobs") as h:
        assert h.channel == "file"
        first = h.send("save", key="k-same")
        retry = h.send("save", key="k-same")  # e.g. after an interrupted first try
        clash = h.send("abort", key="k-same")
        assert first.id != retry.id and first.state == retry.state == "sent"
        assert pub.poll_inbox() == 3
        assert ledger.pending_count() == 1 and not ledger.stopping  # one save queued, no abort
        entry = ledger.next_pending()
        ledger.mark_applied(entry.id, 5)
        ledger.complete(entry.id, CommandResult(checkpoint="/ckpt/5"))
        pub.write_status()
        done = h.wait(retry.id, key="k-same", timeout=10, interval=0.01)
        assert done.id == entry.id and done.state == "completed" and done.result.checkpoint == "/ckpt/5"
        refused = h.wait(clash.id, key="k-same", timeout=10, interval=0.01)
        assert refused.state == "rejected" and "already names save_checkpoint" in refused.reason


def test_a_retry_after_the_job_ended_returns_the_first_receipt(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    paths = JobPaths(root, "gone").create()
    receipt = Receipt(id="c-1", command="graceful_stop", key="k-late", state="completed", step=9, updated_at=time.time())
    write_json_atomic(paths.status, {"job_id": "gone", "state": "stopped", "commands": [encode(receipt)], **identity(999_999_999)})
    with open_job("gone", jobs_dir=root) as h:
        assert h.send("stop", key="k-late") == receipt
        with pytest.raises(Exception, match="has ended") as exc:
            h.send("stop", key="k-other")
    assert exc.value.exit_code == 5
    assert FileTransport(paths).entry("c-1") == receipt


def test_file_channel_a_reused_id_is_refused_under_an_id_of_its_own(tmp_path: Path) -> None:
    paths, ledger, pub = _file_job(tmp_path / "jobs")
    with open_job("filejob", jobs_dir=tmp_path / "jobs") as h:
        first = h.send("save", key="k-first")
        assert pub.poll_inbox() == 1
        entry = ledger.next_pending()
        ledger.mark_applied(entry.id, 5)
        ledger.complete(entry.id, CommandResult(checkpoint="/ckpt/5"))
        # a hand-written file reuses the save's id for an abort under a fresh key
        reused = CommandFile(id=first.id, command="abort", key="k-fresh", sent_at=time.time())
        write_json_atomic(paths.inbox / f"{time.time_ns()}-{first.id}.json", encode(reused))
        assert pub.poll_inbox() == 1
        assert ledger.pending_count() == 0 and not ledger.stopping  # nothing queued
        pub.write_status()
        refused = h.wait(first.id, key="k-fresh", timeout=10, interval=0.01)
        assert refused.state == "rejected" and refused.command == "abort" and refused.id != first.id
        assert refused.id.startswith(f"{first.id}-refused-") and f"{first.id!r} already names save_checkpoint" in refused.reason
        kept = h.wait(first.id, key="k-first", timeout=10, interval=0.01)
        assert kept.state == "completed" and kept.command == "save_checkpoint" and kept.result.checkpoint == "/ckpt/5"
        # the same file again (same id, command and key) is the same command: nothing new
        write_json_atomic(paths.inbox / f"{time.time_ns()}-{first.id}.json", encode(CommandFile(id=first.id, command="save_checkpoint", key="k-first")))
        assert pub.poll_inbox() == 1
        assert ledger.pending_count() == 0 and len(ledger.recent()) == 2
