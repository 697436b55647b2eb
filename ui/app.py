"""The page's routes: the two views (one HTML file), the JSON API they poll, the
Prometheus scrape, and the static files, all behind :mod:`.auth`.

Every JSON answer is strict JSON (NaN and infinities as null) without secrets; every
string in it came from a record or a job server and is rendered by the page as text.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from forgather_control.client.logs import LogsUnreadable, NoLogs
from forgather_control.core.errors import (
    AmbiguousJob,
    BadKnob,
    CommandFailed,
    CommandRefused,
    ControlError,
    JobEnded,
    JobNotFound,
    NotResumable,
    OutcomeUnknown,
    Unreachable,
    UsageError,
)
from forgather_control.core.jobs import PROTOCOL, is_valid_job_id
from forgather_control.core.records import Record, encode
from forgather_control.core.safe import json_safe, scrub
from forgather_control.serving.rules import MAX_BODY_BYTES, local_host_header

from . import prometheus
from .auth import CSRF_COOKIE, CSRF_HEADER, SAFE_METHODS, Auth, cookie_name
from .config import UiConfig
from .feed import JobsFeed
from .jobview import BUTTONS, LOG_TAIL, MAX_LOG_TAIL, JobView, UnknownButton

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: What a page may load and run: its own files only; no inline script, no frames.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: The verbs the buttons send (``pause`` among them), as an error names them.
VERBS = "|".join(BUTTONS)
#: A set's body (the knob panel's).
SET_BODY = '{"command": "set", "changes": [{"name": "lr_scale", "value": 0.5}], "key": "<optional idempotency key>"}'
#: A resume's body: from the newest checkpoint still on disk, or (a roll back) from one
#: of the job's, named by its path or its step.
RESUME_BODY = '{"from": null | "/path/to/checkpoint" | 1200}'
#: The largest rank, offset and checkpoint path a request may name.
MAX_RANK = 1 << 20
MAX_OFFSET = 1 << 62
MAX_PATH = 4096
#: Routes open without the cookie or the token: the login page and what it loads.
OPEN_PATHS = frozenset({"/login", "/static/css/app.css", "/static/js/login.js", "/static/favicon.svg"})


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _is_page(path: str) -> bool:
    return path == "/" or (path.startswith("/jobs/") and path.count("/") == 2)


def create_app(config: UiConfig, *, feed: JobsFeed | None = None, view: JobView | None = None) -> FastAPI:
    """The page server for ``config``; ``feed`` and ``view`` for a test to share or swap."""
    app = FastAPI(title="forgather control ui", version=str(PROTOCOL), docs_url=None, redoc_url=None, openapi_url=None)
    auth = Auth(config.token)
    source = config.source()
    feed = feed or JobsFeed(source, max_age=config.listing_max_age, timeout=max(config.timeout, 15.0))
    view = view or JobView(config, source=source)
    app.state.auth, app.state.feed, app.state.view = auth, feed, view

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        try:
            response = await _guarded(request, call_next)
        except ClientDisconnect:
            response = _error(400, "the request ended before its body arrived")
        except Exception as exc:  # never let a handler bug escape as a traceback page
            log.exception("page server error")
            response = _error(500, f"internal error in the page server: {type(exc).__name__}")
        _secure_headers(response, request.url.path)
        return response

    async def _guarded(request: Request, call_next: Any) -> Response:
        path = request.url.path
        host = request.headers.get("host") or ""
        if config.loopback and not local_host_header(host):
            return _error(403, f"Host header {host!r} is not local; this page answers loopback clients only")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, f"a request body is at most {MAX_BODY_BYTES} bytes")
        if "token" in request.query_params or "code" in request.query_params:
            return _log_in(request, path)
        if path in OPEN_PATHS:
            return await call_next(request)
        via = auth.via(request)
        if via is None:
            if _is_page(path) and request.method in SAFE_METHODS:
                return RedirectResponse("/login", status_code=303)
            return JSONResponse(
                {"detail": "log in with the address `forgather control ui` printed, or send Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method not in SAFE_METHODS and via == "cookie":
            why = auth.cross_site(request)
            if why is not None:
                return _error(403, f"refused a cross-site request: {why}")
        return await call_next(request)

    def _log_in(request: Request, path: str) -> Response:
        """``/?code=C`` (a single-use login code) or ``/?token=T`` (or ``/jobs/ID?...``):
        the cookies, and the same address without it. Anywhere else it is refused, not
        looked at; a spent, expired or unknown code is 403."""
        if not _is_page(path) or request.method not in SAFE_METHODS:
            return _error(401, "a token in the address is only taken by the page itself (/?token=...); send Authorization: Bearer <token>")
        if "code" in request.query_params:
            if not auth.redeem(request.query_params["code"]):
                return _error(403, "this login code is spent or expired; run `forgather control ui` again for a fresh address")
            # not a 303: a redirect in a navigation another site began (the login file)
            # would drop the SameSite=Strict cookie; this page's own step keeps it
            response: Response = Response(f'<!doctype html><meta http-equiv="refresh" content="0;url={html.escape(path, quote=True)}">', media_type="text/html")
            response.headers["Cache-Control"] = "no-store"
            auth.log_in(response, request)
            return response
        if not auth.token_matches(request.query_params.get("token", "")):
            return RedirectResponse("/login?wrong=1", status_code=303)
        response = RedirectResponse(path, status_code=303)
        auth.log_in(response, request)
        return response

    # -- pages ----------------------------------------------------------------------------
    @app.get("/login", include_in_schema=False)
    def login() -> FileResponse:
        return FileResponse(STATIC / "login.html", media_type="text/html")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/jobs/{job_id}", include_in_schema=False)
    def job_page(job_id: str) -> Response:
        if not is_valid_job_id(job_id):
            return _error(400, "invalid job id")
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.post("/api/logout")
    def logout(request: Request) -> Response:
        response = JSONResponse({"ok": True})
        auth.log_out(response, request)
        auth.end_sessions()
        return response

    # -- data -----------------------------------------------------------------------------
    @app.get("/api/session")
    def session(request: Request) -> dict[str, Any]:
        """What the page says about itself: where it looks, the CSRF header's name."""
        return {
            "where": source.where,
            "source": source.kind,
            "csrf_header": CSRF_HEADER,
            "csrf_cookie": cookie_name(CSRF_COOKIE, request),
            "protocol": PROTOCOL,
            "refresh_seconds": 5.0 if source.slow else 1.0,
        }

    @app.get("/api/jobs")
    def jobs(ended: bool = True) -> dict[str, Any]:
        return feed.snapshot(ended=ended).as_json()

    @app.get("/api/sparklines")
    def sparklines(ended: bool = True) -> dict[str, Any]:
        return {"loss": feed.sparklines(ended=ended)}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> Response:
        return _answer(lambda: view.details(job_id))

    @app.get("/api/jobs/{job_id}/metrics")
    def metrics(job_id: str, since: int | None = None) -> Response:
        return _answer(lambda: view.metrics(job_id, since))

    async def _json_body(request: Request) -> Any:
        """The request's JSON body, or the answer that refuses it."""
        kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            return _error(415, f"send the command as application/json, not {kind or 'no content type'!r}")
        try:
            return json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError):
            return _error(400, f'malformed JSON; send {{"command": "{VERBS}|set"}}')

    @app.post("/api/jobs/{job_id}/commands", status_code=202)
    async def command(job_id: str, request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict) or not isinstance(body.get("command"), str):
            return _error(422, f'send {{"command": "{VERBS}", "key": "<optional idempotency key>"}} or {SET_BODY}')
        key = body.get("key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 128):
            return _error(422, "key must be a non-empty string of at most 128 characters")
        if body["command"] == "set":
            return await run_in_threadpool(_answer, lambda: view.set_knobs(job_id, body.get("changes"), key), status=202)
        if "changes" in body:
            return _error(422, f"only a set takes changes, not {body['command'][:64]!r}")
        return await run_in_threadpool(_answer, lambda: view.send(job_id, body["command"], key), status=202)

    @app.post("/api/jobs/{job_id}/knobs/check")
    async def check_knobs(job_id: str, request: Request) -> Response:
        """What a set of ``changes`` would change (old -> new), checked as a set is and sent
        nowhere: the page asks before its confirmation."""
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict):
            return _error(422, 'send {"changes": [{"name": "lr_scale", "value": 0.5}]}')
        return await run_in_threadpool(_answer, lambda: view.check_knobs(job_id, body.get("changes")))

    @app.get("/api/jobs/{job_id}/logs")
    def logs(job_id: str, rank: str | None = None, after: str | None = None, lines: str | None = None) -> Response:
        """One rank's log: ``?rank=N`` (else the first with one), ``&after=OFFSET`` (what
        came after the ``offset`` a previous answer gave; else its tail) and ``&lines=N``
        (the tail's length). Every line is text made printable by the library."""
        try:
            r = _whole(rank, "rank", 0, MAX_RANK)
            a = _whole(after, "after", 0, MAX_OFFSET)
            n = _whole(lines, "lines", 1, MAX_LOG_TAIL)
        except ValueError as exc:
            return _error(400, str(exc))
        return _answer(lambda: view.logs(job_id, r, a, LOG_TAIL if n is None else n))

    @app.post("/api/jobs/{job_id}/resume/check")
    async def check_resume(job_id: str, request: Request) -> Response:
        """What a resume would start (the run, the checkpoint and step, what a roll back
        leaves behind), checked as ``forgather control resume`` checks it; nothing is
        started: the page asks before its confirmation."""
        body = await _resume_body(request)
        if isinstance(body, Response):
            return body
        return await run_in_threadpool(_answer, lambda: view.plan_resume(job_id, body))

    @app.post("/api/jobs/{job_id}/resume", status_code=202)
    async def resume(job_id: str, request: Request) -> Response:
        """Resume the job (``forgather control resume JOB [--from ...] --detach``, as the
        user who runs this page): its new run, where it resumes from, the launcher's pid
        and log (under SLURM, its job id). A refusal is 409 with the reason."""
        body = await _resume_body(request)
        if isinstance(body, Response):
            return body
        return await run_in_threadpool(_answer, lambda: view.resume(job_id, body), status=202)

    async def _resume_body(request: Request) -> Any:
        """``from`` of a resume's body (None: the newest checkpoint), or the refusal."""
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body, dict) or set(body) - {"from"}:
            return _error(422, f"send {RESUME_BODY}")
        ref = body.get("from")
        if ref is None:
            return None
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref <= MAX_OFFSET:
            return ref
        if isinstance(ref, str) and 0 < len(ref) <= MAX_PATH and ref.startswith("/") and "\x00" not in ref:
            return ref
        return _error(422, f"from is a checkpoint's absolute path or a step (a whole number); send {RESUME_BODY}")

    @app.get("/api/jobs/{job_id}/commands/{command_id}")
    def receipt(job_id: str, command_id: str, key: str | None = None) -> Response:
        return _answer(lambda: view.entry(job_id, command_id, key), missing=f"no receipt for command {command_id} yet")

    @app.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        # What may be live: an ended job's series go stale, as Prometheus expects of a
        # target that stops exporting them (the whole history would be unbounded series).
        return Response(prometheus.exposition(feed.snapshot(ended=False)), media_type=prometheus.CONTENT_TYPE)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _answer(call: Any, *, status: int = 200, missing: str = "not found") -> Response:
    """``call()`` as JSON (a record as :func:`encode` writes it: strict JSON, no secret),
    or the library's error as a status and its message."""
    try:
        value = call()
    except ControlError as exc:
        return _control_error(exc)
    if value is None:
        return _error(404, missing)
    if isinstance(value, Record):
        value = json_safe(scrub(encode(value)))
    return JSONResponse(value, status_code=status)


