"""A control server reached by address (``--remote HOST:PORT``) instead of a jobs folder.

The user gives the address and the token (``--token`` or ``$FORGATHER_TOKEN``); the
server says which job it serves. No records are read, so everything known about the
job comes from the server's own answers.
"""

from __future__ import annotations

import os
from typing import Any

from forgather_control.client.transport import HttpChannel
from forgather_control.core.env import ENV_TOKEN
from forgather_control.core.errors import CommandRefused, Unreachable, UsageError


def remote_url(remote: str) -> str:
    """``HOST:PORT`` (or a full ``http://`` URL) -> ``http://HOST:PORT``."""
    remote = remote.strip()
    if remote.startswith(("http://", "https://")):
        return remote.rstrip("/")
    host, sep, port = remote.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--remote expects HOST:PORT (e.g. node17:41234), got {remote!r}")
    return f"http://{host}:{port}"


def remote_token(token: str | None) -> str | None:
    """The token given, else ``$FORGATHER_TOKEN``."""
    return token if token else os.environ.get(ENV_TOKEN) or None


def remote_jobs(remote: str, token: str | None, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The jobs a remote control server serves (GET /jobs), each with its status when
    the server gives it, as ``list --json`` rows."""
    url = remote_url(remote)
    ch = HttpChannel(url, remote_token(token), timeout=timeout)
    try:
        code, data = ch.request("GET", "/jobs")
        if code == 401:
            raise CommandRefused(
                f"{url} refused our token (401); pass the job's token with --token or {ENV_TOKEN} (it is in the job's endpoint.json)",
                http_status=401,
            )
        if code != 200 or not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise Unreachable(f"{url} answered GET /jobs with {code}; is it a forgather control server?")
        out = []
        for j in data["jobs"]:
            if not isinstance(j, dict) or not isinstance(j.get("job_id"), str):
                continue
            row: dict[str, Any] = {
                "job_id": j["job_id"],
                "state": j.get("state"),
                "step": j.get("step"),
                "max_steps": j.get("max_steps"),
                "url": url,
                "port": ch.port,
                "liveness": "alive",
                "evidence": "answered an authenticated request",
                "host": None,
                "pid": None,
                "updated_at": None,
            }
            scode, st = ch.request("GET", f"/jobs/{j['job_id']}/status")
            if scode == 200 and isinstance(st, dict):
                row.update(
                    host=st.get("host"),
                    pid=st.get("pid"),
                    updated_at=st.get("updated_at") or st.get("heartbeat_at"),
                    world_size=st.get("world_size"),
                )
            out.append(row)
        return out
    finally:
        ch.close()
