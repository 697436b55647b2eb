"""The settled form (client/settled.py): ``list`` reads what may be live, however long
the history, and stays right with many writers, relaunches, bad entries and clocks
that disagree. In process, on real folders; the writers of the concurrency test are
real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.history import (
    DAY,
    GONE_PID,
    age,
    counted_ops,
    dead_job,
    ended_job,
    launch_run,
    leftovers,
    listed,
    markers,
    other_host,
    other_host_job,
    own_settled,
    rank0_status,
    settled_ids,
)
from support.launcher import START_TIMEOUT, launch, wait_running
from support.paths import PLAIN_LAUNCH, REPO
from support.records import identity, typed
from support.waiting import wait_for

from forgather_control.client import cleanup, find_job, list_jobs, listing
from forgather_control.client import settled as settled_mod
from forgather_control.client.listing import scan
from forgather_control.client.ray_listing import list_node
from forgather_control.client.settler import Settler
from forgather_control.client.sources import LocalSource
from forgather_control.core import JobPaths, process_identity, write_json_atomic
from forgather_control.core.markers import RUNS_DIR, SETTLED_DIR, mark_run, read_entry, read_index
from forgather_control.core.records import Identity
from forgather_control.ui.feed import JobsFeed


def _history(root: Path, n: int) -> None:
    for i in range(n):
        ended_job(root, f"done-{i:04d}", state=("finished", "stopped", "failed")[i % 3], ended=time.time() - 2 * DAY)
        if i % 4 == 0:
            dead_job(root, f"dead-{i:04d}")


# -- what list reads --------------------------------------------------------------------
def test_a_folder_of_the_current_release_is_read_as_before_then_settled(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    _history(root, 12)
    live = JobPaths(root, "live").create()  # this process: alive
    write_json_atomic(live.status, {**identity(), "job_id": "live", "state": "running", "step": 1, "heartbeat_at": time.time()})
    everything = {i.job_id: (str(i.state), str(i.liveness)) for i in scan(root, include_finished=True, settle=False)}
    assert not (root / SETTLED_DIR).exists()  # settle=False writes nothing

    first = listed(root)  # as before: the dead jobs and the live one, the finished ones hidden
    assert sorted(first) == ["dead-0000", "dead-0004", "dead-0008", "live"]
    assert settled_ids(root) == {j for j in everything if j != "live"}  # that listing proved them ended
    assert listed(root) == ["live"]  # passed by from now on
    again = {i.job_id: (str(i.state), str(i.liveness)) for i in scan(root, include_finished=True)}
    assert again == everything  # list --all finds everything, judged the same
    entry = read_entry(root, "dead-0004")
    assert entry is not None and entry.verdict == "dead" and entry.state == "dead"
    assert read_entry(root, "done-0000").verdict == "finished"
    assert find_job(root, "done-0001").summary().state == "stopped"  # status of an old job


def test_a_settled_listing_makes_the_same_operations_however_long_the_history(tmp_path: Path) -> None:
    counts = []
    for n in (10, 200):
        root = tmp_path / f"jobs-{n}"
        _history(root, n)
        live = JobPaths(root, "live").create()
        write_json_atomic(live.status, {**identity(), "job_id": "live", "state": "running", "step": 1, "heartbeat_at": time.time()})
        listed(root)  # settles
        with counted_ops(root) as c:
            assert listed(root) == ["live"]
        with counted_ops(root) as web:  # what the web page polls while it hides ended jobs
            assert [r.job_id for r in JobsFeed(LocalSource(root), max_age=0.0).snapshot(ended=False).rows] == ["live"]
        with counted_ops(root) as ray:
            assert [r["job_id"] for r in json.loads(list_node(str(root), False, None))["jobs"]] == ["live"]  # each Ray node
        counts.append((dict(c), dict(web), dict(ray)))
    assert counts[0] == counts[1], counts
    small = counts[0][0]
    assert small["list"] == 4 and small.get("write", 0) == 0, small  # the root, .runs, .settled and this user's folder in it; nothing written


# -- relaunch, resume points, cleanup -----------------------------------------------------------
def test_a_relaunch_of_a_settled_job_is_listed_at_once_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    jobs, point = tmp_path / "jobs", tmp_path / "out" / "checkpoint-100"
    point.mkdir(parents=True)
    first = launch_run(jobs, "again")
    rank0_status(jobs, first, "stopped", point)
    first.finish("stopped", 0)  # the job's own end settles it
    assert settled_ids(jobs) == {"again"} and markers(jobs) == []
    assert listed(jobs) == [] and listed(jobs, include_finished=True) == ["again"]
    job = json.loads((jobs / "again" / "job.json").read_text())
    assert [c["path"] for c in job["checkpoints"]] == [str(point)]  # settling touched nothing of it

    second = launch_run(jobs, "again")  # its launcher marks the run before anything of it
    assert settled_ids(jobs) == set() and len(markers(jobs, "again")) == 1
    info = find_job(jobs, "again")
    assert second.plan.resume_from == str(point) and second.plan.restarts == 1
    assert listed(jobs) == ["again"] and str(info.state) == "starting"
    rank0_status(jobs, second, "stopped", None)  # stopped before saving again
    second.finish("stopped", 0)
    assert settled_ids(jobs) == {"again"} and markers(jobs) == []
    third = launch_run(jobs, "again")
    assert third.plan.resume_from == str(point)  # still there, two settlings later
    third.finish("failed", 1)


def test_a_job_that_died_is_shown_for_a_day_then_settled(tmp_path: Path) -> None:
    """Whoever launched a job that was killed without a word sees it ``dead`` in ``list``
    and on the web page, every time they look, until it has been silent a day."""
    root = tmp_path / "jobs"
    paths = dead_job(root, "oom-killed", died=time.time() - 3600)
    for _ in range(3):
        assert listed(root) == ["oom-killed"]
        assert [(r.job_id, r.state) for r in list_jobs(jobs_dir=root).rows] == [("oom-killed", "dead")]
    assert settled_ids(root) == set()
    age(paths.dir, time.time() - DAY - 60)  # the storage last saw it a day ago,
    assert listed(root) == ["oom-killed"] and settled_ids(root) == set()  # but its heartbeat is an hour old
    dead_job(root, "oom-killed", died=time.time() - DAY - 60)
    assert listed(root) == ["oom-killed"]  # shown this last time, and settled
    assert settled_ids(root) == {"oom-killed"} and read_entry(root, "oom-killed").verdict == "dead"
    assert listed(root) == [] and listed(root, include_finished=True) == ["oom-killed"]


def test_cleanup_keeps_a_settled_resumable_job_and_leaves_no_entry_of_what_it_deletes(tmp_path: Path) -> None:
    jobs, point = tmp_path / "jobs", tmp_path / "out" / "checkpoint-100"
    point.mkdir(parents=True)
    ended_job(jobs, "resumable", state="stopped", checkpoint=point)
    ended_job(jobs, "complete")
    assert listed(jobs) == [] and settled_ids(jobs) == {"resumable", "complete"}
    found = {c.info.job_id: c.kept for c in cleanup.candidates(jobs)}
    assert found["complete"] is None and "resume point" in found["resumable"]
    assert cleanup.delete_job(jobs, "complete").deleted
    assert settled_ids(jobs) == {"resumable"}  # kept, and still settled
    assert not cleanup.delete_job(jobs, "resumable").deleted
    rec = launch_run(jobs, "resumable")
    assert rec.plan.resume_from == str(point) and listed(jobs) == ["resumable"]
    rec.finish("stopped", 0)
    assert cleanup.delete_job(jobs, "resumable", include_resumable=True).deleted
    assert settled_ids(jobs) == set() and markers(jobs) == [] and leftovers(jobs) == []


def test_cleanup_tidies_entries_without_a_folder_and_settles_what_it_reads(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    ended_job(root, "kept")
    dead_job(root, "crashed")
    listed(root)
    (root / SETTLED_DIR / "by-hand").write_text("{}")  # its folder was deleted by hand
    mark_run(root, "never-made", process_identity(GONE_PID))  # a launch that died before its folder
    ended_job(root, "fresh")
    cleanup.candidates(root)
    assert settled_ids(root) == {"kept", "crashed", "fresh"} and markers(root) == []


# -- markers: what proves a run over ------------------------------------------------------------
def test_a_marker_holds_the_job_in_the_listing_until_its_process_is_proven_gone(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    paths = ended_job(root, "remote", ident=other_host())
    mark_run(root, "remote", typed(Identity, other_host()))  # another host started it again (this process, as that host)
    assert listed(root, include_finished=True) == ["remote"]
    assert settled_ids(root) == set() and len(markers(root, "remote")) == 1  # nothing proves that run over
    now = time.time()
    # that host's process records its end, after its marker: over, on its own clock
    write_json_atomic(paths.status, {**other_host(), "job_id": "remote", "state": "finished", "restarts": 0, "heartbeat_at": now, "ended_at": now})
    assert listed(root) == [] and settled_ids(root) == {"remote"} and markers(root) == []


def test_slurm_that_no_longer_knows_the_job_proves_its_marker_gone(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    paths = JobPaths(root, "slurm-77").create(mark=False)
    ident = other_host()
    mark_run(root, "slurm-77", typed(Identity, ident) if isinstance(ident, dict) else ident)
    write_json_atomic(paths.job, {"job_id": "slurm-77", "state": "running", "scheduler": {"type": "slurm", "slurm_job_id": "77"}})
    paths.nodes.mkdir()
    beat = time.time() - 2 * DAY  # its last word two days ago (a job that died now is shown a day first)
    write_json_atomic(paths.node(0), {**ident, "job_id": "slurm-77", "heartbeat_at": beat, "slurm_job_id": "77"})
    age(paths.dir, beat)
    infos = scan(root, squeue=lambda j: "RUNNING")  # silent, but SLURM says it runs: its marker holds it
    assert [i.job_id for i in infos] == ["slurm-77"] and settled_ids(root) == set() and len(markers(root)) == 1
    infos = scan(root, squeue=lambda j: "")  # SLURM no longer knows it: every process of it is gone
    assert str(infos[0].liveness) == "dead" and settled_ids(root) == {"slurm-77"} and markers(root) == []


def test_a_launcher_marks_its_job_again_if_its_marker_is_removed_while_it_runs(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    rec = launch_run(jobs, "kept-on", heartbeat=0.05)
    try:
        (name,) = markers(jobs, "kept-on")
        os.unlink(jobs / RUNS_DIR / name)  # a reader whose clock is far off, or a tool
        deadline = time.time() + 10
        while not markers(jobs, "kept-on") and time.time() < deadline:
            time.sleep(0.05)
        assert markers(jobs, "kept-on") and listed(jobs) == ["kept-on"]
    finally:
        rec.finish("finished", 0)
    assert markers(jobs) == [] and settled_ids(jobs) == {"kept-on"}


# -- untrusted entries and markers --------------------------------------------------------------
def test_bad_entries_and_markers_never_hide_a_job_nor_break_the_listing(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    for j in ("garbage", "linked", "folder", "fifo", "relaunched", "bad-marker"):
        ended_job(root, j)
    live = JobPaths(root, "relaunched").create()  # runs again, with a marker
    write_json_atomic(live.status, {**identity(), "job_id": "relaunched", "state": "running", "step": 1, "heartbeat_at": time.time()})
    s = own_settled(root)
    s.mkdir(parents=True)
    (s / "garbage").write_bytes(b"\xff\xfe not json")
    (s / "relaunched").write_text('{"job_id": "relaunched", "verdict": "finished"}')  # a settler that read the old run
    os.symlink(tmp_path, s / "linked")
    (s / "folder").mkdir()
    os.mkfifo(s / "fifo")
    (s / "..weird").write_text("{}")
    (s / ("x" * 200)).write_text("{}")  # not a job id: passed by
    (s / "no-such-job").write_text("{}")  # an entry for no folder at all
    (root / RUNS_DIR / "bad-marker@0123").write_text("[1, 2")
    ids = listed(root)
    assert ids == ["relaunched"], ids  # the garbage entry still says "settled": its job ended; the others are read
    assert sorted(listed(root, include_finished=True)) == sorted(["garbage", "linked", "folder", "fifo", "relaunched", "bad-marker"])
    assert read_entry(root, "garbage") is None and read_entry(root, "folder") is None
    assert "bad-marker" in [i.job_id for i in scan(root, include_finished=True)]
    assert (root / RUNS_DIR / "bad-marker@0123").exists()  # unreadable: not proven gone, so kept
    cleanup.candidates(root)  # reads every entry: the bad ones go, and are settled again
    assert read_entry(root, "garbage") is not None and not (s / "no-such-job").exists()
    assert read_entry(root, "linked") is not None and read_entry(root, "fifo") is not None  # settled in their place


def test_an_index_that_is_a_link_or_a_file_is_never_followed_and_hides_nothing(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    ended_job(root, "a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a").write_text("{}")
    os.symlink(elsewhere, root / SETTLED_DIR)
    (root / RUNS_DIR).write_text("not a folder")
    assert not read_index(root).usable
    assert listed(root, include_finished=True) == ["a"]
    assert listed(root) == [] and os.listdir(elsewhere) == ["a"]  # nothing written through the link
    (root / RUNS_DIR).unlink()
    assert listed(root, include_finished=True) == ["a"] and os.listdir(elsewhere) == ["a"]


def test_an_unwritable_directory_is_listed_as_before(tmp_path: Path) -> None:
    """A jobs directory this reader cannot write (another user's, read-only storage): the
    listing settles nothing and shows what it showed before the settled form existed.
    Root writes through any mode, so as root the folder is made immutable instead."""
    root = tmp_path / "jobs"
    dead_job(root, "d")  # dead two days: settled at once where it can be
    if os.geteuid() == 0:
        lock, unlock = ["chattr", "+i", str(root)], ["chattr", "-i", str(root)]
    else:
        lock, unlock = ["chmod", "0500", str(root)], ["chmod", "0700", str(root)]
    locked = subprocess.run(lock, capture_output=True, text=True) if shutil.which(lock[0]) else None
    if locked is None or locked.returncode != 0:  # no chattr, or a file system without the flag
        pytest.skip(f"cannot make {root} unwritable for root here: {locked.stderr.strip() if locked else 'no ' + lock[0]}")
    try:
        assert listed(root) == ["d"] and listed(root) == ["d"]
        assert not (root / SETTLED_DIR).exists()
    finally:
        subprocess.run(unlock, check=True)
    assert listed(root) == ["d"] and settled_ids(root) == {"d"}  # writable again: settled


# -- clocks ---------------------------------------------------------------------------------
def test_a_reader_whose_clock_is_off_settles_only_on_proof(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "jobs"
    now = time.time()
    other_host_job(root, "remote-live", beat=now)  # runs on another host, beat just now
    fin = ended_job(root, "relaunching")  # ended here; another host's launcher starts it again:
    fin.nodes.mkdir()
    write_json_atomic(fin.node(0), {**other_host(), "job_id": "relaunching", "state": "running", "heartbeat_at": now, "started_at": now})
    dead_job(root, "dead-here", died=now)  # its pid is gone: dead, and shown for a day
    dead_job(root, "dead-long-ago")
    for skew in (2 * DAY, -2 * DAY):
        clock = SimpleNamespace(time=lambda skew=skew: time.time() + skew)
        monkeypatch.setattr(listing, "time", clock)  # this reader's clock, two days off
        monkeypatch.setattr(settled_mod, "time", clock)
        shown = listed(root)
        assert "remote-live" in shown and "dead-here" in shown, skew
        # ahead, its clock calls the new death a day old: the storage's clock says not
        assert settled_ids(root) == {"dead-long-ago"}, skew
    monkeypatch.undo()
    assert sorted(listed(root)) == ["dead-here", "relaunching", "remote-live"]  # a reader with the right time sees all three


def test_silence_settles_only_when_both_clocks_say_it_is_old(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    now = time.time()
    other_host_job(root, "gone-long", beat=now - 3 * DAY, written=now - 3 * DAY)  # its host went away
    other_host_job(root, "clock-behind", beat=now - 3 * DAY)  # its writer's clock is 3 days behind: written just now
    other_host_job(root, "copied", beat=now - 60, written=now - 3 * DAY)  # rsync -a kept old mtimes; beat a minute ago
    other_host_job(root, "recent", beat=now - 3600, written=now - 3600)
    shown = listed(root)
    assert sorted(shown) == ["clock-behind", "copied", "gone-long", "recent"]  # as before: stale or unknown
    assert settled_ids(root) == {"gone-long"} and read_entry(root, "gone-long").verdict == "stale"
    assert sorted(listed(root)) == ["clock-behind", "copied", "recent"]
    # a marker keeps a silent job too, until it is as old itself
    paths = other_host_job(root, "marked", beat=now - 3 * DAY, written=now - 3 * DAY)
    mark_run(root, "marked", typed(Identity, other_host()))
    age(paths.dir, now - 3 * DAY)
    assert "marked" in listed(root) and "marked" not in settled_ids(root)
    (name,) = markers(root, "marked")
    with Settler(root, read_index(root), squeue=lambda j: None, now=now + 2 * DAY) as s:
        assert not s.marker_gone(name, find_job(root, "marked"))  # storage says the marker is new


# -- many writers at once ------------------------------------------------------------------------
def test_concurrent_settlers_and_relaunchers_lose_nothing_and_hide_nothing_that_runs(tmp_path: Path) -> None:
    """Four processes list (and so settle) in a loop while two relaunch settled jobs, one
    as a process of this host and one as another host's; every relaunch must be listed
    while it runs, no listing may show a job twice, and at the end every record is there,
    every job settled once, no marker and no temp file left."""
    root = tmp_path / "jobs"
    local = [f"local-{i}" for i in range(6)]
    remote = [f"remote-{i}" for i in range(6)]
    for j in local + remote + [f"old-{i}" for i in range(30)]:
        ended_job(root, j, ident=other_host() if j.startswith("remote") else None)
    listed(root)
    assert len(settled_ids(root)) == 42
    rounds, stop = 8, tmp_path / "stop"  # each relauncher runs its six jobs 8 times; the settlers list until then
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    workers = [("settle", [])] * 4 + [("relaunch-local", local), ("relaunch-remote", remote)]
    procs = []
    for k, (role, ids) in enumerate(workers):
        out = tmp_path / f"w{k}.json"
        tail = [str(rounds), ",".join(ids)] if ids else [str(stop)]
        procs.append((role, out, subprocess.Popen([sys.executable, "-m", "support.history", role, str(root), str(out), *tail], env=env, cwd=REPO / "tests")))
    for role, _, p in procs[4:]:
        assert p.wait(120) == 0, role
    stop.touch()  # the relaunches are done: each settler ends after its listing
    results = []
    for role, out, p in procs:
        assert p.wait(120) == 0, role
        results.append((role, json.loads(out.read_text())))
    violations = [v for _, r in results for v in r["violations"]]
    assert violations == []
    assert all(r.get("loops", r.get("runs", 0)) > 0 for _, r in results), results
    assert sum(r["runs"] for role, r in results if role.startswith("relaunch")) >= 12

    everything = [i.job_id for i in scan(root, include_finished=True)]
    assert sorted(everything) == sorted(set(everything)) and len(everything) == 42
    for j in everything:  # no lost record
        assert json.loads((root / j / "job.json").read_text())["state"] == "finished"
        assert json.loads((root / j / "status.json").read_text())["state"] == "finished"
    assert listed(root) == []
    assert settled_ids(root) == set(everything) and markers(root) == [] and leftovers(root) == []


def test_settled_module_has_no_heavy_imports() -> None:
    code = "import sys, forgather_control.client.settled; print(any(m in sys.modules for m in ('torch', 'fastapi', 'ray')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert settled_mod.SILENT_FOR >= DAY


# -- through the command line ------------------------------------------------------------------
def _rows(cli, *args: str) -> dict[str, str]:
    r = cli("control", "list", "--json", *args)
    assert r.code == 0, r
    return {row["job_id"]: row["state"] for row in r.json()}


def test_list_all_and_status_find_everything_in_a_settled_history(cli, jobs_dir: Path) -> None:
    _history(jobs_dir, 9)
    live = JobPaths(jobs_dir, "live").create()
    write_json_atomic(live.status, {**identity(), "job_id": "live", "state": "running", "step": 1, "heartbeat_at": time.time()})
    first = _rows(cli)  # reads every folder, as before; settles what ended
    assert first == {"dead-0000": "dead", "dead-0004": "dead", "dead-0008": "dead", "live": "running"}
    everything = _rows(cli, "--all")
    assert len(everything) == 13 and everything["done-0002"] == "failed"
    assert _rows(cli) == {"live": "running"}
    people = cli("control", "list")
    assert people.code == 0 and "live" in people.out and "dead-0004" not in people.out
    assert _rows(cli, "--all") == everything
    r = cli("control", "status", "dead-0004", "--json")
    assert r.code == 0 and r.json()["state"] == "dead", r
    r = cli("control", "status", "done-0001", "--json")
    assert r.code == 0 and r.json()["state"] == "stopped", r


@pytest.mark.slow
def test_a_real_relaunch_of_a_settled_job_is_listed_while_it_runs(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    """``forgather launch`` twice under one id: the first run's own end settles it; the
    second is listed from its start, and its own end settles it again."""
    out = tmp_path / "out"
    first = launch(procs, jobs_dir, "twice", PLAIN_LAUNCH, "--max-steps", "20", "--output-dir", str(out), name="first")
    assert first.wait(START_TIMEOUT) == 0, first.output()[-3000:]
    assert settled_ids(jobs_dir) == {"twice"} and markers(jobs_dir) == []
    assert _rows(cli) == {} and _rows(cli, "--all") == {"twice": "finished"}
    second = launch(procs, jobs_dir, "twice", PLAIN_LAUNCH, "--max-steps", "1000000", "--output-dir", str(out), name="second")
    wait_for(lambda: _rows(cli).get("twice") in ("starting", "running"), timeout=START_TIMEOUT, interval=0.1, what="the relaunch listed")
    wait_running(jobs_dir, "twice", second)
    assert _rows(cli) == {"twice": "running"}
    assert cli("control", "stop", "twice", "--wait").code == 0
    assert second.wait(120) == 76
    assert _rows(cli) == {} and _rows(cli, "--all") == {"twice": "stopped"}
    assert settled_ids(jobs_dir) == {"twice"} and markers(jobs_dir) == []
