"""uvicorn serving an app from a daemon thread, guarded: the one server loop both rank 0's
control API and the web page run in. Rank 0's runs in its control loop's thread
(``loop=``, :meth:`forgather_control.core.rankloop.ControlLoop.host`): no thread of its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from forgather_control.core.rankloop import ControlLoop, Hosted
from forgather_control.serving.guard import READ_DEADLINE, connection_cap, guarded_protocol, quiet_accept_errors

__all__ = ["ServerStartError", "ServerThread"]


class ServerStartError(RuntimeError):
    """The server could not bind, or did not start in time."""


class ServerThread:
    """uvicorn serving ``app`` from a daemon thread; ``start`` returns the bound port.

    Guarded (:mod:`.guard`): at most ``cap`` connections (default: a quarter of the
    descriptor limit), each request must arrive whole within ``read_deadline``, a small
    accept backlog, and accept errors logged once a minute.

    ``loop``: serve from that control loop's thread instead of a thread of its own."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cap: int | None = None,
        read_deadline: float = READ_DEADLINE,
        loop: ControlLoop | None = None,
    ) -> None:
        import uvicorn

        self.host = host
        self.cap = cap if cap is not None else connection_cap()
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # no proxy in front: X-Forwarded-* from a local client is not read
            server_header=False,  # no banner naming the server and its version (and one header less a request)
            lifespan="off",
            loop="asyncio",
            http=guarded_protocol(self.cap, read_deadline),
            ws="none",
            backlog=64,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(self.config)
        self._loop = loop
        self.thread: threading.Thread | None = None if loop is not None else threading.Thread(target=self._run, name="forgather-control-http", daemon=True)
        self._hosted: Hosted | None = None
        self.port: int | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - uvicorn calls sys.exit(1) when it cannot bind
            self._error = exc

    async def _serve(self) -> None:
        quiet_accept_errors(asyncio.get_running_loop())
        await self.server.serve()

    def _running(self) -> bool:
        if self._hosted is not None:
            return not self._hosted.done.is_set()
        return self.thread is not None and self.thread.is_alive()

    def start(self, timeout: float = 10.0) -> int:
        if self._loop is not None:
            self._hosted = self._loop.host(self._serve)
        elif self.thread is not None:
            self.thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started:
            if not self._running():
                error = self._hosted.error if self._hosted is not None else self._error
                raise ServerStartError(f"control server could not start on {self.host}:{self.config.port}: {error!r}")
            if waited >= timeout:
                self.stop()
                raise ServerStartError(f"control server did not start within {timeout:g}s")
            deadline.wait(0.005)
            waited += 0.005
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self._hosted is not None:
            if not (self._loop is not None and self._loop.in_loop):
                self._hosted.done.wait(timeout)
        elif self.thread is not None and self.thread.is_alive():
            self.thread.join(timeout)
