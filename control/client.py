"""Talk to a running job: HTTP with the endpoint file's token, or the file channel.

Standard library only (``http.client``): a CLI that sends one request should not pay
for an HTTP library's import or an SSL context. Every failure is a typed
:class:`ControlError` whose ``exit_code`` the CLI returns as is.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import http.client

from .errors import CommandFailed, CommandRefused, ControlError, JobNotFound, Unreachable, UsageError, WaitTimeout
from .commands import FINAL_STATES, Command, new_command_id, parse_command
from .files import read_json, write_json_atomic
from .states import is_final
from .listing import JobInfo


class HttpChannel:
    """A kept-alive connection to one job's server. Plain HTTP on loopback or a cluster
    network; the token travels only in the Authorization header."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 5.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise UsageError(f"unsupported control URL {url!r}; expected http://HOST:PORT")
        self.url = url
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        import http.client  # here, not at the top: `forgather control list` rarely needs HTTP (15 ms)

        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt == 1 or not isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                    raise Unreachable(f"cannot reach the job's control server at {self.url}: {exc}") from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = {"detail": raw.decode(errors="replace")[:500]}
        return resp.status, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            import http.client

            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn


def probe_endpoint(endpoint: dict, *, timeout: float = 0.5) -> bool | None:
    """True when the server answers an authenticated request for this job; False when
    something answers but is not this job (or refuses our token); None: no answer."""
    url, job_id = endpoint.get("url"), endpoint.get("job_id")
    if not url or not isinstance(url, str):
        return None
    try:
        ch = HttpChannel(url, endpoint.get("token"), timeout=timeout)
        code, data = ch.request("GET", "/jobs")
        ch.close()
    except ControlError:
        return None
    if code != 200 or not isinstance(data, dict):
        return False
    ids = [j.get("job_id") for j in data.get("jobs", []) if isinstance(j, dict)]
    return job_id is None or job_id in ids


def _detail(data: Any) -> str:
    if isinstance(data, dict):
        d = data.get("detail", data)
        if isinstance(d, list):  # FastAPI validation errors
            return "; ".join(str(x.get("msg", x)) if isinstance(x, dict) else str(x) for x in d)
        return str(d)
    return str(data)


