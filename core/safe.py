"""What leaves a process for a person or a page: no secret, no control character, strict JSON.

Everything a record, a server or another host wrote reaches a terminal only through
:func:`printable` (an escape sequence in a host name must not retitle the terminal,
clear it, plant a link or forge a line), and every object printed or served goes
through :func:`scrub` (a token never reaches stdout or a page) and :func:`json_safe`.
The CLI and the web page both use these; they live below both.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Keys never printed, wherever they appear (the endpoint token, mostly).
SECRET_KEYS = frozenset({"token", "authorization", "auth_token"})


#: C0 and C1 controls, DEL, and the invisible and direction-changing code points that
#: can hide text or reorder a line (zero-width, bidi embeddings, overrides and isolates).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def printable(value: Any) -> str:
    """``value`` as text a terminal shows as it is: every control character and every
    invisible or direction-changing code point written out visibly (``\\x1b``)."""
    text = value if isinstance(value, str) else str(value)
    return _UNPRINTABLE.sub(_visible, text)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and the infinities as null: strict JSON parsers (JavaScript's
    JSON.parse, jq) refuse Python's ``NaN``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def scrub(value: Any) -> Any:
    """A copy of ``value`` without secret keys, at any depth."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not (isinstance(k, str) and k.lower() in SECRET_KEYS)}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value
