"""The token goes only over a connection whose server has proved it holds it: a new
connection, whoever opened it (http.client reconnects by itself after an answer that
closes the connection), proves again first."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from forgather_control.client import HttpChannel
from forgather_control.core import Unreachable
from forgather_control.core.proof import proof

TOKEN = "per-connection-token-0123456789abcdef"
JOB = "proved-job"


def _read_request(conn: socket.socket) -> bytes:
    """One request's head (these requests have no body), or what came before EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _answer(conn: socket.socket, code: int, body: dict, *, close: bool) -> None:
    raw = json.dumps(body).encode()
    head = f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
    conn.sendall((head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + raw)


@dataclass
class SwappedListener:
    """Port P: the first listener answers one /hello with the proof, closing the
    connection; by then it has handed P to a second listener that never saw a /hello
    and records every byte it receives (answering each request 404)."""

    port: int = 0
    second_got: list[bytes] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, first: socket.socket) -> None:
        try:
            conn, _ = first.accept()
            with conn:
                head = _read_request(conn)
                nonce = urllib.parse.parse_qs(urllib.parse.urlsplit(head.split(b" ")[1].decode()).query)["nonce"][0]
                first.close()
                second = socket.socket()
                second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                second.bind(("127.0.0.1", self.port))
                second.listen(8)
                second.settimeout(0.1)
                _answer(conn, 200, {"job_id": JOB, "proof": proof(TOKEN, JOB, nonce)}, close=True)  # listening before we answer
            with second:
                while not self._stop.is_set():
                    try:
                        c, _ = second.accept()
                    except TimeoutError:
                        continue
                    with c:
                        c.settimeout(5)
                        got = _read_request(c)
                        self.second_got.append(got)
                        if got:
                            _answer(c, 404, {"detail": "no such route"}, close=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)


@pytest.fixture
def swapped() -> Iterator[SwappedListener]:
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    first.bind(("127.0.0.1", 0))
    first.listen(8)
    listener = SwappedListener(port=first.getsockname()[1])
    thread = threading.Thread(target=listener.run, args=(first,), daemon=True)
    thread.start()
    yield listener
    listener._stop.set()
    thread.join(10)
    first.close()
    assert not thread.is_alive()


def test_a_reconnect_to_a_new_listener_proves_again_and_never_sends_the_token(swapped: SwappedListener) -> None:
    ch = HttpChannel(f"http://127.0.0.1:{swapped.port}", TOKEN, timeout=5, job_id=JOB)
    try:
        with pytest.raises(Unreachable, match="does not prove"):
            ch.request("GET", f"/jobs/{JOB}/status")
    finally:
        ch.close()
    assert swapped.errors == []
    assert swapped.second_got and all(TOKEN.encode() not in got for got in swapped.second_got)
    assert swapped.second_got[0].startswith(b"GET /hello?nonce=")  # asked to prove first
