"""Ports on loopback."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on right now: for a server to bind, or as a
    closed port that a client must fail to reach."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
