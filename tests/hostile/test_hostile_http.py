"""The job's HTTP API under attack, against a live server in a real training loop.

- the findings: DNS-rebinding Host headers, a deeply nested body, a wrong content type,
  a client that leaves mid-body, an impostor on a dead job's port;
- the API fuzzed from its own OpenAPI (schemathesis, bounded, both valid and invalid
  requests): no 5xx, every answer as the schema declares, nothing applied that was
  refused, and the training loop keeps stepping.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from support.scripts import CONTROLLED_LOOP

from forgather_control.callback import Controller
from forgather_control.core import JobPaths, read_json
from forgather_control.core.proof import new_nonce, proof_matches


class LiveJob:
    """A real loop stepping in a thread, its Controller serving on loopback."""

    def __init__(self, jobs_dir: Path, job_id: str = "fuzzed") -> None:
        self.job_id = job_id
        self.steps = 0
        self.stop_seen = False
        self._halt = threading.Event()
        self._ready = threading.Event()
        self.ctl = Controller(job_id=job_id, jobs_dir=jobs_dir, signals=(), max_steps=None, poll_interval=0.05)
        # a knob, so a fuzzed ``set`` can be accepted as well as refused
        self.temperature = self.ctl.knob("temperature", 1.0, min=0.0, max=10.0)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the loop did not start"
        endpoint = read_json(JobPaths(jobs_dir, job_id).endpoint)
        self.url, self.token = endpoint["url"], endpoint["token"]

    def _loop(self) -> None:
        with self.ctl:
            self._ready.set()
            for step in itertools.count(1):
                if self._halt.is_set():
                    return
                act = self.ctl.step(step, {"loss": 1.0 / step})
                if act.evaluate:
                    self.ctl.evaluation_done({"eval_loss": 0.5})
                if act.save:
                    self.ctl.checkpoint_saved(self.ctl.paths.dir)  # a path that exists: what was saved is not the point here
                self.stop_seen |= act.stop  # a real loop would stop; this one keeps stepping to show it can
                self.steps = step
                time.sleep(0.001)

    def close(self) -> None:
        self._halt.set()
        self._thread.join(30)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveJob]:
    job = LiveJob(tmp_path / "jobs")
    yield job
    job.close()


@pytest.fixture(scope="module")
def shared_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveJob]:
    """One live job for the tests that only read from it (the Host rule): a Controller per
    case only adds its start and stop."""
    job = LiveJob(tmp_path_factory.mktemp("shared") / "jobs")
    yield job
    job.close()


def _raw(url: str, method: str, path: str, *, headers: dict[str, str], body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "host, ok",
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8080", True),
        ("localhost", True),
        ("localhost:1", True),
        ("[::1]:8080", True),
        ("127.1.2.3", True),
        ("127.0.0.1.evil.example", False),
        ("127.evil.example", False),
        ("localhost:evil.example", False),
        ("[::1]evil.example", False),
        ("127.0.0.1:8080@evil.example", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_the_host_check_is_exact(shared_live: LiveJob, host: str, ok: bool) -> None:
    code, _ = _raw(shared_live.url, "GET", "/health", headers={"Host": host})
    assert code == (200 if ok else 403), host


def test_bodies_that_are_not_commands_get_a_4xx_and_no_error_log(live: LiveJob, caplog: pytest.LogCaptureFixture) -> None:
    auth = {"Host": "127.0.0.1", "Authorization": f"Bearer {live.token}"}
    path = f"/jobs/{live.job_id}/control"
    deep = b"[" * 1000 + b"]" * 1000
    with caplog.at_level(logging.DEBUG):
        assert _raw(live.url, "POST", path, headers={**auth, "Content-Type": "application/json"}, body=deep)[0] == 400
        assert _raw(live.url, "POST", path, headers={**auth, "Content-Type": "text/plain"}, body=b'{"command": "save"}')[0] == 415
        assert _raw(live.url, "POST", path, headers=auth, body=b'{"command": "save"}')[0] == 415
        code, body = _raw(live.url, "POST", path, headers={**auth, "Content-Type": "application/json; charset=utf-8"}, body=b'{"command": "eval"}')
        assert code == 202 and body["command"] == "evaluate"
        # a client that leaves mid-body
        host, port = live.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {live.token}\r\n".encode())
            s.sendall(b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"comm')
        assert _raw(live.url, "GET", "/health", headers={"Host": "127.0.0.1"})[0] == 200  # and the server answers on
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert live.ctl.ledger.pending_count() <= 1  # only the eval


@pytest.mark.parametrize(
    "changes, why",
    [
        ([{"name": "nope", "value": 1}], "this job has no knob 'nope'; its knobs: temperature"),
        ([{"name": "temperature", "value": 11}], "temperature must be at most 10, not 11"),
        ([{"name": "temperature", "value": "hot"}], "'hot' is not a number"),
        ([{"name": "temperature", "value": True}], "temperature is a float, not a bool"),
        ([{"name": "temperature", "value": 1}, {"name": "temperature", "value": 2}], "temperature is given twice"),
        ([{"name": "temperature", "value": 1}] * 9, None),  # over the 8 a set carries: the schema's limit
        ([{"name": "Temperature", "value": 1}], None),  # not a knob name: the schema's pattern
        ([{"name": "temperature", "value": "x" * 65}], None),
        ([{"name": "temperature", "value": [1]}], None),
        ([], None),
    ],
)
def test_a_set_the_job_refuses_is_422_and_queues_nothing(live: LiveJob, changes: list[Any], why: str | None) -> None:
    auth = {"Host": "127.0.0.1", "Authorization": f"Bearer {live.token}", "Content-Type": "application/json"}
    body = json.dumps({"command": "set", "options": {"changes": changes}}).encode()
    code, answer = _raw(live.url, "POST", f"/jobs/{live.job_id}/control", headers=auth, body=body)
    assert code == 422, answer
    if why is not None:
        assert why in answer["detail"] and answer["refused"] == "knob", answer
    assert live.ctl.ledger.recent(10) == [] and live.temperature.value == 1.0


def test_the_server_proves_it_holds_the_token(live: LiveJob) -> None:
    nonce = new_nonce()
    code, body = _raw(live.url, "GET", f"/hello?nonce={nonce}", headers={"Host": "127.0.0.1"})
    assert code == 200 and body["job_id"] == live.job_id and proof_matches(live.token, live.job_id, nonce, body["proof"])
    assert not proof_matches("another-token", live.job_id, nonce, body["proof"])
    assert _raw(live.url, "GET", "/hello?nonce=../etc", headers={"Host": "127.0.0.1"})[0] == 400
    assert _raw(live.url, "GET", "/openapi.json", headers={"Host": "127.0.0.1"})[0] == 401  # the schema is behind the token


# -- the impostor --------------------------------------------------------------------------
class _Impostor(http.server.BaseHTTPRequestHandler):
    """Whatever takes a dead rank 0's port: claims to be the job, collects tokens."""

    seen: ClassVar[list[str]] = []
    job_id = ""

    def do_GET(self) -> None:
        _Impostor.seen.append(self.headers.get("Authorization") or "")
        if self.path.startswith("/hello"):
            body = {"job_id": self.job_id, "proof": "0" * 64, "protocol": 1}
        elif self.path == "/jobs":
            body = {"jobs": [{"job_id": self.job_id, "state": "running", "step": 424242}]}
        else:
            body = {"job_id": self.job_id, "state": "running", "step": 424242, "last_checkpoint": "/fake"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


def test_an_impostor_on_a_dead_jobs_port_never_gets_the_token(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    env = {**os.environ, "FORGATHER_JOBS_DIR": str(jobs), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, CONTROLLED_LOOP, "victim", str(tmp_path / "out")]  # a real job's port and token; no training needed
    job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        paths = JobPaths(jobs, "victim")
        deadline = time.monotonic() + 120
        while not (read_json(paths.endpoint, quiet=True) or {}).get("url"):
            assert job.poll() is None and time.monotonic() < deadline, "the job never served"
            time.sleep(0.1)
        endpoint = read_json(paths.endpoint)
        os.kill(job.pid, signal.SIGKILL)
        job.wait(60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    host, port = endpoint["url"].removeprefix("http://").rsplit(":", 1)
    _Impostor.seen, _Impostor.job_id = [], "victim"
    server = http.server.ThreadingHTTPServer((host, int(port)), _Impostor)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        cli = [sys.executable, "-m", "forgather_control.cli.main", "control"]

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=120)

        status = run("status", "victim", "--json")
        assert status.returncode == 0, status.stderr
        d = json.loads(status.stdout)
        assert d["state"] == "dead" and d.get("step") != 424242 and d.get("last_checkpoint") != "/fake", d
        listed = {r["job_id"]: r for r in json.loads(run("list", "--json").stdout)}
        assert listed["victim"]["state"] == "dead"
        save = run("save", "victim")
        assert save.returncode == 5 and "dead" in save.stderr, save.stderr
        cleaned = json.loads(run("cleanup", "--yes", "--json", "--include-resumable").stdout)
        assert "victim" in cleaned["deleted"]
        # and through --remote, where the user names the address: the proof fails first
        remote = run("status", "victim", "--remote", f"{host}:{port}", "--token", endpoint["token"], "--json")
        assert remote.returncode == 1 and "does not prove" in remote.stderr and "not sent" in remote.stderr
    finally:
        server.shutdown()
        server.server_close()
    assert all(endpoint["token"] not in seen for seen in _Impostor.seen), _Impostor.seen


# -- the fuzz -------------------------------------------------------------------------------
@pytest.mark.slow  # a fuzz of hundreds of requests: the full suite's, not what one runs while working
def test_fuzz_the_api_from_its_own_schema(live: LiveJob) -> None:
    import schemathesis  # here, not at the top: every xdist worker collects this module, one runs this test
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

    auth = {"Authorization": f"Bearer {live.token}"}
    code, spec = _raw(live.url, "GET", "/openapi.json", headers={"Host": "127.0.0.1", **auth})
    assert code == 200 and spec["paths"]
    schema = schemathesis.openapi.from_dict(spec)
    accepted: set[str] = set()
    answered: list[int] = []
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
    before = live.steps
    for result in schema.get_all_operations():
        operation = result.ok()
        ours = {"jid": live.job_id} if "{jid}" in operation.path else None
        # any values, invalid values, and (so commands really reach the job) its own id
        for mode, path in (("positive", None), ("negative", None), ("positive", ours)):
            if mode == "positive" and path is None and ours is not None and operation.method.upper() == "POST":
                continue  # a random job id only ever meets 404: spend the examples on the job's own
            strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode), path_parameters=path)

            @settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case: Any) -> None:
                response = case.call(base_url=live.url, headers=auth)
                case.validate_response(response, checks=checks)
                answered.append(response.status_code)
                if response.request.method == "POST" and response.status_code in (200, 202):
                    accepted.add(response.json()["id"])

            try:
                run()
            except Unsatisfiable:
                assert mode == "negative"  # nothing to get wrong in a call with no parameters
    assert len(answered) > 100 and all(code < 500 for code in answered)
    assert {code // 100 for code in answered} == {2, 4}  # both accepted and refused requests were made
    assert accepted  # and some commands were queued
    recorded = {entry.id for entry in live.ctl.ledger.recent(1000) if entry.source == "http"}
    assert recorded <= accepted  # nothing in the ledger that the server refused
    deadline = time.monotonic() + 30
    while live.steps <= before + 10:  # the loop kept stepping through it all
        assert time.monotonic() < deadline, "the training loop stopped stepping"
        time.sleep(0.01)


def test_failing_accepts_are_logged_once_an_interval(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from forgather_control.serving.guard import quiet_accept_errors

    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop, interval=60.0)
        with caplog.at_level(logging.WARNING):
            for _ in range(500):
                loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")})
    finally:
        loop.close()
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None and "Too many open files" in lines[0].getMessage()
