"""Alerts: which changes of a job are worth a message, the message, where it goes, and the
claim that makes one process of several send it, once.

Pure parts: :func:`events` (two of rank 0's statuses in, the events between them out),
:func:`end_alert` (a run's end, told by the launcher or a reader that judged it dead),
:func:`message` (the title and text a person reads, every field ``printable``) and
:func:`sinks_from` (``--notify``, ``--notify-cmd`` and the environment, checked).
:func:`read_sinks_file` reads ``--notify-file``: the way to name a sink that is in no
process's argv (a command line is readable by every user on the host).

Files: ``notify.json`` (:func:`write_sinks`, :func:`read_sinks`: 0600, the owner's, never
through a link; a notify URL is a secret) and ``alerts/<key>``, one claim per event
(:func:`claim`, :func:`release`, :func:`taken_over`). The key names the event once:
``r<run>-end`` for a run's end whoever tells it (so the launcher's ``failed`` and a
listing's ``dead`` are never both sent), ``r<run>-guard-<firing id>``,
``r<run>-straggler-<firing id>``, ``r<run>-stalled-<step>``. A relaunch is a new run: new
keys. Who sends, and why nothing is lost or sent twice: docs/design-notes.md, "Alerts: who
sends, once". Sending is :mod:`forgather_control.client.notify`'s.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import stat
from collections.abc import Iterable, Mapping, Sequence

from msgspec import structs

from forgather_control.core.env import ENV_NOTIFY, ENV_NOTIFY_CMD
from forgather_control.core.files import TEMP_PREFIX, RecordError, ensure_private_dir, open_folder, read_secret_file, remove_quietly, write_json_atomic
from forgather_control.core.jobs import JobPaths, default_jobs_dir
from forgather_control.core.liveness import fresh, pid_alive, process_identity, same_pid_namespace
from forgather_control.core.records import MAX_TEXT, Alert, AlertClaim, AlertSinks, GuardFiring, Status, encode, load
from forgather_control.core.safe import printable
from forgather_control.core.states import JobState

__all__ = [
    "CLAIM_STALE_AFTER",
    "END_EVENTS",
    "EVENTS",
    "alert_json",
    "claim",
    "describe_sinks",
    "end_alert",
    "events",
    "hide_notify",
    "message",
    "read_sinks",
    "read_sinks_file",
    "release",
    "sink_name",
    "sinks_from",
    "status_command",
    "taken_over",
    "write_sinks",
]

#: What an alert can be about.
EVENTS = ("stalled", "guard", "straggler", "finished", "stopped", "aborted", "failed", "dead")
#: The events that end a run: one of them per run (key ``r<run>-end``).
END_EVENTS = ("finished", "stopped", "aborted", "failed", "dead")
#: A claim neither sent nor failed this long after it was made may be taken over: its
#: claimant died (or hangs) before it could say. A claimant's own tries take well under
#: this (client/notify.py: a minute at most).
CLAIM_STALE_AFTER = 600.0
#: What a hidden command-line value reads as.
HIDDEN = "<hidden>"
#: At most this many sinks of each kind.
MAX_SINKS = 16
_MAX_URL = 2048
_URL = re.compile(r"\A[A-Za-z][A-Za-z0-9+.-]{0,31}://\S+\Z")
_NOTIFY_OPTIONS = ("--notify", "--notify-cmd")
#: A sinks file is a few lines: more is not one.
_MAX_SINKS_FILE = 64 * 1024
_TAKEN = ".taken-"
#: A claim is a small record: the alert and who took it.
_CLAIM_BYTES = 64 * 1024
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


# -- events --------------------------------------------------------------------------------
def events(
    previous: Status | None,
    current: Status,
    *,
    job_id: str,
    run: int,
    command: str,
    now: float,
    host: str | None = None,
    ends: bool = True,
) -> list[Alert]:
    """The events between two of rank 0's statuses of run ``run`` (``previous`` None: the
    first one read), oldest first: a stall that began (at a step not alerted before), each
    guard firing not in ``previous`` (a ``straggler`` firing is a ``straggler`` event), and,
    with ``ends``, the run's end when ``current`` is the first to record it. A status of
    another run says nothing of this one. ``host``: where the job runs when the status
    does not say."""
    if _run_of(current) != run:
        return []
    if previous is not None and _run_of(previous) != run:
        previous = None
    out: list[Alert] = []
    where = current.host or host
    stall = current.stall
    before = previous.stall if previous is not None else None
    state = JobState.parse(current.state)
    if stall is not None and state is not None and not state.final and (before is None or before.step != stall.step):
        at = stall.step if stall.step is not None else current.step
        waited = f"{stall.for_:.0f}s" if stall.for_ is not None else "longer than its threshold"
        phase = f" in {stall.phase}" if stall.phase else ""
        limit = f" (threshold {stall.after:.0f}s)" if stall.after is not None else ""
        out.append(
            Alert(
                job_id=job_id,
                event="stalled",
                key=f"r{run}-stalled-{at if at is not None else 'x'}",
                run=run,
                command=command,
                at=now,
                state=JobState.STALLED.value,
                host=where,
                step=at,
                reason=f"its step has not moved for {waited}{phase}{limit}",
            )
        )
    seen = {f.id for f in (previous.guard_events or [])} if previous is not None else set()
    for firing in current.guard_events or []:
        if firing.id not in seen:
            out.append(_guard_alert(firing, job_id=job_id, run=run, command=command, now=now, host=where, state=current.state))
    if ends and state is not None and state.final and (previous is None or JobState.parse(previous.state) != state):
        reason = current.error if state == JobState.FAILED else current.stop_reason
        event = state.value if state.value in END_EVENTS else JobState.STOPPED.value  # paused: it stopped (the state says paused)
        out.append(end_alert(event=event, job_id=job_id, run=run, state=state.value, step=current.step, reason=reason, host=where, command=command, now=now))
    return out


def _run_of(status: Status) -> int:
    return status.restarts if status.restarts is not None else 0


def _guard_alert(firing: GuardFiring, *, job_id: str, run: int, command: str, now: float, host: str | None, state: object) -> Alert:
    event = "straggler" if firing.kind == "straggler" else "guard"
    rank = firing.rank
    if event == "straggler" and firing.values and "rank" in firing.values:
        named = firing.values["rank"]
        rank = int(named) if math.isfinite(named) and 0 <= named < (1 << 20) else rank
    return Alert(
        job_id=job_id,
        event=event,
        key=f"r{run}-{event}-{firing.id}",
        run=run,
        command=command,
        at=firing.at if firing.at is not None else now,
        state=str(state) if state is not None else None,
        host=host,
        step=firing.step,
        reason=firing.evidence,
        guard=firing.guard,
        rank=rank,
    )


def end_alert(
    *,
    event: str,
    job_id: str,
    run: int,
    state: str | None,
    step: int | None,
    reason: str | None,
    host: str | None,
    command: str,
    now: float,
) -> Alert:
    """A run's end (``event``: finished, stopped, aborted, failed, or dead when a reader
    judged it so): key ``r<run>-end``, whoever tells it."""
    if event not in END_EVENTS:
        raise ValueError(f"{event!r} is not how a run ends; one of {', '.join(END_EVENTS)}")
    return Alert(
        job_id=job_id,
        event=event,
        key=f"r{run}-end",
        run=run,
        command=command,
        at=now,
        state=state,
        host=host,
        step=step,
        reason=reason[:MAX_TEXT] if reason else None,
    )


def status_command(job_id: str, root: str | os.PathLike[str]) -> str:
    """``forgather control status JOB`` (with ``--jobs-dir`` when the job's is not the
    default): what a person runs to see more."""
    where = "" if os.fspath(root) == os.fspath(default_jobs_dir()) else f" --jobs-dir {shlex.quote(os.fspath(root))}"
    return f"forgather control status {job_id}{where}"


# -- the message ---------------------------------------------------------------------------
def message(alert: Alert) -> tuple[str, str]:
    """The title and the text a person reads (Slack, Discord, a phone): every field
    written ``printable`` (a control character in a guard's evidence or a host name is
    shown, not obeyed, and starts no line of its own)."""
    job = printable(alert.job_id)
    at = f" at step {alert.step}" if alert.step is not None else ""
    if alert.event == "stalled":
        what = f"stalled{at}"
    elif alert.event == "straggler":
        what = f"names a straggler{': rank ' + str(alert.rank) if alert.rank is not None else ''}{at}"
    elif alert.event == "guard":
        what = f"guard {printable(alert.guard or '?')} fired{at}"
    elif alert.event == "dead":
        what = "died without saying how it ended"
    else:
        what = f"{printable(alert.event)}{at}"
    title = f"forgather: job {job} {what}"
    lines = [f"job: {job} (run {alert.run + 1})"]
    if alert.host:
        lines.append(f"host: {printable(alert.host)}")
    lines.append(f"state: {printable(alert.state or alert.event)}")
    if alert.step is not None:
        lines.append(f"step: {alert.step}")
    if alert.guard:
        lines.append(f"guard: {printable(alert.guard)}" + (f" (rank {alert.rank})" if alert.rank is not None else ""))
    if alert.reason:
        lines.append(f"reason: {printable(alert.reason)}")
    lines.append(f"more: {printable(alert.command)}")
    return title, "\n".join(lines)


def alert_json(alert: Alert) -> bytes:
    """The alert as the JSON a ``json://`` sink and a command's stdin get."""
    return json.dumps(encode(alert), sort_keys=True).encode()