class JobClient:
    """Commands and status for one job found in a jobs directory (or a remote URL).

    ``channel``: "auto" (HTTP when the endpoint has a URL, else the file channel),
    "http" or "file".
    """

    def __init__(self, info: JobInfo | None = None, *, url: str | None = None, token: str | None = None, job_id: str | None = None, channel: str = "auto", timeout: float = 5.0) -> None:
        self.info = info
        self.job_id = job_id or (info.job_id if info else None)
        ep = (info.endpoint if info else None) or {}
        self.url = url or ep.get("url")
        self.token = token if token is not None else ep.get("token")
        if channel not in ("auto", "http", "file"):
            raise UsageError(f"unknown channel {channel!r}; use auto, http or file")
        if channel == "auto":
            channel = "http" if self.url else "file"
        if channel == "file" and info is None:
            raise UsageError("the file channel needs the job's folder in a jobs directory")
        if channel == "http" and not self.url:
            raise Unreachable(
                f"job {self.job_id} has no HTTP endpoint (it ended, or serves the file channel only); "
                "try --channel file"
            )
        self.channel = channel
        self._http = HttpChannel(self.url, self.token, timeout=timeout) if channel == "http" else None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> "JobClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------
    def send(self, command: Command | str, *, key: str | None = None) -> dict[str, Any]:
        """Queue a command; returns its ledger entry (state queued, or rejected)."""
        cmd = parse_command(command) if not isinstance(command, Command) else command
        if self.channel == "http":
            return self._send_http(cmd, key)
        return self._send_file(cmd, key)

    def _send_http(self, cmd: Command, key: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"command": cmd.value}
        if key:
            body["key"] = key
        code, data = self._http.request("POST", f"/jobs/{self.job_id}/control", body)
        if code in (200, 202) and isinstance(data, dict):
            return data
        self._raise_for(code, data)
        raise AssertionError  # pragma: no cover

    def _send_file(self, cmd: Command, key: str | None) -> dict[str, Any]:
        assert self.info is not None
        paths = self.info.paths
        if not paths.inbox.is_dir():
            raise Unreachable(f"job {self.job_id} has no inbox at {paths.inbox}; it cannot take file commands")
        cid = new_command_id()
        record = {"id": cid, "command": cmd.value, "key": key, "sent_at": time.time()}
        write_json_atomic(paths.inbox / f"{time.time_ns()}-{cid}.json", record)
        return {"id": cid, "command": cmd.value, "state": "sent", "key": key, "source": "file"}

    def _raise_for(self, code: int, data: Any) -> None:
        msg = _detail(data)
        if code == 401:
            raise CommandRefused(f"the job refused our token (401): {msg}. Is the endpoint file current?", http_status=code)
        if code == 404:
            raise JobNotFound(f"not found (404): {msg}")
        raise CommandRefused(f"the job refused the request ({code}): {msg}", http_status=code)

    # -- status ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        if self.channel == "http":
            try:
                code, data = self._http.request("GET", f"/jobs/{self.job_id}/status")
            except Unreachable:
                if self.info is not None:
                    return self._status_file()
                raise
            if code == 200 and isinstance(data, dict):
                return data
            self._raise_for(code, data)
        return self._status_file()

    def _status_file(self) -> dict[str, Any]:
        assert self.info is not None
        st = read_json(self.info.paths.status)
        if st is None:
            raise Unreachable(f"job {self.job_id} has no readable status.json yet")
        return st

    def entry(self, command_id: str) -> dict[str, Any] | None:
        """The ledger entry for ``command_id`` from the server, else from status.json."""
        if self.channel == "http":
            try:
                code, data = self._http.request("GET", f"/jobs/{self.job_id}/commands/{command_id}")
                if code == 200 and isinstance(data, dict):
                    return data
                if code not in (404,):
                    self._raise_for(code, data)
            except Unreachable:
                if self.info is None:
                    raise
        if self.info is not None:
            st = read_json(self.info.paths.status, quiet=True) or {}
            for e in st.get("commands") or ():
                if isinstance(e, dict) and e.get("id") == command_id:
                    return e
        return None

    def wait(self, command_id: str, *, timeout: float = 300.0, interval: float = 0.2, on_poll=None) -> dict[str, Any]:
        """Poll until the entry is final; the server going away is not an error as long
        as status.json then says how the command ended."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            try:
                last = self.entry(command_id) or last
            except Unreachable:
                if self.info is None:
                    raise
            if last is not None and last.get("state") in FINAL_STATES:
                return last
            if on_poll is not None:
                on_poll(last)
            if time.monotonic() >= deadline:
                state = last.get("state") if last else "not yet picked up"
                raise WaitTimeout(
                    f"command {command_id} is still {state} after {timeout:g}s; it stays queued. "
                    f"Check later with `forgather control status {self.job_id}`"
                )
            if self.info is not None and self.info.endpoint is None:
                # Sent to a job that was starting: if its launcher has recorded the end
                # (it died before rank 0 took the command), waiting longer cannot help.
                job = read_json(self.info.paths.job, quiet=True) or {}
                if is_final(job.get("state")):
                    last = self.entry(command_id) or last
                    if last is not None and last.get("state") in FINAL_STATES:
                        return last
                    raise CommandFailed(
                        f"job {self.job_id} ended ({job.get('state')}, exit code {job.get('exit_code')}) "
                        f"before it took command {command_id}"
                    )
            if self.info is not None and self.info.endpoint is not None and not self.info.paths.endpoint.exists():
                # The job ended; status.json is final. One more read, then give up.
                last = self.entry(command_id) or last
                if last is not None and last.get("state") in FINAL_STATES:
                    return last
                st = read_json(self.info.paths.status, quiet=True) or {}
                if is_final(st.get("state")):
                    raise CommandFailed(
                        f"job {self.job_id} ended ({st.get('state')}) and its ledger has no final "
                        f"entry for command {command_id}"
                    )
            time.sleep(interval)
