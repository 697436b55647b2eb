"""The page server: uvicorn in a daemon thread, guarded as the job server is.

:class:`UiServer` starts it (``start`` returns the address with the token; the command
prints and opens addresses with single-use codes, :meth:`UiServer.code_url`) and stops it (``stop``: uvicorn's ``should_exit``), so a test runs
it in-process and the command line is a thin shell over it. The connection cap and the
read deadline of :mod:`forgather_control.serving.guard` apply: a tab left open, or a
thousand idle connections, hold nothing.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from forgather_control.serving.thread import ServerStartError, ServerThread

from .app import create_app
from .auth import Auth
from .config import UiConfig

__all__ = ["ServerStartError", "UiServer", "quiet_repeated_warnings"]


class UiServer:
    """One page server. ``UiServer(UiConfig(...))`` or ``UiServer(jobs_dir=..., port=...)``."""

    def __init__(self, config: UiConfig | None = None, **options: object) -> None:
        if config is not None and options:
            raise TypeError("pass a UiConfig or options, not both")
        self.config = config if config is not None else UiConfig(**options)  # type: ignore[arg-type]
        self.app = create_app(self.config)
        self._thread = ServerThread(self.app, host=self.config.host, port=self.config.port)

    @property
    def port(self) -> int | None:
        return self._thread.port

    @property
    def alive(self) -> bool:
        """True while the server's thread serves."""
        return self._thread.thread.is_alive()

    @property
    def url(self) -> str:
        """The page's address, without the token."""
        return self._thread.url

    @property
    def login_url(self) -> str:
        """The address to open: the page, with the token that logs the browser in."""
        return f"{self.url}/?token={quote(self.config.token, safe='')}"

    def code_url(self) -> str:
        """An address that logs one browser in, once, within :data:`~.auth.CODE_TTL`
        seconds: what a person is shown, and what a browser is sent to."""
        auth: Auth = self.app.state.auth
        return f"{self.url}/?code={auth.issue_code()}"

    def start(self, timeout: float = 10.0) -> str:
        """Bind and serve; returns :attr:`login_url`. Raises ServerStartError."""
        self._thread.start(timeout)
        return self.login_url

    def stop(self, timeout: float = 5.0) -> None:
        self._thread.stop(timeout)
        self.app.state.view.close()

    def __enter__(self) -> UiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _OncePerMessage(logging.Filter):
    """The listing runs every second: a corrupt job's warning is worth saying once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True
        message = record.getMessage()
        if message in self.seen:
            return False
        if len(self.seen) < 10_000:
            self.seen.add(message)
        return True


_FILTER = _OncePerMessage()


def quiet_repeated_warnings() -> None:
    """For the command's process: each warning of the listing's modules once (a corrupt
    job is said once, not every second). A library user's logging is left as it is."""
    for name in ("forgather_control.client.listing", "forgather_control.core.files", "forgather_control.client.lookup"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
