"""Stacks: a record under ``stacks/`` is not proof. ``stacks`` signals only a process
proven to be a rank of that job (it holds the job's dump file open, runs as the job
folder's owner, and is no namespace's PID 1); decoys that catch the signal and say so
must never see it, and a real rank still answers."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from support.env import base_env
from support.processes import Proc, Procs
from support.records import identity
from support.services import require_service
from support.waiting import wait_for

from forgather_control.core import JobPaths
from forgather_control.core import stacks as st
from forgather_control.core.files import write_json_atomic

#: Another user's uid: nobody.
NOBODY = 65534
#: The decoys' interpreter (any; the system's, which every uid may run).
DECOY_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

#: A rank of job ``argv[2]`` in jobs dir ``argv[1]``: registers its stacks, then waits.
RANK = """
import sys, time
from pathlib import Path
from forgather_control.core.jobs import JobPaths
from forgather_control.core.dumper import register

register(JobPaths(Path(sys.argv[1]), sys.argv[2]), 0)
def a_real_rank():
    print("ready", flush=True)
    time.sleep(3600)
a_real_rank()
"""

#: Catches the stack signal and says so on stdout (its log); holds open whatever
#: descriptor it inherited; says its pid as its namespace sees it.
DECOY = """
import os, signal, sys, time
signal.signal(signal.SIGRTMIN + 5, lambda signum, frame: print("signalled", flush=True))
print(f"ready {os.getpid()}", flush=True)
while True:
    time.sleep(3600)
"""


def _decoy_pid(p: Proc) -> int:
    """The pid, in this namespace, of the decoy interpreter in ``p``'s process tree."""

    def find() -> int | None:
        todo = [p.pid]
        while todo:
            pid = todo.pop()
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [DECOY_PYTHON.encode(), b"-c"]:
                    return pid
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                continue
        return None

    return wait_for(find, timeout=30, what="the decoy's process")


def _plant(paths: JobPaths, rank: int, pid: int, dump: str) -> None:
    """Another writer's record naming ``pid`` as rank ``rank`` (its identity checks out)."""
    write_json_atomic(paths.dir / "stacks" / f"rank-{rank}.json", {**identity(pid), "rank": rank, "run": 0, "dump": dump})


def test_stacks_never_signals_a_decoy_and_still_reaches_the_real_rank(procs: Procs, tmp_path: Path) -> None:
    require_service("root", os.geteuid() == 0, "decoys of another uid and in another PID namespace take root")
    require_service("unshare", shutil.which("unshare") is not None and shutil.which("setpriv") is not None, "util-linux's unshare and setpriv")
    paths = JobPaths(tmp_path / "jobs", "victim")
    rank = procs.start([sys.executable, "-c", RANK, str(paths.root), "victim"], env=base_env(), name="rank")
    wait_for(lambda: "ready" in rank.output() or rank.popen.poll() is not None, timeout=60, what="the rank to register")
    assert rank.popen.poll() is None, rank.output()
    dump_name = f"rank-0-{rank.pid}.txt"
    dump_file = paths.dir / "stacks" / dump_name
    decoy = [DECOY_PYTHON, "-c", DECOY]

    # 1. a process of the job's own user that is no rank of the job (holds no dump file)
    stranger = procs.start(decoy, env=base_env(), name="stranger")
    fd = os.open(dump_file, os.O_RDONLY)
    try:
        # 2. another uid, holding the job's dump file open (handed over, as a leak would)
        nobody = procs.start(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *decoy], env=base_env(), pass_fds=(fd,), name="nobody")
        # 3. PID 1 of its own PID namespace (a container's init), the job's user, the dump file held open
        pid1 = procs.start(["unshare", "--pid", "--fork", "--mount-proc", *decoy], env=base_env(), pass_fds=(fd,), name="pid1")
    finally:
        os.close(fd)
    for p in (stranger, nobody, pid1):
        wait_for(lambda p=p: "ready" in p.output() or p.popen.poll() is not None, timeout=60, what="a decoy to catch the signal")
        assert p.popen.poll() is None, p.output()
    assert "ready 1\n" in pid1.output()  # PID 1 where it lives
    decoys = [_decoy_pid(p) for p in (stranger, nobody, pid1)]
    for n, pid in enumerate(decoys, start=1):
        assert st.catches(pid, st.STACK_SIGNAL)
        _plant(paths, n, pid, dump_name)

    assert [w.rank for w in st.local_workers(paths)] == [0]
    # dump() asks again, whoever built the list
    found = st.dump([*st.local_workers(paths), *(st.Worker(n, "h", pid, dump_file, None) for n, pid in enumerate(decoys, start=1))])
    assert [(s.rank, s.error) for s in found][1:] == [
        (1, "not signalled: not a rank of this job (it does not hold the job's dump file open)"),
        (2, f"not signalled: not a rank of this job (it runs as uid {NOBODY}, the job folder's owner is uid {os.getuid()})"),
        (3, "not signalled: not a rank of this job (it is PID 1 of its namespace)"),
    ]
    assert found[0].error is None and [f.func for f in found[0].main.frames][-1] == "a_real_rank"
    assert [p.output().count("signalled") for p in (stranger, nobody, pid1)] == [0, 0, 0]
    assert all(p.popen.poll() is None for p in (stranger, nobody, pid1, rank))


