"""The rank-0 HTTP API through FastAPI's TestClient, then real uvicorn on loopback.

Every refusal must be a clear 4xx that leaves the queue empty.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest
from fastapi.testclient import TestClient

from forgather_control.callback.server import Followed, create_app
from forgather_control.client import open_job
from forgather_control.core import VALID_COMMANDS, Ledger
from forgather_control.core.errors import EXIT_UNREACHABLE, Unreachable
from forgather_control.core.rankloop import ControlLoop
from forgather_control.core.records import Status
from forgather_control.serving.thread import ServerStartError, ServerThread

TOKEN = "t0k3n-for-tests-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(max_pending=3)


@pytest.fixture
def client(ledger: Ledger) -> TestClient:
    app = create_app(job_id="job-1", ledger=ledger, status=lambda: Status(job_id="job-1", state="running", step=5), token=TOKEN)
    return TestClient(app, base_url="http://127.0.0.1")


def test_health_needs_no_token(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["ok"] is True


@pytest.mark.parametrize(
    "headers, url",
    [
        ({}, "/jobs/job-1/control"),
        ({"Authorization": "Bearer wrong"}, "/jobs/job-1/control"),
        ({"Authorization": TOKEN}, "/jobs/job-1/control"),
        ({}, f"/jobs/job-1/control?token={TOKEN}"),
        (AUTH, f"/jobs/job-1/control?token={TOKEN}"),
        ({}, f"/jobs/job-1/control?access_token={TOKEN}"),
    ],
    ids=["none", "wrong", "no-bearer", "query", "query-and-header", "access_token"],
)
def test_auth_refusals_queue_nothing(client: TestClient, ledger: Ledger, headers: dict, url: str) -> None:
    r = client.post(url, json={"command": "save_checkpoint"}, headers=headers)
    assert r.status_code == 401, r.text
    assert "token" in r.json()["detail"].lower()
    assert ledger.pending_count() == 0
    assert client.get(url.replace("/control", "/status"), headers=headers).status_code == 401


def test_accepts_and_reports(client: TestClient, ledger: Ledger) -> None:
    r = client.post("/jobs/job-1/control", json={"command": "save_checkpoint", "key": "k"}, headers=AUTH)
    assert r.status_code == 202
    cid = r.json()["id"]
    again = client.post("/jobs/job-1/control", json={"command": "save_checkpoint", "key": "k"}, headers=AUTH)
    assert again.status_code == 200 and again.json()["id"] == cid, "same key queues once"
    assert ledger.pending_count() == 1
    got = client.get(f"/jobs/job-1/commands/{cid}", headers=AUTH).json()
    assert got["state"] == "queued" and got["command"] == "save_checkpoint"
    assert client.get("/jobs/job-1/status", headers=AUTH).json()["step"] == 5
    assert client.get("/jobs", headers=AUTH).json()["jobs"][0]["job_id"] == "job-1"


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1,2]", 422, "command"),
        (b'{"cmd": "save"}', 422, "command"),
        (b'{"command": "explode"}', 422, "valid commands"),
        (b'{"command": 3}', 422, "valid commands"),
        (b'{"command": "abort", "extra": 1}', 422, "unknown field"),
        (b'{"command": "abort", "key": 5}', 422, "key"),
        (b'{"command": "abort", "key": "' + b"k" * 500 + b'"}', 422, "key"),
    ],
)
def test_bad_bodies(client: TestClient, ledger: Ledger, body: bytes, status: int, words: str) -> None:
    r = client.post("/jobs/job-1/control", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert words in json.dumps(r.json())
    if "valid" in words:
        assert r.json()["valid_commands"] == list(VALID_COMMANDS)
    assert ledger.pending_count() == 0


def test_oversized_body_is_413(client: TestClient, ledger: Ledger) -> None:
    big = json.dumps({"command": "save_checkpoint", "key": "x" * 10_000})
    r = client.post("/jobs/job-1/control", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the streaming limit must still hold
        for _ in range(20):
            yield b"x" * 1024

    r = client.post("/jobs/job-1/control", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert ledger.pending_count() == 0


def test_job_ids_and_unknown_commands(client: TestClient, ledger: Ledger) -> None:
    # an encoded slash is decoded before routing: "../x" matches no route, no handler runs
    r = client.post("/jobs/..%2Fx/control", json={"command": "abort"}, headers=AUTH)
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = client.post("/jobs/%2E%2E/control", json={"command": "abort"}, headers=AUTH)  # reaches the handler as ".."
    assert r.status_code == 400 and "invalid job id '..'" in r.json()["detail"]
    r = client.post("/jobs/.x/control", json={"command": "abort"}, headers=AUTH)
    assert r.status_code == 400 and "invalid job id" in r.json()["detail"]
    r = client.post("/jobs/other-job/control", json={"command": "abort"}, headers=AUTH)
    assert r.status_code == 404 and "job-1" in r.json()["detail"]
    assert client.get("/jobs/job-1/commands/c-nope", headers=AUTH).status_code == 404
    assert ledger.pending_count() == 0


def test_full_queue_is_429_and_after_stop_409(client: TestClient, ledger: Ledger) -> None:
    for _ in range(3):
        assert client.post("/jobs/job-1/control", json={"command": "evaluate"}, headers=AUTH).status_code == 202
    r = client.post("/jobs/job-1/control", json={"command": "evaluate"}, headers=AUTH)
    assert r.status_code == 429 and "retry" in r.json()["detail"]
    assert ledger.pending_count() == 3
    while (e := ledger.next_pending()) is not None:
        ledger.mark_applied(e.id, 1)
    assert client.post("/jobs/job-1/control", json={"command": "graceful_stop"}, headers=AUTH).status_code == 202
    r = client.post("/jobs/job-1/control", json={"command": "save_checkpoint"}, headers=AUTH)
    assert r.status_code == 409 and "stopping" in r.json()["detail"]
    assert ledger.pending_count() == 1


def test_host_header_must_be_local(client: TestClient, ledger: Ledger) -> None:
    r = client.post("/jobs/job-1/control", json={"command": "abort"}, headers={**AUTH, "Host": "evil.example.com"})
    assert r.status_code == 403 and ledger.pending_count() == 0
    for host in ("127.0.0.1:8000", "localhost", "[::1]:9"):
        assert client.get("/jobs", headers={**AUTH, "Host": host}).status_code == 200


def test_handler_error_is_a_500_not_a_crash(ledger: Ledger) -> None:
    def broken_status() -> Status:
        raise RuntimeError("status exploded")

    app = create_app(job_id="job-1", ledger=ledger, status=broken_status, token=TOKEN)
    c = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    r = c.get("/jobs/job-1/status", headers=AUTH)
    assert r.status_code == 500 and "internal error" in r.json()["detail"]
    assert c.post("/jobs/job-1/control", json={"command": "evaluate"}, headers=AUTH).status_code == 202


def test_no_auth_is_explicit(ledger: Ledger) -> None:
    app = create_app(job_id="job-1", ledger=ledger, status=Status, token=None)
    c = TestClient(app, base_url="http://127.0.0.1")
    assert c.post("/jobs/job-1/control", json={"command": "evaluate"}).status_code == 202


# -- real uvicorn ---------------------------------------------------------------------------


@pytest.mark.parametrize("hosted", [False, True], ids=["own-thread", "in-the-control-loop"])
def test_real_uvicorn_on_loopback_ephemeral_port(ledger: Ledger, hosted: bool, wait_for) -> None:
    app = create_app(job_id="job-1", ledger=ledger, status=lambda: Status(state="running"), token=TOKEN)
    loop = ControlLoop("test-hosting-loop") if hosted else None
    server = ServerThread(app, loop=loop)
    port = server.start()
    if loop is not None:  # rank 0's way: served from its control thread, no thread of its own
        names = [t.name for t in threading.enumerate()]
        assert "test-hosting-loop" in names and "forgather-control-http" not in names and server.thread is None
    try:
        assert port > 0 and server.url == f"http://127.0.0.1:{port}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/jobs/job-1/control", body=json.dumps({"command": "evaluate"}), headers={**AUTH, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 202 and json.loads(resp.read())["state"] == "queued"
        conn.close()
        # bound to loopback only: the machine's other addresses do not answer
        sock = server.server.servers[0].sockets[0]
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        server.stop()
    if loop is None:
        assert server.thread is not None and not server.thread.is_alive()
    else:
        assert server._hosted is not None and server._hosted.done.is_set()
        wait_for(lambda: not loop.alive, timeout=30, what="the loop's thread to end: nothing else in it")


@pytest.mark.parametrize("hosted", [False, True], ids=["own-thread", "in-the-control-loop"])
def test_port_in_use_raises_a_clear_error(ledger: Ledger, hosted: bool) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        app = create_app(job_id="job-1", ledger=ledger, status=Status, token=TOKEN)
        with pytest.raises(ServerStartError, match="could not start"):
            ServerThread(app, port=busy.getsockname()[1], loop=ControlLoop("test-hosting-loop") if hosted else None).start()
    finally:
        busy.close()


@pytest.mark.parametrize(
    "method, url, status, allow",
    [
        ("GET", "/nope", 404, None),
        ("GET", "/jobs/job-1", 404, None),
        ("GET", "/jobs/job-1/", 404, None),
        ("GET", "/jobs//status", 404, None),
        ("GET", "/jobs/", 404, None),  # FastAPI redirected a trailing slash; a path is a path
        ("GET", "/jobs/job-1/control", 405, "POST"),
        ("POST", "/jobs/job-1/status", 405, "GET"),
        ("HEAD", "/jobs", 405, "GET"),
        ("PUT", "/openapi.json", 405, "HEAD, GET"),
        ("HEAD", "/openapi.json", 200, None),
    ],
)
def test_other_paths_and_methods(client: TestClient, method: str, url: str, status: int, allow: str | None) -> None:
    r = client.request(method, url, headers=AUTH)
    assert r.status_code == status and r.headers.get("allow") == allow
    if method != "HEAD":
        assert r.json() == {"detail": {404: "Not Found", 405: "Method Not Allowed"}[status]}


@pytest.mark.parametrize(
    "since, ok",
    [
        ("5", True),
        (" 5 ", True),
        ("-1", True),
        ("+3", True),
        ("1_000", True),
        ("2.0", True),
        ("", False),
        ("x", False),
        ("1.5", False),
        ("0x10", False),
        ("%EF%BC%95", False),
    ],
)
def test_metrics_since_is_an_integer(client: TestClient, since: str, ok: bool) -> None:
    r = client.get(f"/jobs/job-1/metrics?since={since}", headers=AUTH)
    if ok:
        assert r.status_code == 200 and r.json()["job_id"] == "job-1"
    else:
        assert r.status_code == 422 and r.json()["detail"].startswith("bad parameter (query.since: ")
    assert client.get(f"/jobs/other/metrics?since={since}", headers=AUTH).status_code == (404 if ok else 422)  # the parameter first, as before


def test_at_the_end_the_server_waits_for_a_follower_to_read_its_commands_last_state(ledger: Ledger) -> None:
    """A stop ends the job, and its server with it: a remote ``stop --wait`` polled, found
    the server gone before it read the stop applied, and exited 4 as if the job had
    crashed. The server now knows which commands a client follows (it read their
    receipts) and, at the end, waits until each was read in its last state. Real uvicorn
    on loopback; the follower is an HTTP client in this test."""
    followed = Followed()
    app = create_app(job_id="job-1", ledger=ledger, status=lambda: Status(state="running"), token=TOKEN, followed=followed)
    server = ServerThread(app)
    port = server.start()

    def get(path: str, method: str = "GET", body: dict | None = None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, body=json.dumps(body) if body else None, headers={**AUTH, "Content-Type": "application/json"})
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def state_of(cid: str) -> str | None:
        return ledger.get(cid).state.value

    try:
        unfollowed = get("/jobs/job-1/control", "POST", {"command": "evaluate"})["id"]
        followed_id = get("/jobs/job-1/control", "POST", {"command": "graceful_stop"})["id"]
        assert get(f"/jobs/job-1/commands/{followed_id}")["state"] == "queued"  # a client follows it
        assert followed.caught_up(state_of, timeout=0)  # nothing changed since it was read
        ledger.mark_applied(followed_id, 7)
        ledger.mark_applied(unfollowed, 7)  # nobody reads this one: it holds nothing up
        assert not followed.caught_up(state_of, timeout=0.05)  # the follower has not seen the stop applied
        answered: list[bool] = []
        waiter = threading.Thread(target=lambda: answered.append(followed.caught_up(state_of, timeout=30)))
        waiter.start()
        assert get(f"/jobs/job-1/commands/{followed_id}")["state"] == "applied"  # the follower reads it ...
        waiter.join(30)
        assert answered == [True]  # ... and the end goes on at once
    finally:
        server.stop()


def test_a_follower_that_loses_the_server_says_the_command_was_sent(ledger: Ledger) -> None:
    """The job's server gone while a command is still queued (the job crashed, say): the
    wait says it lost the job and the command was sent, not the request's "nothing was
    sent", which read as if the command had never left. Real uvicorn on loopback, the
    Python API's remote handle."""
    app = create_app(job_id="job-1", ledger=ledger, status=lambda: Status(job_id="job-1", state="running", step=5), token=TOKEN, followed=Followed())
    server = ServerThread(app)
    port = server.start()
    stopped = False
    try:
        with open_job("job-1", remote=f"127.0.0.1:{port}", token=TOKEN) as handle:
            entry = handle.send("evaluate")
            errors: list[BaseException] = []
            read = threading.Event()

            def follow() -> None:
                try:
                    handle.wait(str(entry.id), timeout=60, interval=0.05, on_poll=lambda e: e is not None and read.set())
                except BaseException as exc:  # noqa: BLE001 - what the test reads
                    errors.append(exc)

            follower = threading.Thread(target=follow)
            follower.start()
            assert read.wait(60)  # it has read the receipt once: queued
            server.stop()  # the job is gone, the command still queued
            stopped = True
            follower.join(60)
    finally:
        if not stopped:
            server.stop()
    [err] = errors
    assert isinstance(err, Unreachable) and err.exit_code == EXIT_UNREACHABLE
    text = str(err)
    assert f"lost the job while following command {entry.id} (last seen queued)" in text, text
    assert "The command was sent" in text and "nothing was sent" not in text, text


