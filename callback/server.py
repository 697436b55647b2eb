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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


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
    expected = f"Bearer {token}".encode() if token else None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            host = request.headers.get("host") or ""
            if loopback and not local_host_header(host):
                return _error(403, f"Host header {host!r} is not local; this server answers loopback clients only")
            length = request.headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    return _error(400, "malformed Content-Length header")
                if int(length) > max_body:
                    return _error(413, f"request body of {length} bytes is over the {max_body}-byte limit")
            if request.url.path not in OPEN_PATHS:
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
        except ClientDisconnect:
            log.debug("a client left before its request was read")
            return _error(400, "the request ended before its body arrived")
        except Exception as exc:  # never let a handler bug escape
            log.exception("control server error")
            return _error(500, f"internal error in the control server: {type(exc).__name__}")

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A parameter FastAPI could not parse: the same ErrorBody as every other refusal."""
        where = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors()[:3])
        return _error(422, f"bad parameter ({where})")

    def check_job(jid: str) -> JSONResponse | None:
        if not is_valid_job_id(jid):
            return _error(400, f"invalid job id {jid!r}")
        if jid != job_id:
            return _error(404, f"this server controls job {job_id!r}, not {jid!r}")
        return None

    auth = (401, 403, 413)

    @app.get("/health", response_model=Health, responses=errors(400, 403, 413))
    def health() -> dict[str, Any]:
        return {"ok": True, "protocol": PROTOCOL}

    @app.get("/hello", response_model=Hello, responses=errors(400, 403, 413))
    def hello(nonce: str = "") -> Any:
        """Proof that this server holds the job's token, before a client sends it."""
        if not _NONCE.fullmatch(nonce):
            return _error(400, "nonce must be 16-128 lowercase hex characters")
        return {"job_id": job_id, "proof": proof(token or "", job_id, nonce), "protocol": PROTOCOL}

    @app.get("/jobs", response_model=JobsList, responses=errors(*auth))
    def jobs() -> dict[str, Any]:
        st = status()
        return {"jobs": [{"job_id": job_id, "state": st.state, "step": st.step, "max_steps": st.max_steps}]}

    @app.get("/jobs/{jid}/status", response_model=Status, responses=errors(*auth, 400, 404))
    def job_status(jid: str) -> Any:
        return check_job(jid) or encode(status())

    @app.get("/jobs/{jid}/metrics", response_model=MetricHistory, responses=errors(*auth, 400, 404, 422))
    def job_metrics(jid: str, since: int | None = None) -> Any:
        """The recorded metric history, only points after step ``since`` when given."""
        bad = check_job(jid)
        if bad is not None:
            return bad
        return encode(metrics(since) if metrics is not None else MetricRecord(job_id=job_id))

    @app.get("/jobs/{jid}/commands/{cid}", response_model=Receipt, responses=errors(*auth, 400, 404))
    def command(jid: str, cid: str) -> Any:
        bad = check_job(jid)
        if bad is not None:
            return bad
        try:
            return encode(ledger.get(cid).as_record())  # the response model fills what is unset
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
        return JSONResponse(_receipt(entry.as_record()), status_code=202 if created else 200)

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
