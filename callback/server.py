"""The rank-0 HTTP server: a plain ASGI app from a factory, uvicorn in a daemon thread.

The app only touches the :class:`~forgather_control.core.commands.Ledger` (thread-safe) and a
status callable; it never makes a collective and never raises into training. Every
refusal is a clear 4xx that changes nothing. Requests are read with msgspec
(:mod:`.wire`), answers written with it: no FastAPI, Starlette or pydantic at run time
(they cost rank 0 about 15 MiB). :mod:`.api` describes the routes; that description is
``openapi.json`` beside this module (regenerated and checked by
``tests/callback/test_server_schema.py``), published at ``/openapi.json`` behind the
token, like everything but ``/health`` and ``/hello``.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from forgather_control.core import PROTOCOL, VALID_COMMANDS, Ledger, LedgerError, UnknownCommand, is_valid_job_id, parse_command
from forgather_control.core.proof import proof
from forgather_control.core.records import CommandOptions, KnobChange, encode
from forgather_control.core.records import MetricHistory as MetricRecord
from forgather_control.core.records import Status as StatusRecord
from forgather_control.serving.rules import MAX_BODY_BYTES, local_host_header

from .wire import CommandRequest, describe, receipt

log = logging.getLogger(__name__)

#: Routes a client may call without the token.
OPEN_PATHS = frozenset({"/health", "/hello"})
#: The published schema: :mod:`.api`'s description, written out (package data).
SCHEMA_FILE = Path(__file__).with_name("openapi.json")
_NONCE = re.compile(r"[0-9a-f]{16,128}")
#: An integer query parameter as the schema's validator took it: signs, ``_`` between
#: digits, a zero fraction, blanks around.
_INTEGER = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")


JSON = b"application/json"
_json = msgspec.json.Encoder().encode  # a diverging metric (NaN, an infinity) is written null
_decode_request = msgspec.json.Decoder(CommandRequest).decode
_decode_any = msgspec.json.Decoder().decode


class Answer:
    """A JSON answer, sent as it is (the routes' schemas are in ``/openapi.json``, which
    the fuzz test holds every answer to; nothing validates an answer a second time)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes, status: int = 200, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.body, self.status, self.headers = body, status, headers

    async def __call__(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(self.body)), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def _answer(body: Any, status: int = 200) -> Answer:
    return Answer(_json(body), status)


def _error(status: int, detail: str, **extra: Any) -> Answer:
    return _answer({"detail": detail, **extra}, status)


class _Disconnected(Exception):
    """The client left before its request's body arrived."""