def test_at_the_end_the_server_waits_for_a_watcher_to_read_the_final_status(ledger: Ledger) -> None:
    """A remote ``status --watch`` polls the status; the job's end took its server between
    two polls, and the watch ended on a lost contact instead of the job's final state.
    A status read lately means a watcher: the end waits for its next read (the final
    state is set by then). Real uvicorn on loopback."""
    followed = Followed()
    state = ["running"]
    app = create_app(job_id="job-1", ledger=ledger, status=lambda: Status(job_id="job-1", state=state[0], step=5), token=TOKEN, followed=followed)
    server = ServerThread(app)
    port = server.start()

    def read_status() -> str:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/jobs/job-1/status", headers=AUTH)
            return json.loads(conn.getresponse().read())["state"]
        finally:
            conn.close()

    try:
        assert followed.caught_up(lambda cid: None, timeout=0)  # nobody watches: nothing to wait for
        assert read_status() == "running"  # a watcher
        state[0] = "stopped"  # the job's end: its final state is set, then the server is to stop
        assert not followed.caught_up(lambda cid: None, timeout=0.05)  # the watcher has not read it
        seen: list[str] = []
        done = threading.Event()

        def watcher() -> None:  # polls as `status --watch` does, until the end has gone on
            while not done.is_set():
                seen.append(read_status())
                done.wait(0.02)

        polling = threading.Thread(target=watcher)
        polling.start()
        try:
            assert followed.caught_up(lambda cid: None, timeout=30)  # its next poll lets the end go on
        finally:
            done.set()
            polling.join(30)
        assert seen and seen[-1] == "stopped"  # and that poll read how the job ended
    finally:
        server.stop()


