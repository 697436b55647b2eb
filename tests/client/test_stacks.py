"""Every rank's stacks, dumped by the ranks themselves (their control thread, asked through a
FIFO; faulthandler on a reserved signal when that thread cannot get the GIL): real
processes stuck in Python and in a C call holding the GIL, asked again and again while
another thread runs, grouping, the safety rule (never signal a process that does not
catch the signal), the folder protocol with
hostile answers, the forced abort's judge, and a job started without the launcher
through the CLI. Real torchrun and launchers: test_hang.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.env import base_env
from support.processes import Proc, Procs, gone
from support.records import identity, typed
from support.waiting import wait_for

from forgather_control.cli.stacks_cmd import CHANGED, describe
from forgather_control.client.stackreport import StacksReport, collect
from forgather_control.core import JobPaths
from forgather_control.core import stacks as st
from forgather_control.core.commands import State
from forgather_control.core.files import write_json_atomic
from forgather_control.core.records import CommandFile, CommandResult, Status
from forgather_control.core.states import JobState
from forgather_control.launcher.duties import APPLIED_GRACES, AbortWatch

WORKER = """
import ctypes, os, sys, threading, time
from pathlib import Path
from forgather_control.core.jobs import JobPaths
from forgather_control.core.dumper import register

jobs, job, rank, how = sys.argv[1:5]
register(JobPaths(Path(jobs), job), int(rank))
lock = threading.Lock()
lock.acquire()

def waits_for_the_lock():
    lock.acquire()

threading.Thread(target=waits_for_the_lock, daemon=True).start()

def stuck_in_python():
    print("ready", flush=True)
    time.sleep(3600)

def stuck_in_c():
    print("ready", flush=True)
    ctypes.PyDLL(None).sleep(3600)  # holds the GIL: no Python code of this process runs

def in_c_without_the_gil():  # as in a collective that hangs: the GIL let go, no Python run
    r, w = os.pipe()
    print("ready", flush=True)
    ctypes.CDLL(None).read(r, ctypes.create_string_buffer(1), 1)  # restarted after a handled signal

{"python": stuck_in_python, "c": stuck_in_c, "nogil": in_c_without_the_gil}[how]()
"""

CONTROLLED = """
import sys, time
from forgather_control.callback import Controller

def waiting_for_data():
    print("ready", flush=True)
    time.sleep(3600)

with Controller(job_id=sys.argv[1], signals=()) as ctl:
    ctl.step(1)
    waiting_for_data()
