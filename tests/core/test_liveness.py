"""Liveness verdicts from records, with real pids of this host."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from support.records import identity, typed

from forgather_control.client import scan
from forgather_control.core import Liveness, judge, local_host, write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import Endpoint, Job, Status


def other_host(**kw) -> dict:
    return {"host": "elsewhere", "boot_id": "another-boot", "pid": os.getpid(), "pid_start_time": 1.0, **kw}


def no_squeue(_job_id: str) -> None:
    return None


def test_this_process_is_alive() -> None:
    verdict, why = judge(endpoint=typed(Endpoint, identity()), status=None, squeue=no_squeue)
    assert verdict == Liveness.ALIVE, why


def test_recycled_pid_is_dead() -> None:
    rec = {**identity(), "pid_start_time": time.time() - 10_000}
    assert judge(endpoint=typed(Endpoint, rec), status=None, squeue=no_squeue)[0] == Liveness.DEAD


def test_exited_process_is_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    rec = identity(proc.pid)
    proc.wait()
    assert judge(endpoint=typed(Endpoint, rec), status=None, squeue=no_squeue)[0] == Liveness.DEAD


def test_same_hostname_other_boot_is_not_judged_by_pid() -> None:
    rec = {**identity(), "boot_id": "rebooted-since", "heartbeat_at": time.time()}
    assert judge(endpoint=None, status=typed(Status, rec), squeue=no_squeue)[0] == Liveness.UNKNOWN


def test_other_host_heartbeat_fresh_unknown_old_stale() -> None:
    now = time.time()
    fresh = typed(Status, other_host(heartbeat_at=now - 5))
    assert judge(endpoint=None, status=fresh, squeue=no_squeue, now=now)[0] == Liveness.UNKNOWN
    old = typed(Status, other_host(heartbeat_at=now - 500))
    verdict, why = judge(endpoint=None, status=old, squeue=no_squeue, now=now)
    assert verdict == Liveness.STALE and "500s" in why
    # a local pid check never condemns another host's job
    assert judge(endpoint=typed(Endpoint, other_host(pid=999_999_999)), status=fresh, squeue=no_squeue, now=now)[0] == Liveness.UNKNOWN


def test_probe_is_authoritative() -> None:
    ep = typed(Endpoint, other_host(url="http://10.0.0.1:1"))
    st = typed(Status, other_host(heartbeat_at=0))  # an endpoint carries no heartbeat: rank 0's status does
    assert judge(endpoint=ep, status=st, probe=lambda e: True, squeue=no_squeue)[0] == Liveness.ALIVE
    assert judge(endpoint=ep, status=st, probe=lambda e: None, squeue=no_squeue)[0] == Liveness.STALE


def test_slurm_answers_for_other_hosts() -> None:
    job = typed(Job, {"scheduler": {"type": "slurm", "slurm_job_id": "77"}})
    st = typed(Status, {**other_host(heartbeat_at=time.time()), "state": "running"})
    assert judge(endpoint=None, status=st, job=job, squeue=lambda j: "RUNNING")[0] == Liveness.ALIVE
    silent = typed(Status, {**other_host(heartbeat_at=time.time() - 600), "state": "running"})
    assert judge(endpoint=None, status=silent, job=job, squeue=lambda j: "")[0] == Liveness.DEAD
    assert judge(endpoint=None, status=st, job=job, squeue=lambda j: None)[0] == Liveness.UNKNOWN


def test_finished_job_without_endpoint() -> None:
    st = typed(Status, {**identity(), "state": "stopped"})
    assert judge(endpoint=None, status=st, squeue=no_squeue)[0] == Liveness.FINISHED


def test_scan_skips_hostile_entries(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    p = JobPaths(root, "live").create()
    write_json_atomic(p.endpoint, {**identity(), "job_id": "live", "url": None})
    write_json_atomic(p.status, {**identity(), "state": "running", "step": 3})
    (root / "garbage").mkdir()
    (root / "garbage" / "status.json").write_bytes(b"\x00\x01{{{")
    (root / "a-file").write_text("not a job")
    (root / "..hidden").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    write_json_atomic(outside / "status.json", {"state": "running"})
    (root / "linked").symlink_to(outside)
    jobs = {j.job_id: j for j in scan(root, include_finished=True, squeue=no_squeue)}
    assert set(jobs) == {"live", "garbage"}  # a bad record is its own job's problem, shown as such
    assert jobs["live"].liveness == Liveness.ALIVE and jobs["live"].summary().step == 3
    assert jobs["garbage"].state == "corrupt" and "not valid JSON" in jobs["garbage"].summary().evidence
    assert local_host().boot_id


def test_a_final_state_whose_processes_are_all_gone_is_finished_even_with_an_endpoint_left() -> None:
    """Rank 0 recorded its end (or the launcher closed its books) but died before removing
    its endpoint: the records say how the job ended and no process of it runs, so the job
    ended; "dead" would hide the recorded state (the aborted hung job of test_hang)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    rec = identity(proc.pid)
    proc.wait()
    st = typed(Status, {**rec, "state": "aborted"})
    verdict, why = judge(endpoint=typed(Endpoint, rec), status=st, squeue=no_squeue)
    assert verdict == Liveness.FINISHED and "aborted" in why, why
    running = typed(Status, {**rec, "state": "running"})  # not final: the process died without a word
    assert judge(endpoint=typed(Endpoint, rec), status=running, squeue=no_squeue)[0] == Liveness.DEAD
    alive = typed(Status, {**identity(), "state": "aborted"})  # its process still runs: winding down
    assert judge(endpoint=typed(Endpoint, identity()), status=alive, squeue=no_squeue)[0] == Liveness.ALIVE


def test_a_record_of_an_older_release_without_pid_ns_is_judged_by_its_pid_as_before() -> None:
    """Records written before ``pid_ns`` was recorded: same host and boot id, so their pid
    is ours to look up (a live one alive, a gone one dead), as it was when they were written;
    one naming another namespace is not (judged by its heartbeat)."""
    here = {k: v for k, v in identity().items() if k != "pid_ns"}
    assert judge(endpoint=typed(Endpoint, here), status=None, squeue=no_squeue)[0] == Liveness.ALIVE
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    gone = {k: v for k, v in identity(proc.pid).items() if k != "pid_ns"}
    proc.wait()
    assert judge(endpoint=typed(Endpoint, gone), status=None, squeue=no_squeue)[0] == Liveness.DEAD
    elsewhere = {**gone, "pid_ns": 1, "heartbeat_at": time.time()}
    assert judge(endpoint=None, status=typed(Status, elsewhere), squeue=no_squeue)[0] == Liveness.UNKNOWN


def test_a_start_time_read_from_proc_is_psutils_and_a_rank_never_loads_psutil(wait_for) -> None:
    """Records compare start times made by psutil (older releases, the launcher's view of
    its children) with ones read from /proc: the very same float. A training rank names
    itself and looks at its launcher without psutil (0.8 MiB a rank, issue 24)."""
    import psutil

    from forgather_control.core.host import process_start_time

    for pid in (os.getpid(), os.getppid(), 1):
        assert process_start_time(pid) == psutil.Process(pid).create_time()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, timeout=30, what="a zombie")
    assert process_start_time(child.pid) is None  # died, not yet reaped: not running
    child.wait()
    assert process_start_time(child.pid) is None
    code = (
        "import sys, os\n"
        "import forgather_control.callback\n"
        "from forgather_control.core.liveness import pid_alive, process_identity\n"
        "me = process_identity()\n"
        "assert me.pid_start_time and pid_alive(me)\n"
        "print('psutil' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr
