"""Rules both HTTP servers keep alike: rank 0's (:mod:`forgather_control.callback.server`)
and the page's (:mod:`forgather_control.ui.app`). Written here once, so that the two
cannot drift apart."""

from __future__ import annotations

#: A command body is a few dozen bytes; a request with a larger one is refused with 413.
MAX_BODY_BYTES = 4096