# -- sinks ---------------------------------------------------------------------------------
def sinks_from(urls: Iterable[str], cmds: Iterable[Sequence[str]], env: Mapping[str, str]) -> AlertSinks | None:
    """The sinks a launch names: ``urls`` and ``cmds`` (options, or the Python API), then
    ``$FORGATHER_NOTIFY`` (URLs separated by whitespace) and ``$FORGATHER_NOTIFY_CMD`` (one
    command line, split as a shell would, never run by one). None: no sink. ValueError
    saying what is wrong, never the URL (a secret, even a mistyped one)."""
    all_urls = [str(u).strip() for u in urls] + env.get(ENV_NOTIFY, "").split()
    all_cmds = [list(c) for c in cmds]
    raw = env.get(ENV_NOTIFY_CMD, "").strip()
    if raw:
        try:
            all_cmds.append(shlex.split(raw))
        except ValueError as exc:
            raise ValueError(f"{ENV_NOTIFY_CMD} is not a command line ({exc})") from None
    for i, url in enumerate(all_urls, 1):
        if len(url) > _MAX_URL:
            raise ValueError(f"notify URL {i} is longer than {_MAX_URL} characters")
        if not _URL.match(url):
            raise ValueError(f"notify URL {i} is not a notification URL (SCHEME://..., e.g. slack://..., ntfy://topic, json://host:port/path)")
    for i, argv in enumerate(all_cmds, 1):
        if not argv or not argv[0]:
            raise ValueError(f"notify command {i} is an empty command; give a program and its arguments")
        if any(not isinstance(a, str) or len(a) > MAX_TEXT or "\0" in a for a in argv):
            raise ValueError(f"notify command {i} has an argument that is not text of at most {MAX_TEXT} characters")
    if len(all_urls) > MAX_SINKS or len(all_cmds) > MAX_SINKS:
        raise ValueError(f"at most {MAX_SINKS} notify URLs and {MAX_SINKS} notify commands")
    if not all_urls and not all_cmds:
        return None
    return AlertSinks(urls=all_urls, cmds=all_cmds)


