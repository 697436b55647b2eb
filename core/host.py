"""This host and this process as /proc tells them: host name, boot id, PID namespace and
a process's start time; and what address means this machine.

No typed record here: a training rank other than 0 names itself with these (its stacks
registration) without loading msgspec (issue 24); :func:`.liveness.process_identity`
makes them the :class:`~.records.Identity` every other record carries.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["HostIdentity", "is_loopback_host", "local_host", "local_pid_ns", "process_start_time"]


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
        except Exception:  # noqa: BLE001 - no procfs and no psutil: say so, do not fail
            return "unknown"


def process_start_time(pid: int) -> float | None:
    """Start time of ``pid`` in seconds since the epoch, or None if no process runs with
    it (none at all, or a zombie: it has died and only waits for its parent to notice).
    Read from /proc where there is one, as psutil computes it (the same float: clock ticks
    since boot over ticks a second, plus the boot time), so a training rank never loads
    psutil (0.8 MiB) to name itself or look at its launcher; psutil elsewhere."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    if _PROC_STAT:
        return _proc_start_time(pid)
    import psutil  # here: a listing of jobs from other hosts never needs it

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.Error, OSError, ValueError):
        return None


#: Linux's /proc: a process's start in its stat file, the boot time in /proc/stat.
_PROC_STAT = os.path.exists("/proc/self/stat") and os.path.exists("/proc/stat")


def _boot_time() -> float | None:
    """The boot time, seconds since the epoch (``btime`` of /proc/stat, read each time as
    psutil does: the kernel moves it with the wall clock)."""
    try:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"btime"):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _proc_start_time(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        boot = _boot_time()
        if fields[0] == b"Z" or boot is None:  # a zombie has died
            return None
        return float(int(fields[19])) / os.sysconf("SC_CLK_TCK") + boot
    except (OSError, ValueError, IndexError):
        return None


_PID_NS: tuple[int, int | None] | None = None


def local_pid_ns() -> int | None:
    """The inode of this process's PID namespace (/proc/self/ns/pid), or None where there
    is none to read (no procfs: no PID namespaces either). Asked once per process."""
    global _PID_NS
    if _PID_NS is None or _PID_NS[0] != os.getpid():
        try:
            ino: int | None = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            ino = None
        _PID_NS = (os.getpid(), ino)
    return _PID_NS[1]


def is_loopback_host(host: str) -> bool:
    """An address that means "this machine" wherever it is read: an IP literal in
    127.0.0.0/8 or ::1 (bare or bracketed), or exactly ``localhost``. Anything that only
    starts like one (``127.0.0.1.evil.example``) is a name someone else resolves."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
