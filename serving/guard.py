"""Limits that keep rank 0's control plane up whoever connects: a cap on connections,
a deadline for each request to arrive, and accept errors logged once a minute.

Without them, a thousand idle connections (no token needed: nothing has been sent yet)
take every file descriptor of the training process under the common limit of 1,024:
HTTP and the inbox fail with EMFILE, status.json stops, and asyncio logs a traceback per
failed accept in a tight loop. uvicorn has no header or body read timeout (a request
dripped a byte a second holds its connection forever) and no cap on idle connections
(``limit_concurrency`` answers 503 only once a request has arrived).

The guard is a subclass of uvicorn's protocol that only adds to the asyncio ``Protocol``
methods (``connection_made``, ``connection_lost``) every version has, and reads the
request cycle's own state to tell a request still arriving from one being answered. It
is uvicorn's httptools protocol (llhttp, in C: a request parsed in microseconds) when
httptools is installed, else its h11 one (pure Python, about 0.1 ms more a request:
``benchmarks/bench_http.py``).

The httptools one also answers at once what its app can answer at once: an app with
``answer_now(scope)`` (the control API's guard: a health check, a status poll, or their
refusal) gets no task for such a request, only a callback at the same point of the loop
a task's first step would run; what it returns is sent through the request's own cycle,
so keep-alive, pipelining and the limits work as for any answer. A task costs about a
quarter of such a request's time in the server (``bench_http.py``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ACCEPT_LOG_INTERVAL", "READ_DEADLINE", "connection_cap", "guarded_protocol", "quiet_accept_errors"]

#: Seconds a client has to send a whole request (headers and body), counted from the
#: connection (or from the previous answer on a kept-alive one).
READ_DEADLINE = 10.0
#: At most one log line a minute about failing accepts (EMFILE and the like).
ACCEPT_LOG_INTERVAL = 60.0
#: Never more connections than this, whatever the descriptor limit.
MAX_CONNECTIONS = 256


def connection_cap() -> int:
    """Open connections allowed: a quarter of the process's descriptor limit (so the
    training, its data loaders and our own files keep three quarters), at most
    :data:`MAX_CONNECTIONS`, at least 8."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // 4))


class _Limits:
    """A connection cap and a request read deadline, for either of uvicorn's protocols."""

    cap: int = MAX_CONNECTIONS
    read_deadline: float = READ_DEADLINE
    connections: Any
    transport: Any
    loop: Any
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.cap:
            # abort, not close: the descriptor is released now, not after a lingering FIN
            transport.abort()
            return
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm()  # a kept-alive connection gets the same time for its next request

    def connection_lost(self, exc: Exception | None) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
        self._deadline = self.loop.call_later(self.read_deadline, self._expired)

    def _expired(self) -> None:
        """The request did not arrive whole in time (idle, or dripped): drop it. A
        request that has arrived and is being answered is left alone."""
        self._deadline = None
        if self._answering():
            return
        self.transport.abort()

    def _answering(self) -> bool:
        """A whole request has arrived and its answer is not complete yet."""
        raise NotImplementedError


def _h11_protocol() -> type[_Limits]:
    """uvicorn's h11 protocol with the limits (imported only when httptools is not
    installed: h11 is half a MiB a rank need not carry)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(_Limits, H11Protocol):
        def _answering(self) -> bool:
            return self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED) and self.cycle is not None and not self.cycle.response_complete

    return GuardedH11Protocol


def _httptools_protocol() -> type[_Limits] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return None

    class GuardedHttpToolsProtocol(_Limits, HttpToolsProtocol):
        """uvicorn's httptools protocol with the limits (a cycle's body is in when
        ``more_body`` is false), answering at once what its app can (see the module)."""

        def _answering(self) -> bool:
            cycle = self.cycle
            return cycle is not None and not cycle.more_body and not cycle.response_complete

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            now = getattr(app, "answer_now", None)
            answer = now(cycle.scope) if now is not None else None
            if answer is None:
                super()._start_asgi_task(cycle, app)
            else:
                self.loop.call_soon(self._answer_now, cycle, app, answer)

        def _answer_now(self, cycle: Any, app: Any, answer: Any) -> None:
            """Send ``answer`` (a coroutine function of the ASGI ``send``) through ``cycle``
            without a task: each send writes at once unless the transport has paused
            writing, in which case the answer goes the usual way."""
            if self.flow.write_paused:
                super()._start_asgi_task(cycle, app)
                return
            sending = answer(cycle.send)
            try:
                sending.send(None)
            except StopIteration:
                pass  # sent
            except Exception:
                log.exception("an answer could not be sent")
                self.transport.close()
            else:
                # Its own write filled the client's buffer (a client that reads nothing):
                # the rest would wait, and this connection is not kept for it.
                sending.close()
                self.transport.close()
            finally:
                cycle.on_response = lambda: None  # as uvicorn's run_asgi leaves a cycle

    return GuardedHttpToolsProtocol


def guarded_protocol(cap: int, read_deadline: float = READ_DEADLINE) -> type[_Limits]:
    """A protocol class with these limits (uvicorn takes a class, not an instance):
    httptools' when it is installed, else h11's."""
    base = _httptools_protocol() or _h11_protocol()
    return type(base.__name__, (base,), {"cap": cap, "read_deadline": read_deadline})


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, *, interval: float = ACCEPT_LOG_INTERVAL) -> None:
    """Route the loop's unhandled errors through a handler that logs a failing accept
    once per ``interval`` (with how many it swallowed), not once per attempt."""
    state: dict[str, Any] = {"last": 0.0, "skipped": 0}
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" not in message:
            if default is not None:
                default(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - state["last"] < interval:
            state["skipped"] += 1
            return
        exc = context.get("exception")
        log.warning(
            "forgather control: the HTTP server cannot accept connections (%s: %s)%s; the file channel and status.json go on",
            type(exc).__name__ if exc else "error",
            exc or message,
            f" ({state['skipped']} more since the last report)" if state["skipped"] else "",
        )
        state["last"], state["skipped"] = now, 0

    loop.set_exception_handler(handler)
