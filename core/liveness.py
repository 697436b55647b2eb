"""Is a recorded job still running? Judged from evidence, never assumed.

Order of evidence, strongest first:

1. an authenticated HTTP probe that answers for this job id: alive;
2. a SLURM job that ``squeue`` still shows (running, or requeued and pending): alive;
3. same host (hostname *and* boot id match) and same PID namespace: a pid whose start
   time matches is alive, anything else is dead (pids are recycled, and a reboot
   recycles all of them); then a SLURM job that ``squeue`` no longer shows is dead,
   unless a writer whose pid we cannot look up has a fresh heartbeat;
4. another host, or another PID namespace of this one (a container sharing the host's
   name and boot id), no answer: a heartbeat older than ``stale_after`` is stale, a
   newer one unknown. A pid we cannot look up is no evidence: nothing there is ever
   called dead because a local pid check failed, so a fresh heartbeat is never dead.

A heartbeat more than :data:`CLOCK_SKEW` ahead of this host's clock is no evidence
either (its writer's clock is wrong, and "fresh" for ever would keep the job from ever
settling): it is left out, the job judged on the rest, and the evidence says so.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable

from forgather_control.core.host import is_loopback_host, local_host, local_pid_ns, process_start_time
from forgather_control.core.records import Endpoint, Identity, Job, Node, Status
from forgather_control.core.states import is_final

#: Default age after which a heartbeat from another host counts as stale; longer than
#: NFS attribute caching (60 s at most by default) so a live job is not misjudged.
STALE_AFTER = 120.0
#: A heartbeat further in the future than this is clock skew between hosts, not news.
CLOCK_SKEW = 30.0
#: Two start times within this many seconds are the same process (psutil rounds).
_START_TIME_TOLERANCE = 1.0


class Liveness(str, enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    STALE = "stale"
    UNKNOWN = "unknown"
    FINISHED = "finished"

    def __str__(self) -> str:
        return self.value


def process_identity(pid: int | None = None) -> Identity:
    """What a record needs so a later reader can tell this process from a recycled pid
    (every record that names a process is an :class:`~.records.Identity`)."""
    pid = os.getpid() if pid is None else pid
    me = local_host()
    return Identity(host=me.hostname, boot_id=me.boot_id, pid=pid, pid_start_time=process_start_time(pid), pid_ns=local_pid_ns())


def is_loopback_url(url: str) -> bool:
    """True for http://127.x / localhost / [::1] URLs: meaningful only on their own host."""
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)


def same_host(record: Identity) -> bool:
    me = local_host()
    return record.host == me.hostname and record.boot_id == me.boot_id


def fresh(beat: float | None, now: float, stale_after: float = STALE_AFTER) -> bool:
    """A heartbeat younger than ``stale_after`` on this host's clock, and not from the
    future beyond :data:`CLOCK_SKEW` (a writer's clock that runs ahead proves nothing)."""
    return beat is not None and -CLOCK_SKEW <= now - beat < stale_after


def same_pid_namespace(record: Identity) -> bool:
    """Is the pid in ``record`` one this process can look up: same host (name and boot id)
    and same PID namespace? Containers on one host share its name and boot id, not their
    pids. A record without ``pid_ns`` (written before it was recorded) counts as ours."""
    return same_host(record) and (record.pid_ns is None or record.pid_ns == local_pid_ns())


def pid_alive(record: Identity) -> bool:
    """True when the pid in ``record`` runs *and* started when the record says it did."""
    pid, started = record.pid, record.pid_start_time
    if pid is None:
        return False
    actual = process_start_time(pid)
    if actual is None:
        return False
    if started is None:
        # Without a start time we cannot rule out a recycled pid; be conservative and
        # trust only a live pid (a record written by a tool too old to say).
        return True
    return abs(actual - float(started)) <= _START_TIME_TOLERANCE


def squeue_state(slurm_job_id: str, *, timeout: float = 5.0) -> str | None:
    """SLURM's state for one job ("RUNNING", "PENDING", ...), "" when SLURM no longer
    knows it, or None when SLURM cannot be asked (no squeue, or it failed)."""
    return SqueueCache(timeout=timeout)(slurm_job_id)