def read_sinks_file(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """The URLs and commands of a sinks file (``--notify-file``): one sink a line, a URL
    (``SCHEME://...``) or ``| COMMAND`` (split as a shell would, never run by one); blank
    lines and ``#`` comments skipped. Refused (ValueError saying what to do, never a
    line's text: a secret) unless it is a regular file of this user's that no one else
    may read or write (mode 0600 or 0400), as ssh keeps a key: it holds a webhook's
    password, so another user must not read it, nor change where alerts go."""
    name = os.fspath(path)
    text = read_secret_file(
        name,
        what="notify file",
        max_bytes=_MAX_SINKS_FILE,
        holds="it holds one sink a line",
        secret="its URLs are secrets",
        mine="it says where your job's alerts go",
        then="launch again",
    )
    urls: list[str] = []
    cmds: list[list[str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("|"):
            try:
                argv = shlex.split(line[1:])
            except ValueError as exc:
                raise ValueError(f"the notify file {name}, line {n}: not a command line ({exc})") from None
            if not argv:
                raise ValueError(f"the notify file {name}, line {n}: `|` names no command; give a program and its arguments")
            cmds.append(argv)
        elif _URL.match(line) and len(line) <= _MAX_URL:
            urls.append(line)
        else:
            raise ValueError(
                f"the notify file {name}, line {n}: not a notification URL (SCHEME://..., e.g. slack://..., json://host:port/path, "
                f"at most {_MAX_URL} characters) nor `| COMMAND`"
            )
    if not urls and not cmds:
        raise ValueError(f"the notify file {name} names no sink (one a line: a URL, or `| COMMAND`)")
    return urls, cmds


def sink_name(sink: str | Sequence[str]) -> str:
    """What a log line may say of a sink: a URL's scheme (``json://``), a command's program
    name; never the URL or the arguments."""
    if isinstance(sink, str):
        scheme = sink.split("://", 1)[0].lower()
        return f"{scheme}://" if re.fullmatch(r"[a-z][a-z0-9+.-]{0,31}", scheme) else "a notify URL"
    name = os.path.basename(sink[0]) if sink else ""
    return f"command {printable(name[:64])}" if name else "a notify command"


def describe_sinks(sinks: AlertSinks | None) -> str:
    """``2 sinks (json://, command notify.py)``: for a plan, never the addresses."""
    if sinks is None:
        return "none"
    names = [sink_name(u) for u in sinks.urls] + [sink_name(c) for c in sinks.cmds]
    return f"{len(names)} sink{'s' if len(names) != 1 else ''} ({', '.join(names)}); kept in the job's notify.json (0600), never printed"


def hide_notify(argv: Sequence[str]) -> tuple[str, ...]:
    """``argv`` with every ``--notify``/``--notify-cmd`` value written ``<hidden>``: the
    command line job.json records is read by whoever may read the job's folder."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(HIDDEN)
            hide_next = False
        elif arg in _NOTIFY_OPTIONS:
            out.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{o}=" for o in _NOTIFY_OPTIONS)):
            out.append(f"{arg.split('=', 1)[0]}={HIDDEN}")
        else:
            out.append(arg)
    return tuple(out)


def write_sinks(paths: JobPaths, sinks: AlertSinks | None) -> None:
    """notify.json as this launch names it, 0600 from its first byte; none: removed, so a
    relaunch without sinks is not alerted through an earlier run's."""
    if sinks is None:
        remove_quietly(paths.notify)
        return
    write_json_atomic(paths.notify, encode(sinks), mode=0o600)


def read_sinks(paths: JobPaths) -> AlertSinks | None:
    """notify.json: None when there is none; RecordError when it is a link, not a record, or
    not this user's (the job's owner is the only one who reads it: it is 0600)."""
    return load(paths.notify, AlertSinks, max_bytes=256 * 1024, owner=os.geteuid())


# -- the claim -----------------------------------------------------------------------------
def _alerts_dir(paths: JobPaths, *, create: bool) -> int | None:
    """A descriptor on the job's ``alerts/`` folder (ours, never a link), or None."""
    if create:
        ensure_private_dir(paths.alerts)  # refuses another user's folder; never chmods through a link
    try:
        fd = open_folder(paths.alerts)
    except FileNotFoundError:
        return None
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        return None
    return fd


def _claim_record(alert: Alert, now: float) -> AlertClaim:
    me = process_identity()
    return AlertClaim(
        host=me.host, boot_id=me.boot_id, pid=me.pid, pid_start_time=me.pid_start_time, pid_ns=me.pid_ns, key=alert.key, claimed_at=now, alert=alert
    )


def _create(dir_fd: int, name: str, record: AlertClaim) -> bool:
    """Create ``name`` holding ``record``: True when this call made it (O_EXCL: of any
    number of processes on any hosts sharing the folder, one does); never through a link."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(encode(record), sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def claim(paths: JobPaths, alert: Alert, *, now: float) -> bool:
    """Take on sending ``alert``: True for the one caller that created its claim. False
    when the event is claimed already (by anyone, anywhere: the launcher, a listing, an
    earlier try; or the name is taken by something that is not a claim, a link say)."""
    fd = _alerts_dir(paths, create=True)
    if fd is None:
        return False
    try:
        return _create(fd, alert.key, _claim_record(alert, now))
    finally:
        os.close(fd)


def _read_claim(paths: JobPaths, name: str) -> AlertClaim | None:
    try:
        return load(paths.alerts / name, AlertClaim, max_bytes=_CLAIM_BYTES, owner=os.geteuid())
    except RecordError:
        return None  # a link, another user's, half-written, not a claim: nothing to take over


def _mine(record: AlertClaim) -> bool:
    me = process_identity()
    return record.pid == me.pid and record.host == me.host and record.boot_id == me.boot_id and record.pid_start_time == me.pid_start_time


def release(paths: JobPaths, key: str, *, sent: bool, now: float, why: str | None = None) -> None:
    """Say in this process's claim of ``key`` how it went: ``sent`` (a sink took it), or
    failed (every try of every sink, ``why``). A claim that is no longer this process's
    (taken over meanwhile) is left to its new claimant."""
    record = _read_claim(paths, key)
    if record is None or not _mine(record):
        return
    done = structs.replace(record, sent_at=now if sent else None, failed_at=None if sent else now, failure=None if sent else (why or "")[:MAX_TEXT])
    write_json_atomic(paths.alerts / key, encode(done), mode=0o600)


def _abandoned(record: AlertClaim, now: float) -> bool:
    """Was this claim left unsent by its claimant: it is gone (a process of this host and
    PID namespace that no longer runs), or the claim is older than
    :data:`CLAIM_STALE_AFTER` (or dated ahead of this clock)?"""
    if record.sent_at is not None or record.failed_at is not None:
        return False
    if same_pid_namespace(record) and not pid_alive(record):
        return True
    return not fresh(record.claimed_at, now, CLAIM_STALE_AFTER)


def taken_over(paths: JobPaths, *, now: float) -> list[Alert]:
    """The alerts whose claims were abandoned (:func:`_abandoned`), each now claimed by this
    process, which must send it and :func:`release` it. A takeover renames the old claim
    away (one rename of many succeeds), then claims the key afresh (O_EXCL): two readers
    never both take one claim, and a claimant that said 'sent' meanwhile keeps it."""
    fd = _alerts_dir(paths, create=False)
    if fd is None:
        return []
    out: list[Alert] = []
    try:
        names = sorted(n for n in os.listdir(fd) if not n.startswith((".", TEMP_PREFIX)))
        for name in names:
            try:
                if not stat.S_ISREG(os.lstat(name, dir_fd=fd).st_mode):
                    continue
            except OSError:
                continue
            record = _read_claim(paths, name)
            if record is None or record.key != name or not _abandoned(record, now):
                continue
            alert = _take(fd, name, record, now)
            if alert is not None:
                out.append(alert)
    finally:
        os.close(fd)
    return out


def _take(fd: int, name: str, record: AlertClaim, now: float) -> Alert | None:
    aside = f"{_TAKEN}{name}-{secrets.token_hex(4)}"
    try:
        os.rename(name, aside, src_dir_fd=fd, dst_dir_fd=fd)
    except FileNotFoundError:
        return None  # another reader took it first
    try:
        moved = _load_at(fd, aside)
        if moved is None or moved.sent_at is not None or moved.failed_at is not None or moved.pid != record.pid or moved.claimed_at != record.claimed_at:
            # changed between the look and the rename (its claimant said how it went, or
            # another reader took it over): put it back unless its name is taken again
            try:
                os.link(aside, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass
            return None
        return record.alert if _create(fd, name, _claim_record(record.alert, now)) else None
    finally:
        try:
            os.unlink(aside, dir_fd=fd)
        except OSError:
            pass


def _load_at(fd: int, name: str) -> AlertClaim | None:
    try:
        return load(name, AlertClaim, max_bytes=_CLAIM_BYTES, owner=os.geteuid(), dir_fd=fd)
    except RecordError:
        return None  # a link, another user's, half-written, not a claim
