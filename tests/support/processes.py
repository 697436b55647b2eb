"""Real processes for one test: started in their own session, and none outlives it.

A ``Proc`` remembers its process tree (``forgather_control.launcher.proctree``, the
launcher's own killer), so the test's teardown kills the root and every descendant it
had, including ones that left its process group.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from forgather_control.launcher.proctree import ProcessTree, is_alive

from .paths import REPO
from .waiting import wait_for


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path
    tree: ProcessTree

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process {self.pid} did not exit within {timeout}s; output:\n{self.output()[-4000:]}") from None


class Procs:
    """Process owner for one test: start, and guarantee that nothing outlives it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Proc] = []

    def start(
        self, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, name: str | None = None, pass_fds: tuple[int, ...] = ()
    ) -> Proc:
        """Start ``argv`` in a session of its own, output (both streams) to a log file;
        ``pass_fds``: descriptors it inherits."""
        log = self.tmp_path / f"{name or Path(argv[1] if len(argv) > 1 else argv[0]).stem}-{len(self.started)}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(
                argv, env=env, cwd=cwd or REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=pass_fds
            )
        p = Proc(popen, log, ProcessTree(popen.pid, session=popen.pid))
        self.started.append(p)
        return p

    def cleanup(self) -> list[str]:
        """Kill every started process's tree; returns what survived (nothing, normally)."""
        leftovers: list[str] = []
        for p in self.started:
            leftovers += [describe(q) for q in p.tree.kill(timeout=10)]
            try:
                p.popen.wait(5)
            except subprocess.TimeoutExpired:
                leftovers.append(f"pid {p.pid} did not die")
        return leftovers


def describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return str(p.pid)


def assert_all_gone(procs: list[psutil.Process], timeout: float = 15.0) -> None:
    """Every one of ``procs`` ends within ``timeout`` (a recycled pid does not count)."""
    try:
        wait_for(lambda: not any(is_alive(p) for p in procs), timeout=timeout, interval=0.2, what="processes to end")
    except AssertionError:
        raise AssertionError(f"processes left behind: {[describe(p) for p in procs if is_alive(p)]}") from None


def gone(pid: int) -> bool:
    """No process has ``pid`` now, or only a zombie."""
    try:
        return not is_alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def dead_pid() -> int:
    """The pid of a real process that has exited and been reaped (a record naming it is dead)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