class SqueueCache:
    """Asks ``squeue`` once, for every job it shows, and answers lookups from that.

    A listing of many SLURM jobs then costs one subprocess, not one per job. Array
    tasks are known both as ``<array>_<task>`` and by their own job id.
    """

    def __init__(self, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._states: dict[str, str] | None = None
        self._failed = False

    def __call__(self, slurm_job_id: str) -> str | None:
        if not slurm_job_id:
            return None
        if self._states is None and not self._failed:
            self._states = self._query()
            self._failed = self._states is None
        if self._states is None:
            return None
        return self._states.get(str(slurm_job_id), "")

    def _query(self) -> dict[str, str] | None:
        exe = shutil.which("squeue")
        if not exe:
            return None
        try:
            proc = subprocess.run(
                [exe, "-h", "-a", "-o", "%i|%A|%T"],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        states: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                states[parts[0]] = parts[2]
                states[parts[1]] = parts[2]
        return states


_SLURM_LIVE = {"RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def judge(
    *,
    endpoint: Endpoint | None,
    status: Status | None,
    job: Job | None = None,
    nodes: list[Node] | None = None,
    probe: Callable[[Endpoint], bool | None] | None = None,
    squeue: Callable[[str], str | None] | None = squeue_state,
    stale_after: float = STALE_AFTER,
    now: float | None = None,
) -> tuple[Liveness, str]:
    """Judge one job from its records. Returns the verdict and the evidence, for humans.

    ``probe(endpoint)`` returns True (the server answered for this job), False (it
    answered but is not this job, or refused us) or None (no answer).
    """
    now = time.time() if now is None else now

    # 1. the authoritative probe
    if endpoint is not None and endpoint.url and probe is not None:
        answer = probe(endpoint)
        if answer:
            return Liveness.ALIVE, "answered an authenticated probe"

    # 2. SLURM owns the allocation: a job it still holds (running, or requeued and
    #    pending) is alive even when no process of it runs on this host right now.
    scheduler = job.scheduler if job is not None else None
    slurm_id = scheduler.slurm_job_id if scheduler is not None and scheduler.type == "slurm" else None
    slurm_state = squeue(str(slurm_id)) if slurm_id and squeue is not None else None
    if slurm_state and slurm_state.upper() in _SLURM_LIVE:
        return Liveness.ALIVE, f"SLURM reports {slurm_state}"

    recorded_state = (status.state if status is not None else None) or (job.state if job is not None else None)
    ended = is_final(recorded_state) and not _launcher_alive(nodes, now=now, stale_after=stale_after)
    if endpoint is None and ended:
        return Liveness.FINISHED, f"ended: {recorded_state}"

    # 3. pids this process can look up: this host, this PID namespace
    records: list[Identity] = [r for r in (endpoint, status, *(nodes or ())) if r is not None]
    # endpoint, status and a node record often name the same process: check each once
    local = list({(r.pid, r.pid_start_time): r for r in records if same_pid_namespace(r) and r.pid}.values())
    if local:
        if any(pid_alive(r) for r in local):
            return Liveness.ALIVE, "process running on this host"
        remote = [r for r in records if not same_pid_namespace(r) and r.host]
        if not remote:
            # the records say how it ended and none of its processes runs: an endpoint left
            # behind (rank 0 killed before it removed it) does not make an ended job dead
            return (Liveness.FINISHED, f"ended: {recorded_state}") if ended else (Liveness.DEAD, "process no longer runs on this host")

    # 4. heartbeats of writers whose pids are not ours to look up
    gone = _slurm_gone(slurm_state)
    if not records:
        return (Liveness.DEAD, gone) if gone is not None else (Liveness.UNKNOWN, "no records")
    unproven = [r for r in records if not (local and same_pid_namespace(r) and r.pid)]  # a pid proven gone above beats no more
    where = "in another PID namespace on this host" if all(same_host(r) for r in unproven) else "on another host"
    beats = [r.heartbeat_at for r in unproven if isinstance(r, (Status, Node)) and r.heartbeat_at is not None]
    # Not "alive for ever": a heartbeat from the future says only that its writer's clock
    # is ahead of ours, so it proves nothing about the job; the rest judges it.
    ahead = max((b - now for b in beats if b - now > CLOCK_SKEW), default=None)
    beats = [b for b in beats if b - now <= CLOCK_SKEW]
    age = max(0.0, now - max(beats)) if beats else None
    if gone is not None:
        if age is None or age > stale_after:
            return Liveness.DEAD, gone
        # SLURM's word against a process that wrote just now: not dead (not yet, or not
        # the cluster this squeue asks); the heartbeat ages into a verdict.
        return Liveness.UNKNOWN, f"{gone}, yet {where} its heartbeat is {age:.0f}s old"
    if age is None:
        if ahead is not None:
            why = f"{where}, its heartbeat is {ahead:.0f}s in the future: its writer's clock is ahead of this host's"
            return Liveness.STALE, f"{why}; cannot tell whether it runs"
        return Liveness.UNKNOWN, f"{where}, no heartbeat recorded"
    skew = f"; a heartbeat {ahead:.0f}s in the future was not counted (its writer's clock is ahead of this host's)" if ahead is not None else ""
    if age > stale_after:
        return Liveness.STALE, f"{where}, last heartbeat {age:.0f}s ago{skew}"
    return Liveness.UNKNOWN, f"{where}, heartbeat {age:.0f}s ago{skew}"


def _slurm_gone(slurm_state: str | None) -> str | None:
    """What SLURM says when it says the job is over ("" : it no longer knows it), else None."""
    if slurm_state is None:
        return None
    return f"SLURM reports {slurm_state}" if slurm_state else "SLURM no longer knows the job"


def _launcher_alive(nodes: list[Node] | None, *, now: float, stale_after: float) -> bool:
    """Does a launcher of the job still run (a relaunch starting up beside the previous
    run's final records)? In this PID namespace: its pid. Elsewhere (another host or
    namespace, whose pids are not ours to check): a heartbeat fresher than
    ``stale_after`` and not from the future (a clock ahead proves nothing)."""
    for n in nodes or ():
        if n.ended_at:
            continue
        if same_pid_namespace(n):
            if pid_alive(n):
                return True
            continue
        if fresh(n.heartbeat_at, now, stale_after):
            return True
    return False
