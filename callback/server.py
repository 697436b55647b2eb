"""The rank-0 HTTP server: a FastAPI app from a factory, uvicorn in a daemon thread.

The app only touches the :class:`~forgather_control.core.commands.Ledger` (thread-safe) and a
status callable; it never makes a collective and never raises into training. Every
refusal is a clear 4xx that changes nothing, described by the models in :mod:`.api`
and published at ``/openapi.json`` (behind the token, like everything but ``/health``
and ``/hello``).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from forgather_control.core import PROTOCOL, VALID_COMMANDS, Ledger, LedgerError, UnknownCommand, is_valid_job_id, parse_command
from forgather_control.core.proof import proof
from forgather_control.core.records import CommandOptions, KnobChange, encode
from forgather_control.core.records import MetricHistory as MetricRecord
from forgather_control.core.records import Receipt as ReceiptRecord
from forgather_control.core.records import Status as StatusRecord
from forgather_control.serving.rules import MAX_BODY_BYTES, local_host_header

from .api import KEY_MAX, CommandRequest, ErrorBody, Health, Hello, JobsList, MetricHistory, Receipt, Status, errors

log = logging.getLogger(__name__)

#: Routes a client may call without the token.
OPEN_PATHS = frozenset({"/health", "/hello"})
_NONCE = re.compile(r"[0-9a-f]{16,128}")


JSON = "application/json"
_json = msgspec.json.Encoder().encode  # a diverging metric (NaN, an infinity) is written null


def _answer(body: Any, status: int = 200) -> Response:
    """A JSON answer, encoded here: the routes' ``response_model`` is their schema in
    ``/openapi.json`` (and what the fuzz test holds every answer to), not a second pass
    over every answer (the tests check that what is sent conforms)."""
    return Response(_json(body), status_code=status, media_type=JSON)


def _error(status: int, detail: str, **extra: Any) -> Response:
    return _answer({"detail": detail, **extra}, status)


class Guard:
    """Every request's gate, as plain ASGI (a ``@app.middleware`` costs a task group and
    two streams a request): a Host header that names this machine (DNS rebinding), a
    bounded and well-formed Content-Length, the bearer token (compared in constant time;
    never taken from the URL) on all but ``OPEN_PATHS``; and no error escapes as anything
    but a 500 with its type."""

    def __init__(self, app: Any, *, token: str | None, loopback: bool, max_body: int, fast: dict[str, Callable[[], bytes]] | None = None) -> None:
        self.app = app
        #: exact paths answered here for a GET with no query (see create_app)
        self.fast = fast if fast is not None else {}
        self.expected = f"Bearer {token}".encode() if token else None
        self.loopback = loopback
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        started = False

        async def watched(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            answer = self.fast.get(scope["path"]) if scope["method"] == "GET" and not scope.get("query_string") else None
            if answer is not None:
                body = answer()
                await watched(
                    {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]}
                )
                await send({"type": "http.response.body", "body": body})
            else:
                await self.app(scope, receive, watched)
        except ClientDisconnect:
            log.debug("a client left before its request was read")
            if not started:
                await _error(400, "the request ended before its body arrived")(scope, receive, send)
        except Exception as exc:  # never let a handler bug escape
            log.exception("control server error")
            if not started:
                await _error(500, f"internal error in the control server: {type(exc).__name__}")(scope, receive, send)

    def _refusal(self, scope: dict[str, Any]) -> Response | None:
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
            return Response(
                _json({"detail": "missing or wrong bearer token; it is in the job's endpoint.json (mode 0600)"}),
                status_code=401,
                media_type=JSON,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None


def create_app(
    *,
    job_id: str,
    ledger: Ledger,
    status: Callable[[], StatusRecord],
    token: str | None,
    loopback: bool = True,
    max_body: int = MAX_BODY_BYTES,
    metrics: Callable[[int | None], MetricRecord] | None = None,
) -> FastAPI:
    """Build the control API for one job. ``token=None`` disables auth (an explicit
    opt-out the caller must have asked for). ``loopback`` turns on the Host check that
    stops a web page in the user's browser from reaching the server by DNS rebinding.
    ``status`` and ``metrics`` give records; they become JSON here, at the edge."""
    app = FastAPI(title="forgather-control", version=str(PROTOCOL), docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    #: the answers a client asks for most (a status poll, a health check), given by the
    #: guard itself: the same functions as their routes below, without FastAPI's
    #: routing and parameter handling around them (about 0.1 ms a request)
    fast: dict[str, Callable[[], bytes]] = {}
    app.add_middleware(Guard, token=token, loopback=loopback, max_body=max_body, fast=fast)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, exc: RequestValidationError) -> Response:
        """A parameter FastAPI could not parse: the same ErrorBody as every other refusal."""
        where = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors()[:3])
        return _error(422, f"bad parameter ({where})")

    def check_job(jid: str) -> Response | None:
        if not is_valid_job_id(jid):
            return _error(400, f"invalid job id {jid!r}")
        if jid != job_id:
            return _error(404, f"this server controls job {job_id!r}, not {jid!r}")
        return None

    auth = (401, 403, 413)

    health_body = _json({"ok": True, "protocol": PROTOCOL})

    def healthy() -> bytes:
        return health_body

    def status_now() -> bytes:
        return _json(encode(status()))

    fast["/health"] = healthy
    fast[f"/jobs/{job_id}/status"] = status_now

    @app.get("/health", response_model=Health, responses=errors(400, 403, 413))
    async def health() -> Any:
        return Response(healthy(), media_type=JSON)

    @app.get("/hello", response_model=Hello, responses=errors(400, 403, 413))
    async def hello(nonce: str = "") -> Any:
        """Proof that this server holds the job's token, before a client sends it."""
        if not _NONCE.fullmatch(nonce):
            return _error(400, "nonce must be 16-128 lowercase hex characters")
        return _answer({"job_id": job_id, "proof": proof(token or "", job_id, nonce), "protocol": PROTOCOL})

    @app.get("/jobs", response_model=JobsList, responses=errors(*auth))
    async def jobs() -> Any:
        st = status()
        return _answer({"jobs": [{"job_id": job_id, "state": st.state, "step": st.step, "max_steps": st.max_steps}]})

    @app.get("/jobs/{jid}/status", response_model=Status, responses=errors(*auth, 400, 404))
    async def job_status(jid: str) -> Any:
        return check_job(jid) or Response(status_now(), media_type=JSON)

    @app.get("/jobs/{jid}/metrics", response_model=MetricHistory, responses=errors(*auth, 400, 404, 422))
    async def job_metrics(jid: str, since: int | None = None) -> Any:
        """The recorded metric history, only points after step ``since`` when given."""
        bad = check_job(jid)
        if bad is not None:
            return bad
        return _answer(encode(metrics(since) if metrics is not None else MetricRecord(job_id=job_id)))

    @app.get("/jobs/{jid}/commands/{cid}", response_model=Receipt, responses=errors(*auth, 400, 404))
    async def command(jid: str, cid: str) -> Any:
        bad = check_job(jid)
        if bad is not None:
            return bad
        try:
            return _answer(_receipt(ledger.get(cid).as_record()))
        except LedgerError as exc:
            return _error(exc.http_status, str(exc))

    @app.post(
        "/jobs/{jid}/control",
        status_code=202,
        response_model=Receipt,
        responses={200: {"model": Receipt, "description": "the key was seen: the first receipt"}, **errors(*auth, 400, 404, 409, 415, 422, 429)},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CommandRequest"}}}}},
    )
    async def control(jid: str, request: Request) -> Any:
        bad = check_job(jid)
        if bad is not None:
            return bad
        kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            return _error(415, f"send the command as application/json, not {kind or 'no content type'!r}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return _error(413, f"request body is over the {max_body}-byte limit")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return _error(400, 'malformed JSON; send {"command": "<name>", "key": "<optional idempotency key>"}', valid_commands=list(VALID_COMMANDS))
        try:
            req = CommandRequest.model_validate(data)
        except ValidationError as exc:
            return _error(422, _describe(exc), valid_commands=list(VALID_COMMANDS))
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
        return _answer(_receipt(entry.as_record()), 202 if created else 200)

    _publish_errors_as_declared(app)
    return app


def _receipt(record: ReceiptRecord) -> dict[str, Any]:
    """A receipt as the API sends it past the response model: every field of
    :class:`.api.Receipt`, null when unset (as a route's ``response_model`` sends it)."""
    return Receipt.model_validate(encode(record)).model_dump(mode="json")


def _describe(exc: ValidationError) -> str:
    """A command body's problems in the words of the API, not pydantic's."""
    valid = f"valid commands: {', '.join(VALID_COMMANDS)}"
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "model_type":
            problems.append('expected a JSON object with a "command" field')
        elif err["type"] == "missing" and where == "command":
            problems.append(f'expected a JSON object with a "command" field; {valid}')
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown field {where!r}; only command, key and options (evaluate, changes) are accepted")
        elif where == "command":
            problems.append(f"unknown command {err.get('input')!r}; {valid}")
        elif where == "key":
            problems.append(f"key must be a non-empty string of at most {KEY_MAX} characters")
        else:
            problems.append(f"{where}: {err['msg']}")
    return "; ".join(problems)


def _publish_errors_as_declared(app: FastAPI) -> None:
    """FastAPI adds its own 422 (a list of validation errors) to routes with parameters;
    ours answer every refusal with an ErrorBody, so the schema says that instead."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.get("responses", {})
                    if "422" in responses:
                        responses["422"] = {
                            "description": "not a command, or a parameter out of range",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                        }
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["ErrorBody"] = ErrorBody.model_json_schema()
            request = CommandRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(request.pop("$defs", {}))
            components["CommandRequest"] = request
            schema["components"]["schemas"].pop("HTTPValidationError", None)
            schema["components"]["schemas"].pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