"""


def start(procs: Procs, tmp_path: Path, source: str, *args: str) -> Proc:
    script = tmp_path / {WORKER: "worker.py", CONTROLLED: "controlled.py"}.get(source, "other.py")  # every rank runs the same file
    script.write_text(textwrap.dedent(source))
    p = procs.start([sys.executable, str(script), *args], env=base_env(tmp_path / "jobs"))
    wait_for(lambda: "ready" in p.output() or p.popen.poll() is not None, timeout=60, what="the process to get stuck")
    assert p.popen.poll() is None, p.output()
    return p


def main_frames(s: st.RankStacks) -> list[str]:
    assert s.error is None, s.error
    return [f.func for f in s.main.frames]


def test_a_rank_stuck_in_python_shows_every_thread(procs: Procs, tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j")
    p = start(procs, tmp_path, WORKER, str(paths.root), "j", "3", "python")
    workers = st.local_workers(paths)
    assert [(w.rank, w.pid) for w in workers] == [(3, p.pid)]
    [got] = st.dump(workers)
    assert got.rank == 3 and got.pid == p.pid
    assert main_frames(got)[-2:] == ["<module>", "stuck_in_python"]  # innermost last
    others = [t for t in got.threads if not t.main]
    assert [t.frames[-1].func for t in others] == ["waits_for_the_lock"]
    assert p.popen.poll() is None  # asking does not hurt it
    [again] = st.dump(workers)  # and it answers again: each dump read from where the last ended
    assert main_frames(again) == main_frames(got)


def test_a_request_goes_only_into_the_ranks_own_fifo(procs: Procs, tmp_path: Path) -> None:
    """The FIFO swapped for a link to another FIFO (someone else's reader): nothing is
    written through the link; the rank is asked by signal instead and still answers."""
    paths = JobPaths(tmp_path / "jobs", "j")
    p = start(procs, tmp_path, WORKER, str(paths.root), "j", "0", "python")
    [w] = st.local_workers(paths)
    assert w.requests is not None and w.requests.name == f"rank-0-{p.pid}.fifo"
    elsewhere = tmp_path / "elsewhere.fifo"
    os.mkfifo(elsewhere)
    reader = os.open(elsewhere, os.O_RDONLY | os.O_NONBLOCK)
    try:
        w.requests.unlink()
        w.requests.symlink_to(elsewhere)
        [got] = st.dump([w])
        assert main_frames(got)[-1] == "stuck_in_python"
        assert os.read(reader, 64) == b""  # nothing came through the link
    finally:
        os.close(reader)


def test_a_rank_other_than_0_listens_without_a_thread_and_answers_from_its_main_thread(procs: Procs, tmp_path: Path) -> None:
    """Issue 24: a rank other than 0 adds one thread, the check's; its FIFO raises a
    signal its main thread answers, the handler's own frames left out of the answer."""
    paths = JobPaths(tmp_path / "jobs", "j")
    p = start(procs, tmp_path, WORKER, str(paths.root), "j", "1", "python")
    [w] = st.local_workers(paths)
    assert w.requests is not None and w.dump_thread is None
    assert len(list(Path(f"/proc/{p.pid}/task").iterdir())) == 2  # its main thread and the one it started
    for _ in range(3):
        [got] = st.dump([w])
        assert main_frames(got)[-2:] == ["<module>", "stuck_in_python"]
        assert all(f.func != st.ANSWER_FRAME for t in got.threads for f in t.frames)
    assert p.popen.poll() is None


def test_a_rank_other_than_0_in_c_without_the_gil_answers_by_the_stack_signal(procs: Procs, tmp_path: Path) -> None:
    """Its main thread is in C, as in a collective that hangs, so no handler of Python
    runs: after GIL_WAIT the C-level handler answers, and the rank goes on waiting."""
    paths = JobPaths(tmp_path / "jobs", "j")
    p = start(procs, tmp_path, WORKER, str(paths.root), "j", "2", "nogil")
    [got] = st.dump(st.local_workers(paths))
    assert main_frames(got)[-1] == "in_c_without_the_gil"
    [again] = st.dump(st.local_workers(paths))  # the request left in its FIFO does not confuse the next
    assert main_frames(again)[-1] == "in_c_without_the_gil"
    assert p.popen.poll() is None


def test_a_rank_holding_the_gil_in_c_still_answers(procs: Procs, tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j")
    start(procs, tmp_path, WORKER, str(paths.root), "j", "0", "c")
    [got] = st.dump(st.local_workers(paths))
    assert main_frames(got)[-1] == "stuck_in_c"


BUSY = """
import sys, threading, time
from pathlib import Path
from forgather_control.core.files import write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.dumper import register

jobs, job, rank = sys.argv[1:4]
register(JobPaths(Path(jobs), job), int(rank))

def writes_its_records():  # as a rank's control thread does: Python, I/O, the GIL let go and taken again
    while True:
        write_json_atomic(Path(jobs) / job / "busy.json", {"at": time.time()})

threading.Thread(target=writes_its_records, daemon=True).start()

def waiting_for_data():
    print("ready", flush=True)
    time.sleep(3600)

waiting_for_data()
"""


@pytest.mark.parametrize("rank", [0, 1], ids=["rank 0, its control thread listens", "rank 1, its main thread listens"])
def test_asking_a_rank_for_its_stacks_again_and_again_never_crashes_it(procs: Procs, tmp_path: Path, rank: int) -> None:
    """A C-level handler that walks every thread's frames while another thread runs
    Python crashed the rank (SIGSEGV) about once in 30 dumps: `stacks` killed the
    training it looked at. A rank whose other thread runs Python and I/O without pause
    is asked 40 times: it lives, and every answer has its main thread where it is."""
    paths = JobPaths(tmp_path / "jobs", "j")
    p = start(procs, tmp_path, BUSY, str(paths.root), "j", str(rank))
    workers = st.local_workers(paths)
    for i in range(40):
        [got] = st.dump(workers)
        assert p.popen.poll() is None, f"the rank died on dump {i}: {p.popen.returncode}"
        assert main_frames(got)[-1] == "waiting_for_data", (i, got)
        [other] = [t for t in got.threads if not t.main]  # the one thread the script started, and no other
        assert "writes_its_records" in [f.func for f in other.frames], (i, other)


SLOW_WRITER = """
import faulthandler, os, signal, sys, threading, time
from pathlib import Path
from forgather_control.core.jobs import JobPaths
from forgather_control.core.dumper import STACK_SIGNAL, register

jobs, job = sys.argv[1:3]
dump = register(JobPaths(Path(jobs), job), 0)
os.unlink(dump.with_suffix(".fifo"))  # no dump thread to ask: asked by the signal, as a stuck GIL makes it
faulthandler.unregister(STACK_SIGNAL)
main = threading.main_thread().ident

def writes_like_a_descheduled_faulthandler(signum, frame):
    # faulthandler's order (the main thread last), with the writer held up between two
    # threads for longer than a reader's quiet period, as on a loaded machine
    with open(dump, "a") as fh:
        fh.write('Thread 0x00007f0000000001 (most recent call first):\\n'
                 '  File "/usr/lib/python3/asyncio/tasks.py", line 1 in current_task\\n'
                 '  File "/usr/lib/python3/threading.py", line 2 in _bootstrap\\n\\n')
        fh.flush()
        time.sleep(1.0)
        fh.write('Current thread 0x%016x (most recent call first):\\n  File "w.py", line 3 in slow_writer\\n' % main)

signal.signal(STACK_SIGNAL, writes_like_a_descheduled_faulthandler)

def slow_writer():
    print("ready", flush=True)
    while True:
        time.sleep(3600)

slow_writer()
"""


def test_a_dump_is_read_only_once_it_holds_the_main_thread(procs: Procs, tmp_path: Path) -> None:
    """A writer that pauses mid-dump looks done to a reader waiting for quiet; the main
    thread (written last) must be there before the dump is read, or a thread of the
    server would be shown as the main one (a loaded CI machine did that)."""
    paths = JobPaths(tmp_path / "jobs", "j")
    start(procs, tmp_path, SLOW_WRITER, str(paths.root), "j")
    [got] = st.dump(st.local_workers(paths))
    assert main_frames(got) == ["slow_writer"]
    assert [t.frames[-1].func for t in got.threads if not t.main] == ["current_task"]
    [late] = st.dump(st.local_workers(paths), timeout=0.5)  # its main thread comes after the timeout
    assert late.threads == [] and "without the main thread" in (late.error or ""), late


def test_identical_stacks_are_grouped(procs: Procs, tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j")
    for rank, how in ((0, "python"), (1, "c"), (2, "python"), (3, "python")):
        start(procs, tmp_path, WORKER, str(paths.root), "j", str(rank), how)
    found = st.dump(st.local_workers(paths))
    groups = st.group(found)
    assert [[s.rank for s in ranks] for ranks, _ in groups] == [[0, 2, 3], [1]]
    assert [threads[0].frames[-1].func for _, threads in groups] == ["stuck_in_python", "stuck_in_c"]
    lines = describe(StacksReport("j", 5, found, missing=[4]), state=JobState.STALLED, stall=None)
    assert any(line.startswith("ranks 0,2-3 (") for line in lines), lines
    assert any(line.startswith("rank 1 (") for line in lines)
    assert "no answer from rank(s) 4" in lines
    assert any("time.sleep(3600)" in line for line in lines)  # the line of code, as py-spy shows it


def test_rank_list() -> None:
    assert st.rank_list([7, 0, 2, 3, 4]) == "0,2-4,7"
    assert st.rank_list([5]) == "5" and st.rank_list([]) == ""


def test_never_signals_a_process_that_does_not_catch_the_signal(procs: Procs, tmp_path: Path) -> None:
    """The default action of a real-time signal is to terminate: a process that has not
    registered (or a recycled pid) must never get it, whatever a record claims."""
    paths = JobPaths(tmp_path / "jobs", "j")
    plain = procs.start([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(3600)"], env=base_env())
    wait_for(lambda: "ready" in plain.output(), timeout=60, what="a plain process")
    catching = start(procs, tmp_path, WORKER, str(paths.root), "j", "1", "python")
    folder = paths.dir / "stacks"
    (folder / "rank-0-1.txt").write_bytes(b"")
    write_json_atomic(folder / "rank-0.json", {**identity(plain.pid), "rank": 0, "run": 0, "dump": "rank-0-1.txt"})
    recycled = {**identity(catching.pid), "rank": 2, "run": 0, "dump": f"rank-1-{catching.pid}.txt"}
    recycled["pid_start_time"] -= 1000  # the pid now belongs to another process than the record's
    write_json_atomic(folder / "rank-2.json", recycled)
    assert [w.rank for w in st.local_workers(paths)] == [1]
    assert not st.catches(plain.pid, st.STACK_SIGNAL) and st.catches(catching.pid, st.STACK_SIGNAL)
    st.dump(st.local_workers(paths))
    assert not gone(plain.pid) and not gone(catching.pid)


def test_answers_through_the_folder_and_hostile_ones(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "j")
    paths.dir.mkdir(parents=True)
    rid = st.ask(paths)
    assert st.requests(paths) == [rid]
    frame = st.Frame("train.py", 3, "step\x1b[2J", source="go()\x1b[2J", changed=True)
    st.answer(paths, rid, 0, [st.RankStacks(0, "h", 10, [st.Thread(1, True, (frame,))]), st.RankStacks(1, "h", 11, error="gone")])
    bad = paths.dir / "stacks" / "answers" / rid
    (bad / "node-1.json").write_text(json.dumps({"node": 1, "ranks": [{"rank": "zero", "threads": 5}]}))
    (bad / "node-2.json").write_text("{not json")
    got = st.answers(paths, rid)
    assert set(got) == {0} and [s.rank for s in got[0]] == [0, 1] and got[0][1].error == "gone"
    lines = describe(StacksReport("j", 2, got[0]), state=JobState.RUNNING, stall=None)
    assert not any("\x1b" in line for line in lines) and any("step\\x1b[2J" in line for line in lines)
    assert f"      go()\\x1b[2J  [{CHANGED}]" in lines
    assert st.RankStacks.from_record({"rank": -1}) is None and st.RankStacks.from_record([]) is None
    st.withdraw(paths, rid)
    assert st.requests(paths) == [] and not bad.exists()
    with pytest.raises(ValueError):
        st.answer(paths, "../../x", 0, [])


def test_an_older_launchers_answer_without_lines_is_shown_without_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer written before frames carried their line of code (no ``source``, no
    ``changed``) still reads; its frames are shown without a line, never one read where
    the CLI runs from a file of the same name in its folder."""
    paths = JobPaths(tmp_path / "jobs", "j")
    rid = st.ask(paths)
    old = {
        "rank": 0,
        "host": "h",
        "pid": 10,
        "error": None,
        "threads": [{"ident": 1, "main": True, "frames": [{"file": "train.py", "line": 1, "func": "step"}]}],
    }
    (paths.dir / "stacks" / "answers" / rid).mkdir(parents=True)
    write_json_atomic(paths.dir / "stacks" / "answers" / rid / "node-0.json", {"node": 0, "host": "h", "ranks": [old]})
    (tmp_path / "train.py").write_text("impostor = 1\n")
    monkeypatch.chdir(tmp_path)
    [s] = st.answers(paths, rid)[0]
    assert s.main.frames == (st.Frame("train.py", 1, "step", source=None, changed=None),)
    lines = describe(StacksReport("j", 1, [s]), state=JobState.RUNNING, stall=None)
    assert lines == ["job j (running): stacks from 1 of 1 rank(s)", "", "rank 0 (h: pid 10):", '    File "train.py", line 1, in step']


# -- the forced abort's judge ------------------------------------------------------------------
def _status(*entries: dict, state: str = "running", run: int = 0) -> Status:
    return typed(Status, {"state": state, "restarts": run, "commands": list(entries)})


def test_an_abort_not_applied_within_the_grace_is_overdue() -> None:
    watch = AbortWatch(run=0, grace=10.0)
    abort = {"id": "c-1", "command": "abort", "state": "queued", "key": "k", "source": "http"}
    assert watch.look(_status(abort), [], now=100.0) is None  # first seen now
    assert watch.look(_status(abort), [], now=109.0) is None
    due = watch.look(_status(abort), [], now=110.0)
    assert due is not None and due.command_id == "c-1" and due.key == "k" and "could not be agreed" in due.reason
    receipt = due.receipt(now=5.0)
    assert receipt.state == State.COMPLETED.value and receipt.result == CommandResult(final_state="aborted", ended_by="launcher")


def test_an_applied_abort_gets_longer_and_others_never() -> None:
    watch = AbortWatch(run=0, grace=10.0)
    applied = {"id": "c-2", "command": "abort", "state": "applied"}
    watch.look(_status(applied), [], now=0.0)
    assert watch.look(_status(applied), [], now=10.0 * APPLIED_GRACES - 1) is None
    assert "did not end" in watch.look(_status(applied), [], now=10.0 * APPLIED_GRACES).reason
    for entry, status_kw in (
        ({"id": "s", "command": "save_checkpoint", "state": "queued"}, {}),  # not an abort
        ({"id": "d", "command": "abort", "state": "completed"}, {}),  # done
        ({"id": "o", "command": "abort", "state": "queued"}, {"run": 1}),  # another run's status
        ({"id": "f", "command": "abort", "state": "queued"}, {"state": "aborted"}),  # rank 0 ended it
    ):
        w = AbortWatch(run=0, grace=1.0)
        w.look(_status(entry, **status_kw), [], now=0.0)
        assert w.look(_status(entry, **status_kw), [], now=100.0) is None, entry


def test_a_hung_job_another_nodes_launcher_ended_is_ended_on_this_node_at_once() -> None:
    """Node 0's launcher saw the abort first, ended its ranks and recorded the job aborted
    before this node's grace ran out: the abort is no longer open in status.json, yet this
    node's ranks still hang (one stuck, one waiting for it). Its launcher ends them at once
    (two real launchers: test_hang.py; there node 1 once waited for ever)."""
    watch = AbortWatch(run=0, grace=10.0)
    queued = {"id": "c-5", "command": "abort", "state": "queued", "key": "k5", "source": "http"}
    assert watch.look(_status(queued), [], now=100.0) is None  # this node first saw it late
    forced = {**queued, "state": "completed", "result": {"final_state": "aborted", "ended_by": "launcher"}}
    due = watch.look(_status(forced, state="aborted"), [], now=101.0)
    assert due is not None and due.command_id == "c-5" and due.state == State.COMPLETED, due
    assert "another node's launcher" in due.reason
    assert AbortWatch(run=0).look(_status(forced, state="aborted", run=1), [], now=0.0) is None  # another run's
    agreed = {**queued, "state": "completed", "result": {"final_state": "aborted"}}  # the ranks agreed: they end by themselves
    assert AbortWatch(run=0).look(_status(agreed, state="aborted"), [], now=0.0) is None


def test_an_abort_left_in_the_inbox_is_overdue_too() -> None:
    """Rank 0 no longer reads its inbox (its control thread is stuck): the file is the command."""
    watch = AbortWatch(run=0, grace=10.0)
    inbox = [CommandFile(id="c-3", command="abort", key="k3"), CommandFile(id="c-4", command="graceful_stop")]
    watch.look(None, inbox, now=0.0)
    due = watch.look(None, inbox, now=10.0)
    assert due.command_id == "c-3" and due.source == "file" and due.state == State.SENT


# -- a job started without the launcher -------------------------------------------------------
def test_stacks_of_a_job_started_without_the_launcher(procs: Procs, tmp_path: Path, jobs_dir: Path, cli) -> None:
    p = start(procs, tmp_path, CONTROLLED, "solo")
    paths = JobPaths(jobs_dir, "solo")
    wait_for(lambda: paths.status.exists() and st.local_workers(paths), what="the Controller registered its dump")
    report = collect(_info(jobs_dir, "solo"))
    assert [s.rank for s in report.ranks] == [0] and report.missing == [] and report.nodes == []
    assert main_frames(report.ranks[0])[-1] == "waiting_for_data"

    res = cli("control", "stacks", "solo")
    assert res.code == 0, res.err
    assert f"rank 0 ({os.uname().nodename}: pid {p.pid}):" in res.out
    assert "in waiting_for_data" in res.out and "time.sleep(3600)" in res.out
    assert "bootstrap" not in res.out and "<frozen runpy>" not in res.out
    data = cli("control", "stacks", "solo", "--json").json()
    assert data["ranks"][0]["threads"][0]["main"] is True and data["world_size"] == 1 and data["state"] == "running"
    assert set(data["ranks"][0]) == {"rank", "host", "pid", "error", "threads"} and data["ranks"][0]["error"] is None  # every field, null included


def _info(jobs_dir: Path, job_id: str):
    from forgather_control.client.listing import judge_job
    from forgather_control.client.transport import probe_endpoint

    return judge_job(JobPaths(jobs_dir, job_id), probe=probe_endpoint)


def test_a_rank_that_exits_takes_its_fifo_along_not_its_childs(tmp_path: Path) -> None:
    """Its FIFO goes at a normal exit (thousands of ranks a run would leave as many), and a
    forked child that exits first leaves its parent's where it is."""
    code = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from forgather_control.core.jobs import JobPaths
        from forgather_control.core.dumper import register
        dump = register(JobPaths(Path(sys.argv[1]), "j"), 0)
        fifo = dump.with_suffix(".fifo")
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # a normal exit of the child: its atexit hooks run
        os.waitpid(pid, 0)
        print(fifo.exists(), flush=True)
        """
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "jobs")], env=base_env(tmp_path / "jobs"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "True", p.stdout + p.stderr
    folder = tmp_path / "jobs" / "j" / "stacks"
    assert sorted(f.suffix for f in folder.iterdir()) == [".json", ".txt"]  # the FIFO gone with the rank


REGISTERS = """
import os, sys
from pathlib import Path
from forgather_control.core.jobs import JobPaths
from forgather_control.core.dumper import register

jobs, job, rank = sys.argv[1:4]
register(JobPaths(Path(jobs), job), int(rank), run=2, launcher=(os.getppid(), 1234.5))
print("msgspec" in sys.modules, flush=True)
"""


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_registers_every_field_the_readers_parse_without_loading_msgspec(jobs_dir: Path, tmp_path: Path, rank: int) -> None:
    # The rank writes its registration as plain JSON (it loads no typed record, issue 24);
    # the readers parse it as StacksRegistration: the two must name the same fields.
    from forgather_control.core.records import StacksRegistration, load

    script = tmp_path / "registers.py"
    script.write_text(REGISTERS)
    out = subprocess.run([sys.executable, str(script), str(jobs_dir), "regjob", str(rank)], env=base_env(jobs_dir), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "False"
    path = jobs_dir / "regjob" / "stacks" / f"rank-{rank}.json"
    written = json.loads(path.read_text())
    rec = load(path, StacksRegistration)
    expected = set(StacksRegistration.__struct_fields__) - ({"dump_thread"} if rank else set())  # a rank other than 0 dumps from its main thread
    assert set(written) == expected, sorted(set(StacksRegistration.__struct_fields__) ^ set(written))
    assert (rec.rank, rec.run, rec.launcher_start_time, rec.dump) == (rank, 2, 1234.5, f"rank-{rank}-{rec.pid}.txt")
    assert rec.requests == f"rank-{rank}-{rec.pid}.fifo"
    assert rec.main_thread and rec.pid_start_time and rec.pid_ns and rec.cwd and rec.started_at and rec.registered_at
