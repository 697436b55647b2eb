"""forgather_control.launcher.proctree on real processes: a root and every descendant it
had die, also those that left its process group or session and those whose parent died
first; a child born while the tree is being killed dies too; a recycled pid (and the
session id that came with it) is never signalled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from support.processes import Proc, Procs
from support.waiting import wait_for

from forgather_control.launcher.proctree import ProcessTree, is_alive

#: Builds a tree with every kind of escape. Each process prints "ROLE PID PPID SID".
TREE = r"""
import os, subprocess, sys, time
from pathlib import Path

role, go = sys.argv[1], Path(sys.argv[2])
os.write(1, f"{role} {os.getpid()} {os.getppid()} {os.getsid(0)}\n".encode())  # one write: lines never mix
def spawn(role, **kw):
    subprocess.Popen([sys.executable, __file__, role, str(go)], **kw)

if role == "root":
    spawn("in-group")
    spawn("escaper", start_new_session=True)   # leaves the group and the session
    spawn("orphaner")
    spawn("quitter")
elif role == "escaper":
    spawn("escapers-child")
elif role == "orphaner":
    spawn("orphan", start_new_session=True)    # its own session, and soon no parent
    while not go.exists():
        time.sleep(0.02)
    sys.exit()
elif role == "quitter":
    spawn("quitters-child")                    # in the root's session, parent gone at once
    sys.exit()
time.sleep(600)
"""

#: Forks a child (each in a session of its own) every few milliseconds, COUNT times or
#: forever; the children carry MARKER on their command line.
FORKER = r"""
import itertools, subprocess, sys, time
marker, count = sys.argv[1], int(sys.argv[2])
for _ in (itertools.count() if count < 0 else range(count)):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker], start_new_session=True)
    time.sleep(0.005)
time.sleep(600)
"""


def start_forker(procs: Procs, tmp_path: Path, count: int) -> tuple[Proc, str]:
    """The forker (``count`` children, or forever when negative) and its children's marker."""
    script, marker = tmp_path / "forker.py", f"forker-{tmp_path.name}"
    script.write_text(FORKER)
    return procs.start([sys.executable, str(script), marker, str(count)], name="forker"), marker


def roles(proc) -> dict[str, tuple[int, int, int]]:
    """role -> (pid, ppid at its start, sid), from the tree script's output."""
    rows = [line.split() for line in proc.output().splitlines()]
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows if len(r) == 4}


def marked(marker: str) -> list[psutil.Process]:
    """Live processes with ``marker`` on their command line."""
    found = []
    for p in psutil.process_iter():
        try:
            if marker in p.cmdline() and is_alive(p):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_kills_every_descendant_also_those_that_left_its_group_or_lost_their_parent(procs: Procs, tmp_path: Path) -> None:
    script, go = tmp_path / "tree.py", tmp_path / "go"
    script.write_text(TREE)
    root = procs.start([sys.executable, str(script), "root", str(go)], name="tree")
    seen = wait_for(lambda: len(roles(root)) == 8 and roles(root), timeout=60, what="the whole tree")
    everyone = {role: psutil.Process(pid) for role, (pid, _, _) in seen.items()}
    wait_for(lambda: not is_alive(everyone["quitter"]), timeout=60, what="the quitter to exit")
    # never seen by the tree: its parent is gone; only its session ties it to the root
    assert everyone["quitters-child"].ppid() != seen["quitter"][0] and seen["quitters-child"][2] == root.pid
    assert seen["escapers-child"][2] == seen["escaper"][0] != root.pid  # another session

    tree = ProcessTree(root.pid, session=root.pid)
    tree.track()  # sees the orphan while its parent still lives
    go.write_text("go")
    wait_for(lambda: not is_alive(everyone["orphaner"]), timeout=60, what="the orphaner to exit")
    assert everyone["orphan"].ppid() != seen["orphaner"][0] and seen["orphan"][2] == seen["orphan"][0]

    assert tree.kill(timeout=10) == []
    assert [role for role, p in everyone.items() if is_alive(p)] == []
    assert root.popen.poll() is not None  # the root too, reaped


def test_a_child_born_during_the_kill_dies_too(procs: Procs, tmp_path: Path) -> None:
    root, marker = start_forker(procs, tmp_path, -1)
    tree = ProcessTree(root.pid)
    wait_for(lambda: len(tree.track()) > 5, timeout=60, what="the forker's first children")
    assert tree.kill(timeout=10) == []
    assert len(tree.known) >= 6 and not any(is_alive(p) for p in tree.known)
    assert marked(marker) == []  # nothing it started is left, seen before the kill or not


def test_without_the_root_kills_its_descendants_only(procs: Procs, tmp_path: Path) -> None:
    root, marker = start_forker(procs, tmp_path, 3)
    tree = ProcessTree(root.pid, include_root=False)
    children = wait_for(lambda: len(tree.track()) == 3 and tree.alive(), timeout=60, what="three children")
    assert tree.kill(timeout=10) == []
    assert not any(is_alive(p) for p in children) and [p.pid for p in marked(marker)] == [root.pid]  # the root carries the marker too
    assert root.popen.poll() is None and is_alive(psutil.Process(root.pid))  # the root lives on


def test_a_recycled_pid_is_never_signalled(procs: Procs) -> None:
    """A process the tree saw ends; a stranger gets its pid, and so its session id: kill()
    leaves it alone."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("choosing the next pid needs CAP_SYS_ADMIN (/proc/sys/kernel/ns_last_pid)")
    for _ in range(20):  # another process may take the pid first: try again
        code = "import time; print('up', flush=True); time.sleep(600)"
        first = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
        tree = ProcessTree(first.pid, session=first.pid)
        tree.track()
        # once it runs Python, its start time (kept in clock ticks) differs from the stranger's
        assert first.stdout is not None and first.stdout.readline() == b"up\n"
        first.kill()
        first.communicate()
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(first.pid - 1))
        stranger = procs.start([sys.executable, "-c", "import time; time.sleep(600)"], name="stranger")  # a session of its own
        if stranger.pid == first.pid:
            break
    else:
        pytest.skip("another process took the pid every time (a busy machine)")
    assert os.getsid(stranger.pid) == tree.session
    assert tree.kill(timeout=2) == []
    assert stranger.popen.poll() is None and is_alive(psutil.Process(stranger.pid))
