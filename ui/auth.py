"""Who may see the page and press its buttons: the token, its cookies, and the checks
against other web pages.

- **The token** (256 bits, fresh at every start) is for ``Authorization: Bearer <token>``
  (a Prometheus scrape, a script), and ``/?token=...`` still logs a browser in, but the
  command never puts it in an address: a browser's argv is read by every local user
  (``ps``) and its history keeps every address.
- **Login codes** (:meth:`Auth.issue_code`): the command prints, and opens the browser
  with, ``/?code=...``: 128 bits, good once and for :data:`CODE_TTL` seconds. The page
  exchanges it for a session cookie (HttpOnly, SameSite=Strict: no script reads it, no
  other site's request carries it) and sends the browser to the same address without
  it; what the history keeps is spent. A token or code in the address of any other
  route is refused: addresses end up in logs.
- **Cross-site requests.** SameSite=Strict keeps other sites' requests cookie-less, but
  every port of 127.0.0.1 is the *same* site: a page served by any other local program
  would carry the cookie. So a request that changes something, when it comes with the
  cookie, must also (a) carry the CSRF value in the ``X-Forgather-CSRF`` header, which
  the page reads from a second cookie that only pages of this origin can read
  (cross-origin scripts cannot set custom headers without a CORS preflight, which is
  never granted), and (b) come from this origin: ``Origin`` (or, without it, ``Referer``)
  must name exactly the host the browser asked for.
- **DNS rebinding**: on loopback, the Host header must name this machine exactly (the job
  server's own check, :func:`~forgather_control.serving.rules.local_host_header`).

Cookies carry the port in their names, as cookies ignore ports: two pages on two ports
of one machine keep their own sessions.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "forgather_ui_session"
CSRF_COOKIE = "forgather_ui_csrf"
CSRF_HEADER = "X-Forgather-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Seconds a login code stays good (it is good once): long enough to copy an address
#: from a remote shell into a browser, short enough that a stale one opens nothing.
CODE_TTL = 600.0
_MAX_CODES = 64


class Auth:
    """The secrets of one page server: the token, the session and the CSRF value."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._bearer = f"Bearer {token}".encode()
        self._session = secrets.token_urlsafe(32).encode()
        self.csrf = secrets.token_urlsafe(32)
        self._codes: dict[str, float] = {}  # code -> when it expires (monotonic)
        self._lock = threading.Lock()

    # -- credentials --------------------------------------------------------------------
    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def issue_code(self, ttl: float = CODE_TTL) -> str:
        """A fresh login code: good once, for ``ttl`` seconds (the oldest beyond
        :data:`_MAX_CODES` are dropped)."""
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = time.monotonic() + ttl
            while len(self._codes) > _MAX_CODES:
                del self._codes[next(iter(self._codes))]
        return code

    def redeem(self, candidate: str) -> bool:
        """True once for a code issued and not expired; it is spent either way."""
        now = time.monotonic()
        with self._lock:
            match = next((c for c in self._codes if hmac.compare_digest(c.encode(), candidate.encode())), None)
            expires = self._codes.pop(match) if match is not None else 0.0
            for code in [c for c, t in self._codes.items() if t <= now]:
                del self._codes[code]
        return match is not None and now < expires

    def via(self, request: Request) -> str | None:
        """How the request proves itself: ``"bearer"``, ``"cookie"``, or None."""
        header = request.headers.get("authorization")
        if header is not None and hmac.compare_digest(header.encode(), self._bearer):
            return "bearer"
        cookie = request.cookies.get(cookie_name(SESSION_COOKIE, request))
        if cookie is not None and hmac.compare_digest(cookie.encode(), self._session):
            return "cookie"
        return None

    def cross_site(self, request: Request) -> str | None:
        """Why a state-changing request that came with the cookie is refused, or None.
        A bearer request needs no check: no other site can make a browser send one."""
        sent = request.headers.get(CSRF_HEADER.lower()) or ""
        if not hmac.compare_digest(sent.encode(), self.csrf.encode()):
            return f"the {CSRF_HEADER} header is missing or wrong (a request from another page?)"
        expected = request.headers.get("host") or ""
        origin = request.headers.get("origin")
        if origin is not None:
            return None if _same_origin(origin, expected) else f"Origin {origin!r} is not this page ({expected})"
        referer = request.headers.get("referer")
        if referer is not None:
            return None if _same_origin(referer, expected) else "the Referer is not this page"
        return "neither Origin nor Referer names this page"

    # -- cookies ------------------------------------------------------------------------
    def log_in(self, response: Response, request: Request) -> None:
        """Set the session cookie (HttpOnly) and the CSRF cookie the page reads."""
        common: dict[str, Any] = {"path": "/", "samesite": "strict", "secure": request.url.scheme == "https"}
        response.set_cookie(cookie_name(SESSION_COOKIE, request), self._session.decode(), httponly=True, **common)
        response.set_cookie(cookie_name(CSRF_COOKIE, request), self.csrf, httponly=False, **common)

    def log_out(self, response: Response, request: Request) -> None:
        for base in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(cookie_name(base, request), path="/", samesite="strict")

    def end_sessions(self) -> None:
        """Every session cookie handed out stops working (the token still logs in)."""
        self._session = secrets.token_urlsafe(32).encode()
        self.csrf = secrets.token_urlsafe(32)


def cookie_name(base: str, request: Request) -> str:
    """``base`` suffixed with the server's port: cookies do not tell ports apart."""
    server = request.scope.get("server") or (None, None)
    port = server[1] if len(server) > 1 and isinstance(server[1], int) else 0
    return f"{base}_{port}"


def _same_origin(url: str, host: str) -> bool:
    """True when ``url`` is http(s)://``host``[/...] exactly (scheme, host and port)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower()