# -- answered at once: a health check and a status poll get no task --------------------------


def _raw_exchange(port: int, requests: bytes, answers: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``requests`` (one write: pipelined when several) and read ``answers`` answers."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(requests)
        buf = b""
        while len(out) < answers:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, f"the server closed after {len(out)} answers"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers["content-length"])
            while len(buf) < length:
                buf += sock.recv(65536)
            out.append((int(lines[0].split()[1]), headers, buf[:length]))
            buf = buf[length:]
    return out


def _get(path: str, token: str | None = TOKEN) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


@pytest.fixture
def tasks_started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths uvicorn started an ASGI task for (every request but those answered at once)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    started: list[str] = []
    real = HttpToolsProtocol._start_asgi_task

    def counting(self, cycle, app) -> None:  # type: ignore[no-untyped-def]
        started.append(cycle.scope["path"])
        real(self, cycle, app)

    monkeypatch.setattr(HttpToolsProtocol, "_start_asgi_task", counting)
    return started


@pytest.mark.parametrize("hosted", [False, True], ids=["own-thread", "in-the-control-loop"])
def test_a_health_check_and_a_status_poll_are_answered_at_once_as_the_router_answers_them(ledger: Ledger, hosted: bool, tasks_started: list[str]) -> None:
    app = create_app(job_id="job-1", ledger=ledger, status=lambda: Status(job_id="job-1", state="running", step=7), token=TOKEN, followed=Followed())
    server = ServerThread(app, loop=ControlLoop("test-now-loop") if hosted else None)
    port = server.start()
    try:
        # pipelined in one write, answered in order: at once, the routed way (a query
        # string goes through the router), refused at once, and the routed way again
        got = _raw_exchange(
            port,
            _get("/health", None) + _get("/health?probe=1", None) + _get("/jobs/job-1/status") + _get("/jobs/job-1/status", "wrong") + _get("/jobs", TOKEN),
            5,
        )
    finally:
        server.stop()
    (health, routed, status, refused, jobs) = got
    assert health[0] == routed[0] == 200 and health[2] == routed[2] and json.loads(health[2])["ok"] is True
    assert health[1]["content-type"] == routed[1]["content-type"] == "application/json"
    assert status[0] == 200 and json.loads(status[2])["step"] == 7
    assert refused[0] == 401 and refused[1]["www-authenticate"] == "Bearer"
    assert jobs[0] == 200 and json.loads(jobs[2])["jobs"][0]["step"] == 7
    assert "server" not in health[1]  # no banner naming the server and its version
    # only what the router answers got a task
    assert tasks_started == ["/health", "/jobs"]


def test_a_status_that_fails_at_once_is_a_500_and_the_connection_serves_on(ledger: Ledger, tasks_started: list[str]) -> None:
    calls = []

    def flaky() -> Status:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("status exploded")
        return Status(job_id="job-1", state="running", step=9)

    server = ServerThread(create_app(job_id="job-1", ledger=ledger, status=flaky, token=TOKEN))
    port = server.start()
    try:
        failed, served = _raw_exchange(port, _get("/jobs/job-1/status") + _get("/jobs/job-1/status"), 2)
    finally:
        server.stop()
    assert failed[0] == 500 and "RuntimeError" in json.loads(failed[2])["detail"]
    assert served[0] == 200 and json.loads(served[2])["step"] == 9
    assert tasks_started == []
