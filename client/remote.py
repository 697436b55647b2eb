"""A control server reached by address (``--remote HOST:PORT``) instead of a jobs folder.

The user gives the address and the token (``--token-file FILE``, ``$FORGATHER_TOKEN``, or a
literal ``--token``, which every user on the host can read in ``ps``); the server says which
job it serves. No records are read, so everything known about the
job comes from the server's own answers.
"""

from __future__ import annotations

import logging
import os

from forgather_control.client.transport import HttpChannel
from forgather_control.core.env import ENV_TOKEN
from forgather_control.core.errors import CommandRefused, Unreachable, UsageError
from forgather_control.core.files import RecordError, read_secret_file
from forgather_control.core.jobs import is_valid_job_id
from forgather_control.core.records import JobRow, ServedJob, Status, decode
from forgather_control.core.states import JobState

log = logging.getLogger(__name__)


def remote_url(remote: str) -> str:
    """``HOST:PORT`` (or a full ``http://`` URL) -> ``http://HOST:PORT``."""
    remote = remote.strip()
    if remote.startswith(("http://", "https://")):
        return remote.rstrip("/")
    host, sep, port = remote.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--remote expects HOST:PORT (e.g. node17:41234), got {remote!r}")
    return f"http://{host}:{port}"


#: A token file holds one token (ours are 43 characters): more is not one.
_MAX_TOKEN_FILE = 4 * 1024


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (``--token-file``): one line, surrounding whitespace dropped.
    Refused (ValueError saying what to do, never the file's text) unless it is a private
    file of this user's (``core.files.read_secret_file``: the token commands the job) and
    holds one token: printable ASCII, no spaces."""
    name = os.fspath(path)
    token = read_secret_file(
        name,
        what="token file",
        max_bytes=_MAX_TOKEN_FILE,
        holds="it holds one token",
        secret="the token commands the job",
        mine="a token someone else wrote could send your commands to their server",
        then="run the command again",
    ).strip()
    if not token:
        raise ValueError(f"the token file {name} is empty; put the job's token in it (from its endpoint.json)")
    if not all("!" <= c <= "~" for c in token):
        raise ValueError(f"the token file {name} holds more than one token, or a character a token has not; it holds the token alone, on one line")
    return token


def remote_token(token: str | None) -> str | None:
    """The token given, else ``$FORGATHER_TOKEN``."""
    return token if token else os.environ.get(ENV_TOKEN) or None


def remote_jobs(remote: str, token: str | None, *, timeout: float = 5.0) -> list[JobRow]:
    """The jobs a remote control server serves (GET /jobs), each with what its status
    says when the server gives it, as ``list --json`` rows. An entry that is not a job
    (a field of the wrong type or size) is left out, and said so; a status that is not
    one adds nothing."""
    url = remote_url(remote)
    ch = HttpChannel(url, remote_token(token), timeout=timeout)
    try:
        code, data = ch.request("GET", "/jobs")
        if code == 401:
            raise CommandRefused(
                f"{url} refused our token (401); give the job's token with --token-file FILE or ${ENV_TOKEN} (it is in the job's endpoint.json)",
                http_status=401,
            )
        if code != 200 or not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise Unreachable(f"{url} answered GET /jobs with {code}; is it a forgather control server?")
        out = []
        for i, raw in enumerate(data["jobs"]):
            try:
                served = decode(raw, ServedJob, name=f"{url}'s job [{i}]")
            except RecordError as exc:
                log.warning("left out: %s", exc)
                continue
            if not is_valid_job_id(served.job_id):
                log.warning("left out: %s serves a job whose id is not one: %r", url, served.job_id)
                continue
            row = JobRow(
                job_id=served.job_id,
                state=served.state or JobState.UNKNOWN,
                step=served.step,
                max_steps=served.max_steps,
                url=url,
                port=ch.port,
                liveness="alive",
                evidence="answered an authenticated request",
            )
            scode, raw_status = ch.request("GET", f"/jobs/{served.job_id}/status")
            if scode == 200:
                try:
                    st = decode(raw_status, Status, name=f"{url}'s status of job {served.job_id}")
                except RecordError as exc:
                    log.warning("%s", exc)
                else:
                    row.host, row.pid, row.world_size = st.host, st.pid, st.world_size
                    row.updated_at = st.updated_at or st.heartbeat_at
            out.append(row)
        return out
    finally:
        ch.close()