def test_pid_1_is_never_signalled(tmp_path: Path) -> None:
    dump = tmp_path / "jobs" / "victim" / "stacks" / "rank-0-1.txt"
    dump.parent.mkdir(parents=True)
    dump.touch()
    assert st.not_a_rank(1, dump) == "it is PID 1"


def test_a_frames_line_is_read_only_from_a_python_file_the_ranks_user_may_read_and_only_one_bounded_line(tmp_path: Path) -> None:
    """A frame names any path (the rank's dump says what it likes): its line is read from
    a regular ``.py`` file only (a FIFO is not waited on, a device not read, even through
    a link), one the rank's user may read (as another user, root, only one that user owns
    or anyone may read, never root's private file), one line, cut short, from the first
    few MiB of the file."""
    me, other = os.geteuid(), NOBODY if os.geteuid() != NOBODY else NOBODY - 1
    code = tmp_path / "train.py"
    code.write_text("import time\n\ttime.sleep(1)  \n" + "x = '" + "y" * 5000 + "'\n")
    ctime = code.stat().st_ctime
    assert st.source_line(str(code), 2, uid=me) == ("time.sleep(1)", ctime)
    assert st.source_line(str(code), 3, uid=me) == ("x = '" + "y" * (st.MAX_SOURCE - 5), ctime)
    assert st.source_line(str(code), 4, uid=me) == (None, ctime)  # past its end: the file is there, the line is not

    secret = tmp_path / "secret.py"
    secret.write_text("TOKEN = 'hunter2'\n")
    secret.chmod(0o600)
    assert st.source_line(str(secret), 1, uid=me) == ("TOKEN = 'hunter2'", secret.stat().st_ctime)  # the rank's own
    assert st.source_line(str(secret), 1, uid=other) is None  # read for another user's rank: not theirs to read
    secret.chmod(0o644)
    assert st.source_line(str(secret), 1, uid=other) == ("TOKEN = 'hunter2'", secret.stat().st_ctime)  # anyone may

    os.mkfifo(tmp_path / "fifo.py")
    (tmp_path / "zero.py").symlink_to("/dev/zero")
    (tmp_path / "notes.txt").write_text("TOKEN = 'hunter2'\n")
    assert st.source_line(str(tmp_path / "fifo.py"), 1, uid=me) is None  # returns at once: no writer waited for
    assert st.source_line(str(tmp_path / "zero.py"), 1, uid=me) is None
    assert st.source_line(str(tmp_path / "notes.txt"), 1, uid=me) is None
    assert st.source_line(str(tmp_path / "gone.py"), 1, uid=me) is None

    big = tmp_path / "generated.py"
    big.write_bytes(b"#" * (8 << 20) + b"\nlate = 1\n")  # line 2 starts past what is read
    assert st.source_line(str(big), 2, uid=me) == (None, big.stat().st_ctime)
