"""A webhook receiver on loopback: what an apprise ``json://`` sink posts, kept for the test.

``with Webhook() as hook``: ``hook.url("path")`` is the sink's ``json://127.0.0.1:PORT/path``,
``hook.posts`` every JSON body received (in order), ``hook.alerts()`` the alert records
inside them (apprise's ``message`` field holds our alert's JSON), ``hook.wait(n)`` waits for
n posts. The server thread ends with the block; nothing outlives the test.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .waiting import wait_for


class Webhook:
    def __init__(self, *, status: int = 200) -> None:
        self.posts: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = status
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(size, 1 << 20))
                try:
                    data = json.loads(body)
                except ValueError:
                    data = {"unparsed": body.decode(errors="replace")}
                with hook._lock:
                    hook.posts.append(data)
                    hook.paths.append(self.path)
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook", daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def url(self, path: str = "alerts") -> str:
        """The apprise sink that posts here (``json://``: plain HTTP, JSON body)."""
        return f"json://127.0.0.1:{self.port}/{path}"

    def alerts(self) -> list[dict[str, Any]]:
        """Our alert records, one per post (apprise's ``message`` holds the alert's JSON)."""
        with self._lock:
            posts = list(self.posts)
        return [json.loads(p["message"]) for p in posts if isinstance(p.get("message"), str) and p["message"].startswith("{")]

    def wait(self, n: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
        """At least ``n`` alerts received; returns them all."""
        return wait_for(lambda: (a := self.alerts()) and len(a) >= n and a, timeout=timeout, interval=0.05, what=f"{n} alert(s) at the webhook")
