"""What a web page server serves, and how: keyword-only, like ``uvicorn.Config``."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from forgather_control.client.sources import JobSource, source_for
from forgather_control.core.host import is_loopback_host

#: Environment variable with a fixed token (at least :data:`MIN_TOKEN` characters), for
#: a Prometheus scrape that must survive a restart; by default every start makes a new one.
ENV_UI_TOKEN = "FORGATHER_UI_TOKEN"
MIN_TOKEN = 32


def new_token() -> str:
    """A fresh random token (256 bits), as Jupyter makes one per start."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, kw_only=True)
class UiConfig:
    """Where to find jobs and where to listen.

    ``jobs_dir``: as ``--jobs-dir`` (else ``$FORGATHER_JOBS_DIR``, else ``~/.forgather/jobs``);
    ``ray``: a Ray address, or ``"auto"``, to look across a Ray cluster instead;
    ``host``/``port``: where to listen (port 0: any free one); ``token``: the secret the
    page's address carries (a fresh one when not given); ``max_age``: how old a listing
    may be before a request reads the jobs again (seconds)."""

    host: str = "127.0.0.1"
    port: int = 0
    jobs_dir: str | Path | None = None
    ray: str | None = None
    token: str = field(default_factory=new_token)
    max_age: float | None = None
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or len(self.token) < MIN_TOKEN:
            raise ValueError(f"the token must be a string of at least {MIN_TOKEN} characters")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect: the Host check then applies."""
        return is_loopback_host(self.host)

    def source(self) -> JobSource:
        """Where the jobs are found: the client's one rule (:func:`source_for`)."""
        return source_for(jobs_dir=self.jobs_dir, ray=self.ray)

    @property
    def listing_max_age(self) -> float:
        """A Ray listing asks every node (seconds); a folder costs milliseconds."""
        if self.max_age is not None:
            return self.max_age
        return 5.0 if self.source().slow else 0.5
