"""The rank-0 HTTP server: a FastAPI app from a factory, uvicorn in a daemon thread.

The app only touches the :class:`~forgather_control.control.Ledger` (thread-safe) and a
status callable; it never makes a collective and never raises into training. Every
refusal is a clear 4xx that changes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from forgather_control.control import PROTOCOL, VALID_COMMANDS, Ledger, LedgerError, UnknownCommand, is_loopback_host, is_valid_job_id, parse_command

log = logging.getLogger(__name__)

#: A command body is a few dozen bytes; anything past this is refused with 413.
MAX_BODY_BYTES = 4096
_KEY_MAX = 128


class ServerStartError(RuntimeError):
    pass


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _host_name(header: str) -> str:
    """The host part of a Host header: ``[::1]:8000`` -> ``[::1]``, ``a:1`` -> ``a``."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0]


def create_app(
    *,
    job_id: str,
    ledger: Ledger,
    status: Callable[[], dict[str, Any]],
    token: str | None,
    loopback: bool = True,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """Build the control API for one job. ``token=None`` disables auth (an explicit
    opt-out the caller must have asked for). ``loopback`` turns on the Host check that
    stops a web page in the user's browser from reaching the server by DNS rebinding."""
    app = FastAPI(title="forgather-control", version=str(PROTOCOL), docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {token}".encode() if token else None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            if loopback:
                if not is_loopback_host(_host_name(request.headers.get("host") or "")):
                    return _error(403, f"Host header {request.headers.get('host')!r} is not local; this server answers loopback clients only")
            length = request.headers.get("content-length")
            if length is not None:
                try:
                    if int(length) > max_body:
                        return _error(413, f"request body of {length} bytes is over the {max_body}-byte limit")
                except ValueError:
                    return _error(400, "malformed Content-Length header")
            if request.url.path != "/health":
                if "token" in request.query_params or "access_token" in request.query_params:
                    return _error(401, "tokens in the URL are refused (they end up in logs); send Authorization: Bearer <token>")
                if expected is not None:
                    got = (request.headers.get("authorization") or "").encode()
                    if not hmac.compare_digest(got, expected):
                        return JSONResponse(
                            {"detail": "missing or wrong bearer token; it is in the job's endpoint.json (mode 0600)"},
                            status_code=401,
                            headers={"WWW-Authenticate": "Bearer"},
                        )
            return await call_next(request)
        except Exception as exc:  # never let a handler bug escape
            log.exception("control server error")
            return _error(500, f"internal error in the control server: {type(exc).__name__}")

    def check_job(jid: str) -> JSONResponse | None:
        if not is_valid_job_id(jid):
            return _error(400, f"invalid job id {jid!r}")
        if jid != job_id:
            return _error(404, f"this server controls job {job_id!r}, not {jid!r}")
        return None

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "protocol": PROTOCOL}

    @app.get("/jobs")
    def jobs() -> dict[str, Any]:
        st = status()
        return {"jobs": [{"job_id": job_id, "state": st.get("state"), "step": st.get("step"), "max_steps": st.get("max_steps")}]}

    @app.get("/jobs/{jid}/status")
    def job_status(jid: str):
        return check_job(jid) or status()

    @app.get("/jobs/{jid}/commands/{cid}")
    def command(jid: str, cid: str):
        bad = check_job(jid)
        if bad is not None:
            return bad
        try:
            return ledger.get(cid).to_dict()
        except LedgerError as exc:
            return _error(exc.http_status, str(exc))

    @app.post("/jobs/{jid}/control", status_code=202)
    async def control(jid: str, request: Request):
        bad = check_job(jid)
        if bad is not None:
            return bad
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return _error(413, f"request body is over the {max_body}-byte limit")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'malformed JSON; send {"command": "<name>", "key": "<optional idempotency key>"}', valid_commands=list(VALID_COMMANDS))
        if not isinstance(data, dict) or "command" not in data:
            return _error(422, 'expected a JSON object with a "command" field', valid_commands=list(VALID_COMMANDS))
        extra = set(data) - {"command", "key", "options"}
        if extra:
            return _error(422, f"unknown field(s) {sorted(extra)}; only command, key and options are accepted")
        key = data.get("key")
        if key is not None and (not isinstance(key, str) or not key or len(key) > _KEY_MAX):
            return _error(422, f"key must be a non-empty string of at most {_KEY_MAX} characters")
        try:
            cmd = parse_command(data["command"])
        except UnknownCommand as exc:
            return _error(422, str(exc), valid_commands=list(VALID_COMMANDS))
        try:
            entry, created = ledger.submit(cmd, key=key, source="http", options=data.get("options"))
        except LedgerError as exc:
            return _error(exc.http_status, str(exc))
        return JSONResponse(entry.to_dict(), status_code=202 if created else 200)

    return app


class ServerThread:
    """uvicorn serving ``app`` from a daemon thread; ``start`` returns the bound port."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.host = host
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, name="forgather-control-http", daemon=True)
        self.port: int | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 - uvicorn calls sys.exit(1) when it cannot bind
            self._error = exc

    def start(self, timeout: float = 10.0) -> int:
        self.thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started:
            if not self.thread.is_alive():
                raise ServerStartError(f"control server could not start on {self.host}:{self.config.port}: {self._error!r}")
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
        if self.thread.is_alive():
            self.thread.join(timeout)
