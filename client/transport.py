"""The two ways to reach a job: its HTTP server, or the files in its folder.

Standard library only (``http.client``, imported on first request): a CLI that sends
one request should not pay for an HTTP library's import or an SSL context. A transport
knows how to move a command, a status or a receipt; *which* transport a job gets, and
what to do when it fails, is :class:`~forgather_control.client.handle.JobHandle`'s.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import http.client
    import socket

from forgather_control.core.commands import Command, State, is_refusal_of, new_command_id
from forgather_control.core.errors import BadKnob, CommandRefused, ControlError, JobNotFound, OutcomeUnknown, Unreachable, UsageError
from forgather_control.core.files import RecordError, write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.liveness import pid_alive, same_pid_namespace
from forgather_control.core.metrics import check_history, read_history
from forgather_control.core.proof import new_nonce, proof_matches
from forgather_control.core.records import CommandFile, CommandOptions, Endpoint, MetricHistory, R, Receipt, Status, decode, encode, load, load_or_none


class NoAnswer(Unreachable):
    """The request was sent; no answer came back (timed out, or the connection broke)."""


class NotSent(Unreachable):
    """Nothing of the request left: its connection could not be opened or proved (refused,
    reset, a /hello unanswered or unproved), or it broke while being written. Another
    channel may carry the command; the same key keeps it from applying twice."""


class ApiReceipt(Receipt):
    """A receipt as the HTTP API sends it: every field, null when unset (its response
    model's shape, which ``--json`` and the web page pass on)."""

    always = Receipt.__struct_fields__


class HttpChannel:
    """A kept-alive connection to one job's server. Plain HTTP on loopback or a cluster
    network; the token travels only in the Authorization header, and only to a server
    that has first proved it holds it (:mod:`.proof`), on every new connection.
    ``job_id``: the job the server must prove it serves (None: any job, as for
    ``--remote``, where the server says which)."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 5.0, job_id: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme != "http" or not parsed.hostname:
            raise UsageError(f"unsupported control URL {url!r}; expected http://HOST:PORT")
        self.url = url
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.token = token
        self.timeout = timeout
        self.job_id = job_id
        self._conn: http.client.HTTPConnection | None = None
        #: the socket the server proved itself on; the token goes on that one only
        self._proved_on: socket.socket | None = None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One request and its JSON answer. Raises NotSent when nothing was sent (the
        connection could not be opened or proved, or broke while the request was written),
        and NoAnswer when the request went out but no answer came back, so a caller that
        changes state knows its outcome is unknown (both are Unreachable).

        A kept-alive connection the server has closed meanwhile fails on reuse; that
        one failure is retried on a fresh connection (the request never arrived)."""
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        import http.client  # here, not at the top: `forgather control list` rarely needs HTTP (15 ms)

        stale = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
        for attempt in (0, 1):
            reused = self._conn is not None and self._conn.sock is not None
            conn = self._ready()
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                conn.request(method, path, body=payload, headers=headers)
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt == 0 and reused and isinstance(exc, stale):
                    continue
                raise NotSent(f"cannot reach the job's control server at {self.url}: {exc}; nothing was sent") from None
            try:
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt == 0 and reused and isinstance(exc, http.client.RemoteDisconnected):
                    continue  # closed while idle, before it read our request
                raise NoAnswer(f"the job's control server at {self.url} took the request but did not answer: {exc or type(exc).__name__}") from None
        return resp.status, _json(raw)

    def _ready(self) -> http.client.HTTPConnection:
        """The connection, open and, with a token, proved. We open every connection
        ourselves (http.client's own reconnect is off), so the proof belongs to one
        socket: a new one proves again. Raises NotSent: nothing has carried the command."""
        import http.client

        for _ in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self._conn.auto_open = 0  # a reconnect it made by itself would carry an unproved token
            conn = self._conn
            if conn.sock is None:
                self._proved_on = None
                try:
                    conn.connect()
                except OSError as exc:
                    self.close()
                    raise NotSent(f"cannot reach the job's control server at {self.url}: {exc}; nothing was sent") from None
            if not self.token or (conn.sock is not None and conn.sock is self._proved_on):
                return conn
            self._prove(conn)
            if conn.sock is not None:  # its answer may have closed the connection
                self._proved_on = conn.sock
                return conn
        self.close()
        raise NotSent(f"the server at {self.url} closes every connection it proves itself on; the token was not sent, nor the request")

    def _prove(self, conn: http.client.HTTPConnection) -> None:
        """Make the server prove, on this connection, that it holds the token, before
        anything carries it. Any failure is NotSent: a /hello is not the command."""
        import http.client

        token, nonce = self.token or "", new_nonce()
        try:  # the challenge itself goes without the token
            conn.request("GET", f"/hello?nonce={nonce}", headers={"Accept": "application/json"})
            resp = conn.getresponse()
            code, data = resp.status, _json(resp.read())
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise NotSent(
                f"the server at {self.url} did not answer the proof that comes before the token ({exc or type(exc).__name__}); nothing was sent"
            ) from None
        job = data.get("job_id") if isinstance(data, dict) else None
        said = data.get("proof") if isinstance(data, dict) else None
        answered = code == 200 and isinstance(job, str) and isinstance(said, str)
        if answered and isinstance(job, str) and isinstance(said, str) and proof_matches(token, job, nonce, said) and self.job_id in (None, job):
            return
        self.close()
        if answered and self.job_id is None:  # --remote: the user's token does not match the server's
            raise CommandRefused(
                f"the server at {self.url} (says it serves job {job}) does not prove it holds our token: the token is wrong "
                "(give the job's token with --token-file FILE or $FORGATHER_TOKEN; it is in the job's endpoint.json), or this is not the "
                "job's server. Ours was not sent",
                http_status=401,
            )
        raise NotSent(
            f"the server at {self.url} does not prove it holds the job's token (HTTP {code}); it may be a stale endpoint "
            "whose port another process took. The token was not sent, nor the request"
        )

    def close(self) -> None:
        self._proved_on = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _json(raw: bytes) -> Any:
    """An answer's JSON body; a body that is not JSON as its ``detail``."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"detail": raw.decode(errors="replace")[:500]}


def probe_endpoint(endpoint: Endpoint, *, timeout: float = 0.5) -> bool | None:
    """True when the server proves it holds the job's token and answers for this job;
    False when something answers but is not this job; None: no answer. An endpoint
    recorded in this PID namespace by a process that is gone is never contacted:
    whatever holds its port now is a stranger. One of another namespace (a container on
    this host) is asked: its pid says nothing here, and the server must prove the token."""
    url, job_id = endpoint.url, endpoint.job_id
    if not url:
        return None
    if same_pid_namespace(endpoint) and not pid_alive(endpoint):
        return None
    try:
        ch = HttpChannel(url, endpoint.token, timeout=timeout, job_id=job_id)
        code, data = ch.request("GET", "/jobs")
        ch.close()
    except ControlError:
        return None
    if code != 200 or not isinstance(data, dict):
        return False
    ids = [j.get("job_id") for j in data.get("jobs", []) if isinstance(j, dict)]
    return job_id is None or job_id in ids


def detail(data: Any) -> str:
    """The server's reason for a refusal, from its JSON body."""
    if isinstance(data, dict):
        d = data.get("detail", data)
        if isinstance(d, list):  # FastAPI validation errors
            return "; ".join(str(x.get("msg", x)) if isinstance(x, dict) else str(x) for x in d)
        return str(d)
    return str(data)


def refusal(code: int, data: Any) -> ControlError:
    """The error for a non-2xx answer."""
    msg = detail(data)
    if code == 401:
        return CommandRefused(f"the job refused our token (401): {msg}. Is the endpoint file current?", http_status=code)
    if code == 404:
        return JobNotFound(f"not found (404): {msg}")
    if code == 422 and isinstance(data, dict) and data.get("refused") == "knob":
        return BadKnob(f"the job refused the change: {msg}; nothing was queued")
    return CommandRefused(f"the job refused the request ({code}): {msg}", http_status=code)


class Transport(Protocol):
    """What a JobHandle needs from a way of reaching its job."""

    channel: str

    def send(self, command: Command, key: str, options: CommandOptions | None = None) -> Receipt: ...

    def status(self) -> Status: ...

    def entry(self, command_id: str, key: str | None = None) -> Receipt | None: ...

    def metrics(self, since: int | None = None) -> MetricHistory: ...

    def close(self) -> None: ...


class HttpTransport:
    """Commands, status and receipts over the job's HTTP API."""

    channel = "http"

    def __init__(self, url: str, token: str | None, job_id: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.job_id = job_id
        self.http = HttpChannel(url, token, timeout=timeout, job_id=job_id)

    def send(self, command: Command, key: str, options: CommandOptions | None = None) -> Receipt:
        body: dict[str, Any] = {"command": command.value, "key": key}
        if options is not None:
            body["options"] = encode(options)
        try:
            code, data = self.http.request("POST", f"/jobs/{self.job_id}/control", body)
        except NoAnswer as exc:
            raise OutcomeUnknown(
                f"{command.value} was sent to job {self.job_id} but no answer came back ({exc}); it may still apply. "
                f"Its key is {key}: send it again with --key {key} (add --wait to follow it); the same key never queues twice",
                key=key,
                command=command.value,
            ) from None
        if code in (200, 202) and isinstance(data, dict):
            return self._checked(data, ApiReceipt, "receipt")
        raise refusal(code, data)

    def status(self) -> Status:
        code, data = self.http.request("GET", f"/jobs/{self.job_id}/status")
        if code == 200 and isinstance(data, dict):
            return self._checked(data, Status, "status")
        raise refusal(code, data)

    def entry(self, command_id: str, key: str | None = None) -> Receipt | None:
        code, data = self.http.request("GET", f"/jobs/{self.job_id}/commands/{command_id}")
        if code == 200 and isinstance(data, dict):
            return self._checked(data, ApiReceipt, "receipt")
        if code == 404:
            return None
        raise refusal(code, data)

    def metrics(self, since: int | None = None) -> MetricHistory:
        query = f"?since={int(since)}" if since is not None else ""
        code, data = self.http.request("GET", f"/jobs/{self.job_id}/metrics{query}")
        if code == 200 and isinstance(data, dict):
            try:
                return check_history(data, name=f"the metric history from {self.url}", job_id=self.job_id)
            except RecordError as exc:
                raise Unreachable(f"{exc}; is it a forgather control server of this release?") from None
        raise refusal(code, data)

    def _checked(self, data: dict[str, Any], cls: type[R], what: str) -> R:
        """An answer is untrusted like any record: decoded and checked, once, where the
        body is read."""
        try:
            return decode(data, cls, name=f"the {what} from {self.url}")
        except RecordError as exc:
            raise Unreachable(f"{exc}; is it a forgather control server of this release?") from None

    def close(self) -> None:
        self.http.close()


class FileTransport:
    """Commands into the job's ``inbox/``, status and receipts from its status.json:
    for clusters whose compute nodes the client cannot reach, and jobs without HTTP."""

    channel = "file"

    def __init__(self, paths: JobPaths) -> None:
        self.paths = paths

    def send(self, command: Command, key: str, options: CommandOptions | None = None) -> Receipt:
        if not self.paths.inbox.is_dir():
            raise Unreachable(f"job {self.paths.job_id} has no inbox at {self.paths.inbox}; it cannot take file commands")
        cid = new_command_id()
        record = CommandFile(id=cid, command=command.value, key=key, sent_at=time.time(), options=options)
        write_json_atomic(self.paths.inbox / f"{time.time_ns()}-{cid}.json", encode(record))
        return Receipt(id=cid, command=command.value, state=State.SENT.value, key=key, source="file")

    def status(self) -> Status:
        try:
            st = load(self.paths.status, Status)
        except RecordError as exc:
            raise Unreachable(f"job {self.paths.job_id}'s status cannot be read: {exc}") from None
        if st is None:
            raise Unreachable(f"job {self.paths.job_id} has no status.json yet")
        return st

    def entry(self, command_id: str, key: str | None = None) -> Receipt | None:
        """The receipt with this id, else (a command file re-sent with a key rank 0 has
        seen: the ledger keeps the first) the receipt that carries the key."""
        return receipt_in(load_or_none(self.paths.status, Status), command_id, key)

    def metrics(self, since: int | None = None) -> MetricHistory:
        try:
            return read_history(self.paths, since)
        except RecordError as exc:
            raise Unreachable(f"job {self.paths.job_id}'s metric history cannot be read: {exc}") from None

    def close(self) -> None:
        pass


def receipt_in(status: Status | None, command_id: str, key: str | None = None) -> Receipt | None:
    """A receipt from a status record's ``commands``: by id, else by idempotency key. With
    a key, a receipt under our id but another key is another command's (ours reused its
    id): ours is the refusal the ledger recorded under a refusal id of it."""
    found = (status.commands or []) if status is not None else []
    for e in found:
        if e.id == command_id and (key is None or e.key == key):
            return e
    for e in found:
        if key is not None and e.key == key and is_refusal_of(e.id, command_id):
            return e
    if key is not None:
        for e in found:
            if e.key == key and State.parse(e.state) != State.REJECTED:
                return e
    return None
