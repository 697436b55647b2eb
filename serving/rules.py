"""Rules both HTTP servers keep alike: rank 0's (:mod:`forgather_control.callback.server`)
and the page's (:mod:`forgather_control.ui.app`). Written here once, so that the two
cannot drift apart."""

from __future__ import annotations

import functools
import re

from forgather_control.core.host import is_loopback_host

__all__ = ["MAX_BODY_BYTES", "local_host_header"]

#: A command body is a few dozen bytes; a request with a larger one is refused with 413.
MAX_BODY_BYTES = 4096
#: ``HOST`` or ``HOST:PORT`` where HOST is a bracketed IPv6 literal or has no colon.
_HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]@/\s]+)(?::([0-9]{1,5}))?")


@functools.lru_cache(maxsize=256)  # a client sends the same few: 13 us each uncached, a request's tenth
def local_host_header(header: str) -> bool:
    """True for a Host header that names this machine exactly: an IP literal in
    127.0.0.0/8 or ::1, or ``localhost``, with an optional numeric port. A name that
    only starts like one (``127.0.0.1.evil.example``, ``localhost:evil``) is not."""
    match = _HOST_HEADER.fullmatch(header)
    return match is not None and is_loopback_host(match.group(1))