class Guard:
    """Every request's gate, as plain ASGI: a Host header that names this machine (DNS
    rebinding), a bounded and well-formed Content-Length, the bearer token (compared in
    constant time; never taken from the URL) on all but ``OPEN_PATHS``; and no error
    escapes as anything but a 500 with its type."""

    def __init__(self, app: Any, *, token: str | None, loopback: bool, max_body: int, fast: dict[str, Callable[[], bytes]] | None = None) -> None:
        self.app = app
        #: exact paths answered here for a GET with no query (see create_app)
        self.fast = fast if fast is not None else {}
        self.expected = f"Bearer {token}".encode() if token else None
        self.loopback = loopback
        self.max_body = max_body

    def answer_now(self, scope: dict[str, Any]) -> Answer | None:
        """The answer to a GET of a ``fast`` path, made at once (the most asked: a status
        poll, a health check), or its refusal; None for any other request. The server's
        protocol sends it without a task (serving/guard.py); ``__call__`` gives the same."""
        if scope["method"] != "GET" or scope.get("query_string"):
            return None
        fast = self.fast.get(scope["path"])
        if fast is None:
            return None
        refusal = self._refusal(scope)
        if refusal is not None:
            return refusal
        try:
            return Answer(fast())
        except Exception as exc:
            log.exception("control server error")
            return _error(500, f"internal error in the control server: {type(exc).__name__}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan, no websockets (the server thread asks for neither)
        answer = self.answer_now(scope) or self._refusal(scope)
        if answer is not None:
            await answer(send)
            return
        started = False

        async def watched(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except _Disconnected:
            log.debug("a client left before its request was read")
            if not started:
                await _error(400, "the request ended before its body arrived")(send)
        except Exception as exc:  # never let a handler bug escape
            log.exception("control server error")
            if not started:
                await _error(500, f"internal error in the control server: {type(exc).__name__}")(send)

    def _refusal(self, scope: dict[str, Any]) -> Answer | None:
        host = length = auth = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"content-length":
                length = value
            elif name == b"authorization":
                auth = value
        if self.loopback and not local_host_header((host or b"").decode("latin-1")):
            return _error(403, f"Host header {(host or b'').decode('latin-1')!r} is not local; this server answers loopback clients only")
        if length is not None:
            if not length.isdigit():
                return _error(400, "malformed Content-Length header")
            if int(length) > self.max_body:
                return _error(413, f"request body of {int(length)} bytes is over the {self.max_body}-byte limit")
        if scope["path"] in OPEN_PATHS:
            return None
        query = scope.get("query_string") or b""
        if query and any(k in ("token", "access_token") for k, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)):
            return _error(401, "tokens in the URL are refused (they end up in logs); send Authorization: Bearer <token>")
        if self.expected is not None and not hmac.compare_digest(auth or b"", self.expected):
            return Answer(
                _json({"detail": "missing or wrong bearer token; it is in the job's endpoint.json (mode 0600)"}),
                401,
                [(b"www-authenticate", b"Bearer")],
            )
        return None


#: A route's handler: the path's parameters, the request's scope and receive.
Handler = Callable[[tuple[str, ...], dict[str, Any], Any], Awaitable[Answer]]


class Routes:
    """The API's routes as plain ASGI: an exact path, ``/jobs/{jid}/<what>`` or
    ``/jobs/{jid}/commands/{cid}`` (a parameter is one segment of the decoded path, as
    the description's router matched it). Another path is 404, another method 405 with
    ``Allow``, the answers FastAPI's router gave; a path with a trailing slash is just
    another path (404, where FastAPI redirected)."""

    def __init__(self, exact: dict[str, dict[str, Handler]], per_job: dict[str, dict[str, Handler]], command: dict[str, Handler]) -> None:
        self.exact, self.per_job, self.command = exact, per_job, command

    def match(self, path: str) -> tuple[dict[str, Handler] | None, tuple[str, ...]]:
        methods = self.exact.get(path)
        if methods is not None:
            return methods, ()
        parts = path.split("/")
        if len(parts) < 4 or parts[0] or parts[1] != "jobs" or not parts[2] or not all(parts[3:]):
            return None, ()
        if len(parts) == 4:
            return self.per_job.get(parts[3]), (parts[2],)
        if len(parts) == 5 and parts[3] == "commands":
            return self.command, (parts[2], parts[4])
        return None, ()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        methods, params = self.match(scope["path"])
        if methods is None:
            answer = _error(404, "Not Found")
        elif (handler := methods.get(scope["method"])) is None:
            answer = Answer(_json({"detail": "Method Not Allowed"}), 405, [(b"allow", ", ".join(methods).encode())])
        else:
            answer = await handler(params, scope, receive)
        await answer(send)


def _query(scope: dict[str, Any]) -> dict[str, str]:
    """The query's parameters, the last of each name."""
    return dict(parse_qsl((scope.get("query_string") or b"").decode("latin-1"), keep_blank_values=True))


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _body(receive: Any, limit: int) -> bytes | None:
    """The request's body; None when it grows over ``limit`` (sent without a length)."""
    body = b""
    while True:
        message: dict[str, Any] = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        body += chunk
        if len(body) > limit:
            return None
        if not message.get("more_body"):
            return body


_schema: bytes | None = None


def published_schema() -> bytes:
    """``openapi.json`` as shipped, read once."""
    global _schema
    if _schema is None:
        _schema = SCHEMA_FILE.read_bytes()
    return _schema


#: At the job's end the server waits at most this long (seconds) for the clients that
#: follow a command to read its last state (:class:`Followed`).
FOLLOW_LINGER = 2.0


#: A client that read the status this recently (seconds) is watching it (``status --watch``).
WATCHING = 5.0


class Followed:
    """What clients follow over HTTP: the commands (``--wait``), each with the state it
    was last served in, and the status (``status --watch``). At the job's end the server
    stays until each command has been read in its state then, and a status watched
    lately has been read once more (the job's final state), for at most
    :data:`FOLLOW_LINGER`: a stop ends the job, and its follower, who polls, found the
    server gone before it read the stop applied, so a remote ``stop --wait`` could not
    tell the stop from a crash (it exited 4), nor a watch the job's end from a lost
    contact. What nobody follows holds nothing up."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._served: dict[str, str] = {}
        self._status_at: float | None = None  # monotonic, the last status served

    def served(self, command_id: str, state: str) -> None:
        with self._cond:
            self._served[command_id] = state
            self._cond.notify_all()

    def status_served(self) -> None:
        with self._cond:
            self._status_at = time.monotonic()
            self._cond.notify_all()

    def caught_up(self, state_of: Callable[[str], str | None], *, timeout: float = FOLLOW_LINGER) -> bool:
        """Wait until every followed command was last served in its state now
        (``state_of``: None for one the ledger no longer has) and, when the status was
        watched lately, it has been served since this call (the caller has its final
        state set), or ``timeout``."""
        start = time.monotonic()
        deadline = start + timeout
        with self._cond:
            watched = self._status_at is not None and start - self._status_at < WATCHING
            while True:
                behind = [c for c, seen in self._served.items() if state_of(c) not in (None, seen)]
                left = deadline - time.monotonic()
                if not behind and not (watched and self._status_at is not None and self._status_at < start):
                    return True
                if left <= 0:
                    log.info("forgather control: a client following the job had not read how it ended when its server stopped")
                    return False
                self._cond.wait(left)


def create_app(
    *,
    job_id: str,
    ledger: Ledger,
    status: Callable[[], StatusRecord],
    token: str | None,
    loopback: bool = True,
    max_body: int = MAX_BODY_BYTES,
    metrics: Callable[[int | None], MetricRecord] | None = None,
    followed: Followed | None = None,
) -> Guard:
    """Build the control API for one job (an ASGI app). ``token=None`` disables auth (an
    explicit opt-out the caller must have asked for). ``loopback`` turns on the Host
    check that stops a web page in the user's browser from reaching the server by DNS
    rebinding. ``status`` and ``metrics`` give records; they become JSON here, at the edge."""

    def check_job(jid: str) -> Answer | None:
        if not is_valid_job_id(jid):
            return _error(400, f"invalid job id {jid!r}")
        if jid != job_id:
            return _error(404, f"this server controls job {job_id!r}, not {jid!r}")
        return None

    health_body = _json({"ok": True, "protocol": PROTOCOL})

    def healthy() -> bytes:
        return health_body

    def status_now() -> bytes:
        body = _json(encode(status()))
        if followed is not None:
            followed.status_served()
        return body

    async def health(params: tuple[str, ...], scope: dict[str, Any], receive: Any) -> Answer:
        return Answer(healthy())

    async def hello(params: tuple[str, ...], scope: dict[str, Any], receive: Any) -> Answer:
        """Proof that this server holds the job's token, before a client sends it."""
        nonce = _query(scope).get("nonce", "")
        if not _NONCE.fullmatch(nonce):
            return _error(400, "nonce must be 16-128 lowercase hex characters")
        return _answer({"job_id": job_id, "proof": proof(token or "", job_id, nonce), "protocol": PROTOCOL})

    async def jobs(params: tuple[str, ...], scope: dict[str, Any], receive: Any) -> Answer:
        st = status()
        return _answer({"jobs": [{"job_id": job_id, "state": st.state, "step": st.step, "max_steps": st.max_steps}]})

    async def openapi(params: tuple[str, ...], scope: dict[str, Any], receive: Any) -> Answer:
        return Answer(published_schema())

    async def job_status(params: tuple[str, ...], scope: dict[str, Any], receive: Any) -> Answer:
        return check_job(params[0]) or Answer(status_now())

    async def job_metrics(params: tuple[str, ...], scope: dict[str, Any], receive: Any) -> Answer:
        """The recorded metric history, only points after step ``since`` when given."""
        since: int | None = None
        given = _query(scope).get("since")
        if given is not None:
            text = given.strip()
            if not _INTEGER.fullmatch(text):
                return _error(422, "bad parameter (query.since: Input should be a valid integer, unable to parse string as an integer)")
            since = int(text.split(".")[0])
        bad = check_job(params[0])
        if bad is not None:
            return bad
        return _answer(encode(metrics(since) if metrics is not None else MetricRecord(job_id=job_id)))

    async def command(params: tuple[str, ...], scope: dict[str, Any], receive: Any) -> Answer:
        bad = check_job(params[0])
        if bad is not None:
            return bad
        try:
            record = ledger.get(params[1]).as_record()
        except LedgerError as exc:
            return _error(exc.http_status, str(exc))
        if followed is not None:
            followed.served(record.id, record.state)
        return _answer(receipt(encode(record)))

    async def control(params: tuple[str, ...], scope: dict[str, Any], receive: Any) -> Answer:
        bad = check_job(params[0])
        if bad is not None:
            return bad
        kind = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            return _error(415, f"send the command as application/json, not {kind or 'no content type'!r}")
        body = await _body(receive, max_body)
        if body is None:
            return _error(413, f"request body is over the {max_body}-byte limit")
        try:
            req = _decode_request(body)
        except msgspec.ValidationError:
            try:  # not a command: say why, if it is JSON at all
                return _error(422, describe(_decode_any(body)), valid_commands=list(VALID_COMMANDS))
            except (msgspec.DecodeError, RecursionError):
                return _malformed()
        except (msgspec.DecodeError, RecursionError):
            return _malformed()
        try:
            cmd = parse_command(req.command)
        except UnknownCommand as exc:
            return _error(422, str(exc), valid_commands=list(VALID_COMMANDS))
        options = None
        if req.options is not None:
            changes = [KnobChange(name=c.name, value=c.value) for c in req.options.changes] if req.options.changes else None
            options = CommandOptions(evaluate=req.options.evaluate, changes=changes)
        try:
            entry, created = ledger.submit(cmd, key=req.key, source="http", options=options)
        except LedgerError as exc:
            return _error(exc.http_status, str(exc), **({"refused": exc.refused} if exc.refused else {}))
        return _answer(receipt(encode(entry.as_record())), 202 if created else 200)

    routes = Routes(
        exact={"/health": {"GET": health}, "/hello": {"GET": hello}, "/jobs": {"GET": jobs}, "/openapi.json": {"HEAD": openapi, "GET": openapi}},
        per_job={"status": {"GET": job_status}, "metrics": {"GET": job_metrics}, "control": {"POST": control}},
        command={"GET": command},
    )
    #: the answers a client asks for most (a status poll, a health check), given by the
    #: guard itself: the same functions as their routes, without the routing around them
    fast = {"/health": healthy, f"/jobs/{job_id}/status": status_now}
    return Guard(routes, token=token, loopback=loopback, max_body=max_body, fast=fast)


def _malformed() -> Answer:
    return _error(400, 'malformed JSON; send {"command": "<name>", "key": "<optional idempotency key>"}', valid_commands=list(VALID_COMMANDS))
