"""Is a recorded job still running? Judged from evidence, never assumed.

Order of evidence, strongest first (design.md section 3):

1. an authenticated HTTP probe that answers for this job id: alive;
2. same host (hostname *and* boot id match): a pid whose start time matches is alive,
   anything else is dead (pids are recycled, and a reboot recycles all of them);
3. a SLURM job: ``squeue`` answers for it;
4. another host, no answer: a heartbeat older than ``stale_after`` is stale, a newer one
   unknown. Nothing on another host is ever called dead because a local pid check failed.
"""

from __future__ import annotations

import enum
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

#: Default age after which a heartbeat from another host counts as stale; longer than
#: NFS attribute caching (60 s at most by default) so a live job is not misjudged.
STALE_AFTER = 120.0
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


@dataclass(frozen=True)
class HostIdentity:
    hostname: str
    boot_id: str


@lru_cache(maxsize=1)
def local_host() -> HostIdentity:
    return HostIdentity(socket.gethostname(), _boot_id())


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        # No procfs (macOS): fall back to the boot time, which also changes on reboot.
        try:
            import psutil

            return f"boot-{int(psutil.boot_time())}"
        except Exception:
            return "unknown"


def process_start_time(pid: int) -> float | None:
    """Start time of ``pid`` in seconds since the epoch, or None if there is no such process."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def process_identity(pid: int | None = None) -> dict[str, object]:
    """What a record needs so a later reader can tell this process from a recycled pid."""
    pid = os.getpid() if pid is None else pid
    me = local_host()
    return {
        "host": me.hostname,
        "boot_id": me.boot_id,
        "pid": pid,
        "pid_start_time": process_start_time(pid),
    }


def same_host(record: dict) -> bool:
    me = local_host()
    return record.get("host") == me.hostname and record.get("boot_id") == me.boot_id


def pid_alive(record: dict) -> bool:
    """True when the pid in ``record`` runs *and* started when the record says it did."""
    pid = record.get("pid")
    started = record.get("pid_start_time")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    actual = process_start_time(pid)
    if actual is None:
        return False
    if not isinstance(started, (int, float)):
        # Without a start time we cannot rule out a recycled pid; be conservative and
        # trust only a live pid (a record written by a tool too old to say).
        return True
    return abs(actual - float(started)) <= _START_TIME_TOLERANCE


def squeue_state(slurm_job_id: str, *, timeout: float = 5.0) -> str | None:
    """SLURM's state for a job ("RUNNING", "PENDING", ...), "" when SLURM no longer knows
    it, or None when SLURM cannot be asked (no squeue, or it failed)."""
    exe = shutil.which("squeue")
    if not exe or not slurm_job_id:
        return None
    try:
        proc = subprocess.run(
            [exe, "-h", "-j", str(slurm_job_id), "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        # "Invalid job id specified" means SLURM forgot the job: it is gone.
        if "Invalid job id" in proc.stderr:
            return ""
        return None
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""


_SLURM_LIVE = {"RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def judge(
    *,
    endpoint: dict | None,
    status: dict | None,
    job: dict | None = None,
    nodes: list[dict] | None = None,
    probe: Callable[[dict], bool | None] | None = None,
    squeue: Callable[[str], str | None] | None = squeue_state,
    stale_after: float = STALE_AFTER,
    now: float | None = None,
) -> tuple[Liveness, str]:
    """Judge one job from its records. Returns the verdict and the evidence, for humans.

    ``probe(endpoint)`` returns True (the server answered for this job), False (it
    answered but is not this job, or refused us) or None (no answer).
    """
    now = time.time() if now is None else now
    status = status or {}
    job = job or {}
    final_states = {"finished", "stopped", "aborted", "failed"}

    if endpoint is None:
        recorded_state = status.get("state") or job.get("state")
        if recorded_state in final_states and not _launcher_alive(nodes):
            return Liveness.FINISHED, f"ended: {recorded_state}"

    # 1. the authoritative probe
    if endpoint is not None and endpoint.get("url") and probe is not None:
        answer = probe(endpoint)
        if answer:
            return Liveness.ALIVE, "answered an authenticated probe"

    # 2. pids on this host
    records = [r for r in (endpoint, status, *(nodes or ())) if r]
    local = [r for r in records if same_host(r) and r.get("pid")]
    if local:
        if any(pid_alive(r) for r in local):
            return Liveness.ALIVE, "process running on this host"
        remote = [r for r in records if not same_host(r) and r.get("host")]
        if not remote:
            return Liveness.DEAD, "process no longer runs on this host"

    # 3. SLURM
    scheduler = job.get("scheduler") if isinstance(job.get("scheduler"), dict) else {}
    slurm_id = scheduler.get("slurm_job_id") if scheduler.get("type") == "slurm" else None
    if slurm_id and squeue is not None:
        state = squeue(str(slurm_id))
        if state:
            if state.upper() in _SLURM_LIVE:
                return Liveness.ALIVE, f"SLURM reports {state}"
            return Liveness.DEAD, f"SLURM reports {state}"
        if state == "":
            return Liveness.DEAD, "SLURM no longer knows the job"

    # 4. heartbeats from another host
    beats = [r.get("heartbeat_at") for r in records if isinstance(r.get("heartbeat_at"), (int, float))]
    if not records:
        return Liveness.UNKNOWN, "no records"
    if not beats:
        return Liveness.UNKNOWN, "on another host, no heartbeat recorded"
    age = now - max(beats)
    if age > stale_after:
        return Liveness.STALE, f"on another host, last heartbeat {age:.0f}s ago"
    return Liveness.UNKNOWN, f"on another host, heartbeat {age:.0f}s ago"


def _launcher_alive(nodes: list[dict] | None) -> bool:
    return any(same_host(n) and pid_alive(n) for n in (nodes or ()))
