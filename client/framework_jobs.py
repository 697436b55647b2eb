"""Jobs of the Forgather framework's own control callback, listed and commanded beside ours.

The framework's ``TrainerControlCallback`` (``forgather.ml.trainer.callbacks.control_callback``)
writes ``~/.forgather/jobs/<job_id>/endpoint.json`` = ``{job_id, host, port, pid,
started_at}`` from rank 0: no token, no heartbeat, no status file, no inbox. It serves
``GET /jobs/ID/status`` and ``POST /jobs/ID/control`` (``graceful_stop``,
``save_checkpoint``, ``save_and_stop``, ``abort``) on every address without a token,
applies a command at its next ``on_log`` (every ``logging_steps``), keeps no receipt and
takes no idempotency key, and removes endpoint.json when training ends. Such a job shares
our default jobs directory, so a team can move over job by job.

Its records and answers are untrusted like ours. A folder is the framework's only when its
endpoint.json has none of our fields and the folder holds no record of ours; every field is
checked. It is alive when its host is this host and its pid runs and started before the
endpoint was written (a recycled pid started later). We connect only then, only to
127.0.0.1 and only while that process listens on the port; we never send a token (it takes
none); an exchange is bounded in time and bytes, and an answer must name the job.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any, ClassVar

from forgather_control.client.jobinfo import JobInfo
from forgather_control.client.transport import NoAnswer
from forgather_control.core.commands import Command, parse_command, verb
from forgather_control.core.errors import CommandRefused, ControlError, OutcomeUnknown, Unreachable, UsageError, WaitTimeout
from forgather_control.core.files import RecordError
from forgather_control.core.host import local_host, process_start_time
from forgather_control.core.liveness import Liveness
from forgather_control.core.metrics import read_history
from forgather_control.core.records import CommandOptions, CommandResult, Endpoint, MetricHistory, Receipt, Status, decode
from forgather_control.core.states import JobState

__all__ = [
    "CHANNEL",
    "COMMANDS",
    "Acknowledgement",
    "FrameworkTransport",
    "Seen",
    "assess",
    "check_followable",
    "check_reachable",
    "follow",
    "judge",
    "recognise",
]

#: The transport's channel name: what ``JobHandle.channel`` says for such a job.
CHANNEL = "framework"
#: Seconds one exchange with its server may take, the whole of it, while listing (a hung
#: server must not hold ``list``); a command gets the handle's timeout.
LIST_TIMEOUT = 0.5
#: The largest answer read from its server (its status is a few hundred bytes).
MAX_ANSWER = 64 * 1024
#: How long the pid's start time may be after the endpoint's ``started_at`` and still be
#: the process that wrote it (psutil rounds start times).
_START_TOLERANCE = 1.0

#: Our commands and the framework callback's names for them. ``evaluate`` has none.
COMMANDS: dict[Command, str] = {
    Command.SAVE_CHECKPOINT: "save_checkpoint",
    Command.GRACEFUL_STOP: "graceful_stop",
    Command.SAVE_AND_STOP: "save_and_stop",
    Command.ABORT: "abort",
}

WHAT = "the Forgather framework's own control callback (TrainerControlCallback)"
NO_RECEIPT = (
    "it keeps no receipt and takes no idempotency key: the command applies at the job's next logging step "
    "(logging_steps), `status` cannot follow it, and sending it again may apply it twice"
)

#: Fields only our endpoint.json has (each one is written by every release of ours).
_OURS = ("url", "token", "protocol", "boot_id")
#: The framework's endpoint format (read as our Endpoint record): every field is required.
_ENDPOINT = ("job_id", "host", "port", "pid", "started_at")
#: Keys of its status answer that are not the trainer's logs.
_NOT_METRICS = frozenset({"job_id", "status", "timestamp", "global_step", "epoch", "max_steps"})
_MAX_METRICS = 32


class BadAnswer(Unreachable):
    """Something answered on the job's port, but not as the framework's callback does."""


class Acknowledgement(Receipt):
    """What the callback answers to a command, in a receipt's shape: it keeps no receipt,
    so no id and no key (written as null, as ``receipt`` false says), and what it said."""

    always: ClassVar[tuple[str, ...]] = ("id", "key", "receipt", "acknowledged_at")

    job_id: str | None = None
    receipt: bool = False
    acknowledged_at: float | None = None
    note: str | None = None


class Seen(Acknowledgement):
    """What following a stop sent to such a job saw (acknowledged, then ended)."""

    always = ("id", "receipt")


# -- recognising and judging -------------------------------------------------------------
def recognise(info: JobInfo) -> None:
    """Mark ``info`` as a job of the framework's callback when its folder holds that
    format and nothing of ours (a folder with a record of ours stays ours: never mixed),
    and check what the format requires; a break makes the job ``corrupt`` with why."""
    ep = info.endpoint
    if ep is None or info.corrupt or any(getattr(ep, k) is not None for k in _OURS):
        return
    if info.status is not None or info.job is not None or info.nodes or os.path.lexists(info.paths.inbox):
        return
    info.framework = True
    where = f"{info.paths.endpoint} (the framework callback's endpoint format)"
    missing = [k for k in _ENDPOINT if getattr(ep, k) is None]
    if missing:
        info.corrupt.append(f"{where}: has no {', '.join(repr(k) for k in missing)}")
        return
    if not ep.port:
        info.corrupt.append(f"{where}: field 'port' is 0, outside 1..65535")
        return
    if ep.job_id != info.job_id:
        info.corrupt.append(f"{where}: names job {ep.job_id!r}, not its folder's {info.job_id!r}")


def this_host(host: object) -> bool:
    """Does ``host`` (what the framework wrote: ``platform.node()``) name this machine?"""
    return isinstance(host, str) and host in (os.uname().nodename, local_host().hostname)


def judge(ep: Endpoint) -> tuple[Liveness, str]:
    """Alive, dead or unknown, from the endpoint alone: the framework records no heartbeat,
    so another host's job cannot be judged from here."""
    if not this_host(ep.host):
        return Liveness.UNKNOWN, f"on host {ep.host}: {WHAT} records no heartbeat; judge it there"
    pid, started = ep.pid, ep.started_at
    actual = process_start_time(pid) if pid is not None else None
    if actual is None:
        return Liveness.DEAD, f"process {pid} no longer runs on this host"
    if started is None or actual > started + _START_TOLERANCE:
        return Liveness.DEAD, f"process {pid} no longer runs on this host (pid {pid} now belongs to a process started after the job's endpoint was written)"
    return Liveness.ALIVE, "process running on this host"