def _whole(value: str | None, name: str, least: int, most: int) -> int | None:
    """A query parameter that is a whole number from ``least`` to ``most``, or None;
    ValueError saying what it must be."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 20) or not least <= int(value) <= most:
        raise ValueError(f"{name} is a whole number from {least} to {most}, not {value[:32]!r}")
    return int(value)


def _control_error(exc: ControlError) -> JSONResponse:
    detail = str(exc)
    if isinstance(exc, NoLogs):
        return _error(404, detail, no_logs=True)
    if isinstance(exc, LogsUnreadable):
        return _error(409, detail)
    if isinstance(exc, NotResumable):
        return _error(409, detail, refused="resume")
    if isinstance(exc, OutcomeUnknown):
        return _error(504, detail, key=exc.key, command=exc.command, outcome="unknown")
    if isinstance(exc, JobNotFound):
        return _error(404, detail)
    if isinstance(exc, BadKnob):
        return _error(422, detail, refused="knob")
    if isinstance(exc, (UsageError, AmbiguousJob, UnknownButton)):
        return _error(400, detail)
    if isinstance(exc, JobEnded):
        return _error(409, detail, ended=True)
    if isinstance(exc, CommandRefused):
        status = exc.http_status if exc.http_status and 400 <= exc.http_status < 500 else 409
        return _error(status, detail)
    if isinstance(exc, CommandFailed):
        return _error(409, detail)
    if isinstance(exc, Unreachable):
        return _error(503, detail, unreachable=True)
    return _error(502, detail)


def _secure_headers(response: Response, path: str) -> None:
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h["X-Content-Type-Options"] = "nosniff"
    h["X-Frame-Options"] = "DENY"
    h["Referrer-Policy"] = "same-origin"
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    h["Cross-Origin-Resource-Policy"] = "same-origin"
    if path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-cache")
    else:
        h["Cache-Control"] = "no-store"