def listens_on(pid: int, port: int) -> bool | None:
    """Does process ``pid`` listen on TCP ``port``? None when it cannot be told (another
    user's process): then the pid check alone stands."""
    import psutil

    try:
        proc = psutil.Process(pid)
        conns = proc.net_connections("tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    except psutil.AccessDenied:
        return None
    except (psutil.Error, OSError):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def assess(info: JobInfo, *, ask: bool, timeout: float = LIST_TIMEOUT) -> JobInfo:
    """Judge a job of the framework's callback; when it is alive here and ``ask``, read its
    step, epoch and logs from its status API (checked; a server that answers for another
    job, or not as the callback does, is said so in the evidence). Its status stands in
    ``info.status`` in our record's shape; an alive job it cannot be asked shows ``running``
    without a step: its endpoint is there, so its training has not ended."""
    ep = info.endpoint or Endpoint()
    info.liveness, info.evidence = judge(ep)
    info.status = None
    if info.liveness != Liveness.ALIVE:
        return info
    info.status = Status(state=JobState.RUNNING)
    if ask:
        try:
            info.status = FrameworkTransport(info, timeout=timeout).status()
        except ControlError as exc:
            info.evidence += f"; its status was not read: {exc}"
    return info


def check_reachable(info: JobInfo) -> None:
    """Raise, with why and what to do, when a command cannot reach this framework job."""
    ep = info.endpoint or Endpoint()
    if not this_host(ep.host):
        raise Unreachable(
            f"job {info.job_id} runs {WHAT} on host {ep.host}: that callback serves without a token on every "
            f"address, and forgather control reaches it only on its own host, through 127.0.0.1. Run the command on {ep.host}"
        )
    if info.liveness != Liveness.ALIVE:
        raise Unreachable(f"job {info.job_id} cannot be reached ({info.liveness}: {info.evidence})")


def check_followable(command: Command | str) -> None:
    """A save cannot be followed on such a job: it keeps no receipt and says nothing when
    it has saved. Raise before anything is sent."""
    cmd = command if isinstance(command, Command) else parse_command(command)
    if not cmd.stops:
        raise UsageError(
            f"--wait cannot follow a {cmd.value} on a job of {WHAT}: {NO_RECEIPT}. Nothing was sent; send it without --wait. "
            "(stop, save-stop and abort can be followed until the job ends)"
        )


# -- talking to its server ---------------------------------------------------------------
def exchange(port: int, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float) -> tuple[int, Any]:
    """One request to 127.0.0.1:``port`` and its JSON answer, the whole exchange within
    ``timeout`` seconds and :data:`MAX_ANSWER` bytes. HTTP/1.0: the answer ends with the
    connection, so there is no chunking or keep-alive to trust. Raises Unreachable when
    nothing could be sent, NoAnswer once the request went out, BadAnswer for anything
    that is not an HTTP answer with a JSON body."""
    deadline = time.monotonic() + timeout
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nUser-Agent: forgather-control\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    url = f"http://127.0.0.1:{port}{path}"
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        raise Unreachable(f"cannot reach the job's control server at {url}: {exc}") from None
    chunks: list[bytes] = []
    size = 0
    with sock:
        try:
            sock.sendall(head.encode() + b"\r\n" + payload)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no whole answer within {timeout:g}s")
                sock.settimeout(left)
                data = sock.recv(16384)
                if not data:
                    break
                size += len(data)
                if size > MAX_ANSWER:
                    raise BadAnswer(f"the answer from {url} is larger than {MAX_ANSWER} bytes; it is not the framework's callback")
                chunks.append(data)
        except OSError as exc:
            raise NoAnswer(f"the job's control server at {url} took the request but did not answer: {exc or type(exc).__name__}") from None
    return _parse(b"".join(chunks), url)


def _parse(raw: bytes, url: str) -> tuple[int, Any]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split(None, 2)
    if not sep or len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not (line[1].isdigit() and len(line[1]) == 3):
        raise BadAnswer(f"what answered at {url} is not an HTTP server")
    headers = {}
    for h in head.split(b"\r\n")[1:]:
        name, _, value = h.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"transfer-encoding" in headers:
        raise BadAnswer(f"the answer from {url} is not the framework's callback's (a transfer encoding in an HTTP/1.0 answer)")
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise BadAnswer(f"the answer from {url} was cut short")
        body = body[: int(length)]
    try:
        return int(line[1]), json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadAnswer(f"the answer from {url} (HTTP {int(line[1])}) is not JSON; it is not the framework's callback") from None


def check_status(data: Any, job_id: str, *, name: str) -> Status:
    """Its status answer in our status record's shape (``step``, ``max_steps``, ``epoch``,
    ``metrics`` from the logs, ``updated_at``), checked; BadAnswer for an answer that is not
    this job's status."""
    if not isinstance(data, dict):
        raise BadAnswer(f"{name} is not a JSON object")
    if data.get("job_id") != job_id:
        other = data.get("job_id")
        said = f"job {other[:128]!r}" if isinstance(other, str) else "no job id"
        raise BadAnswer(f"{name} answers for {said}, not for job {job_id}: another process serves that port")
    step = data.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise BadAnswer(f"{name} has no global_step (a non-negative integer)")
    metrics = {
        k: v
        for k, v in data.items()
        if k not in _NOT_METRICS and isinstance(k, str) and len(k) <= 64 and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    out: dict[str, Any] = {"job_id": job_id, "state": "running", "step": step, "metrics": dict(list(metrics.items())[:_MAX_METRICS])}
    for key, to in (("epoch", "epoch"), ("timestamp", "updated_at")):
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            out[to] = value
    total = data.get("max_steps")
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        out["max_steps"] = total  # 0 or less: a limit the trainer does not know
    try:
        return decode(out, Status, name=name)
    except RecordError as exc:
        raise BadAnswer(str(exc)) from None


class FrameworkTransport:
    """Status and commands over the framework callback's HTTP API, for one job found in a
    jobs directory. It keeps no receipt: :meth:`entry` knows none, and a key is not sent."""

    channel = CHANNEL

    def __init__(self, info: JobInfo, *, timeout: float = 5.0) -> None:
        self.info = info
        self.job_id = info.job_id
        self.timeout = timeout

    def _port(self) -> int:
        """The port, once the endpoint still names a live process here that listens on it."""
        ep = self.info.endpoint or Endpoint()
        check_reachable(self.info)
        liveness, why = judge(ep)  # again, now: the verdict may be seconds old
        if liveness != Liveness.ALIVE or ep.pid is None or ep.port is None:
            raise Unreachable(f"job {self.job_id} cannot be reached: {why}")
        if listens_on(ep.pid, ep.port) is False:
            raise Unreachable(f"job {self.job_id}'s process {ep.pid} runs but does not listen on port {ep.port}: its control server has stopped")
        return ep.port

    def status(self) -> Status:
        port = self._port()
        code, data = exchange(port, "GET", f"/jobs/{self.job_id}/status", timeout=self.timeout)
        name = f"the status from 127.0.0.1:{port}"
        if code != 200:
            raise BadAnswer(f"{name} is HTTP {code}, not the job's status: {_error_of(data)}")
        return check_status(data, self.job_id, name=name)

    def send(self, command: Command, key: str, options: CommandOptions | None = None) -> Receipt:
        """Post the framework's name for ``command``; its acknowledgement, as a receipt that
        says it is one. ``key`` is not sent: the callback takes none."""
        name = COMMANDS.get(command)
        if name is None:
            raise CommandRefused(
                f"job {self.job_id} runs {WHAT}, which has no {command.value} command (it offers save, stop, save-stop and abort); nothing was sent"
            )
        if options is not None and options.evaluate is False:
            raise UsageError(
                f"job {self.job_id} runs {WHAT}, which cannot skip the evaluation it runs before a save "
                "(only with load_best_model_at_end); send save without --no-eval. Nothing was sent"
            )
        before = self.status()  # the server must name this job before a command goes to it
        port = self._port()
        sent_at = time.time()
        try:
            code, data = exchange(port, "POST", f"/jobs/{self.job_id}/control", {"command": name}, timeout=self.timeout)
        except Unreachable as exc:
            if type(exc) is Unreachable:
                raise  # could not connect: nothing was sent
            raise OutcomeUnknown(
                f"{name} was sent to job {self.job_id} but no usable answer came back ({exc}); it may still apply. "
                f"{WHAT} takes no idempotency key: check with `forgather control status {self.job_id}` before sending it again",
                key=None,  # type: ignore[arg-type]
                command=name,
            ) from None
        ack = data if isinstance(data, dict) else {}
        if code == 200 and ack.get("status") == "acknowledged" and ack.get("command") == name:
            at = ack.get("timestamp")
            return Acknowledgement(
                job_id=self.job_id,
                command=name,
                state="acknowledged",
                source=CHANNEL,
                created_at=sent_at,
                acknowledged_at=at if isinstance(at, (int, float)) and not isinstance(at, bool) else None,
                step=before.step,
                note=NO_RECEIPT,
            )
        raise CommandRefused(f"job {self.job_id} ({WHAT}) refused {name} (HTTP {code}): {_error_of(data)}", http_status=code)

    def entry(self, command_id: str, key: str | None = None) -> Receipt | None:
        return None  # it keeps no receipts

    def metrics(self, since: int | None = None) -> MetricHistory:
        """It records no metric history: the folder's (empty) one."""
        try:
            return read_history(self.info.paths, since)
        except RecordError as exc:
            raise Unreachable(f"job {self.job_id}'s metric history cannot be read: {exc}") from None

    def close(self) -> None:
        pass


def _error_of(data: Any) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    return err[:500] if isinstance(err, str) else "(no reason given)"


# -- following a stop ----------------------------------------------------------------------
def follow(
    info: JobInfo,
    command: Command | str,
    *,
    timeout: float,
    interval: float = 0.2,
    on_poll: Callable[[Receipt | None], None] | None = None,
) -> Receipt:
    """Follow a stop, save-stop or abort sent to such a job until its training has ended
    (the callback removed its endpoint) or its process is gone. There is no receipt to
    read, so the answer says what was seen (``state`` ``ended``), never ``completed``: a
    save-stop's checkpoint is not confirmed, and an end cannot be told from a run that
    reached its last step meanwhile."""
    cmd = command if isinstance(command, Command) else parse_command(command)
    check_followable(cmd)
    name = COMMANDS[cmd]
    deadline = time.monotonic() + timeout
    seen = Seen(job_id=info.job_id, command=name, state="acknowledged", source=CHANNEL)
    while True:
        ep = info.endpoint or Endpoint()
        if not os.path.lexists(info.paths.endpoint):
            how = "its training has ended: the framework's callback removed its endpoint"
            break
        liveness, why = judge(ep)
        if liveness != Liveness.ALIVE:
            how = f"its process has exited ({why})"
            break
        if on_poll is not None:
            on_poll(seen)
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"job {info.job_id} still runs after {timeout:g}s; the {name} was acknowledged and applies at its next "
                f"logging step. {WHAT} keeps no receipt: check later with `forgather control status {info.job_id}`"
            )
        time.sleep(interval)
    reason = f"{how}; that is what was seen: {WHAT} keeps no receipt to say it applied the {name}"
    if cmd == Command.SAVE_AND_STOP:
        reason += "; the save is not confirmed: the callback names no checkpoint (the framework's Trainer writes them under its output_dir/checkpoints)"
    return Seen(
        job_id=info.job_id,
        command=name,
        state="ended",
        source=CHANNEL,
        updated_at=time.time(),
        result=CommandResult(final_state="ended"),
        reason=reason,
    )


def acknowledged_line(entry: Receipt) -> str:
    """One line for a person: what the callback acknowledged, and what that does not promise."""
    job = entry.job_id if isinstance(entry, Acknowledgement) else None
    return f"{verb(entry.command)} acknowledged by job {job}, which runs {WHAT}: {NO_RECEIPT}"


def followed_to_end(entry: Receipt) -> bool:
    """Is ``entry`` what :func:`follow` returns when the job ended as a stop asks?"""
    return entry.source == CHANNEL and entry.state == "ended"
