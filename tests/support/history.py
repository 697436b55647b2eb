"""A jobs directory's history as the tests build it: runs through the launcher's own
records (no torchrun), jobs as the release before the settled form left them, processes
of "other hosts", and the file-system operations one listing makes.

Run as ``python -m support.history settle ROOT OUT STOP`` or ``relaunch-local|relaunch-remote
ROOT OUT ROUNDS IDS`` (with ``tests/`` on the path) it is one of the concurrent writers of
``test_settled.py``: bounded by work (rounds of relaunches), not by the clock.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from forgather_control.client.listing import scan
from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.markers import RUNS_DIR, SETTLED_DIR, mark_run
from forgather_control.core.records import Identity
from forgather_control.launcher import LaunchConfig, make_plan
from forgather_control.launcher.records import JobRecords, read_previous

from .records import identity, typed

DAY = 86400.0
#: A pid no process has (above any pid_max): a record naming it is dead at once.
GONE_PID = 999_999_999


# -- runs through the launcher's records ------------------------------------------------
def launch_run(jobs: Path, job_id: str, *, heartbeat: float = 10.0) -> JobRecords:
    """One launch of ``job_id``, as execute() starts it, without torchrun."""
    plan = make_plan(LaunchConfig(script="train.py", job_id=job_id), {}, python="python3", jobs_dir=str(jobs))
    paths = JobPaths(jobs, job_id)
    prev = read_previous(paths, plan.placement, node_rank=0)
    plan = plan.with_history(restarts=prev.restarts, resume_from=prev.resume_from, resume_gone=tuple(p.describe() for p in prev.gone))
    rec = JobRecords(paths, plan, heartbeat_interval=heartbeat)
    rec.claim(prev)
    rec.start(prev, argv=["forgather", "launch", "train.py"], cwd=str(jobs))
    return rec


def rank0_status(jobs: Path, rec: JobRecords, state: str, point: Path | None) -> None:
    """What rank 0 (a process long gone) wrote last for ``rec``'s run: ``state``, and
    ``point`` (a folder named ``checkpoint-<step>``) as its resume point."""
    resume_point = {"path": str(point), "step": int(point.name.split("-")[1]), "saved_at": time.time()} if point else None
    status = {"job_id": rec.plan.job_id, "state": state, "restarts": rec.plan.restarts, "resume_point": resume_point}
    write_json_atomic(JobPaths(jobs, rec.plan.job_id).status, {**status, **identity(GONE_PID)})


# -- jobs as an earlier release left them (no run marker, no settled entry) ---------------
def other_host(pid: int | None = None) -> dict[str, Any]:
    """An identity on another host (its pids are not ours to check)."""
    me = identity(pid)
    return {**me, "host": "other-node-7", "boot_id": "other-boot"}


def ended_job(
    root: Path, job_id: str, *, state: str = "finished", ident: dict[str, Any] | None = None, checkpoint: Path | None = None, ended: float | None = None
) -> JobPaths:
    """A run that ended and said so: job.json and status.json final, no endpoint. It ended
    now, or at ``ended`` (its records' times, and the storage's last write of them)."""
    paths = JobPaths(root, job_id).create(mark=False)
    ident = ident or identity(GONE_PID)
    now = time.time() if ended is None else ended
    job: dict[str, Any] = {"job_id": job_id, "state": state, "restarts": 0, "exit_code": 0, "ended_at": now, "updated_at": now, "host": ident["host"]}
    if checkpoint is not None:
        job["checkpoints"] = [{"path": str(checkpoint), "step": 100, "run": 0, "saved_at": now}]
    write_json_atomic(paths.job, job)
    write_json_atomic(paths.status, {**ident, "job_id": job_id, "state": state, "restarts": 0, "step": 100, "heartbeat_at": now, "ended_at": now})
    if ended is not None:
        age(paths.dir, ended)
    return paths


def dead_job(root: Path, job_id: str, *, died: float | None = None) -> JobPaths:
    """A run on this host killed without a word: its endpoint left, its pid gone. Its
    last heartbeat, and the storage's last write of its records, at ``died`` (default:
    two days ago, a death ``list`` no longer shows; ``time.time()``: one it does)."""
    paths = JobPaths(root, job_id).create(mark=False)
    ident = identity(GONE_PID)
    when = time.time() - 2 * DAY if died is None else died
    write_json_atomic(paths.endpoint, {**ident, "job_id": job_id, "url": "http://127.0.0.1:1", "port": 1, "token": "t" * 43, "started_at": when - 60})
    write_json_atomic(paths.status, {**ident, "job_id": job_id, "state": "running", "step": 7, "heartbeat_at": when})
    age(paths.dir, when)
    return paths


def other_host_job(root: Path, job_id: str, *, beat: float, written: float | None = None) -> JobPaths:
    """A run on another host that said it runs, last at ``beat`` (its clock); the
    storage last saw its records at ``written`` (default: now)."""
    paths = JobPaths(root, job_id).create(mark=False)
    ident = other_host()
    write_json_atomic(paths.status, {**ident, "job_id": job_id, "state": "running", "step": 7, "heartbeat_at": beat, "started_at": beat - 60})
    if written is not None:
        age(paths.dir, written)
    return paths


def age(folder: Path, when: float) -> None:
    """``folder`` and everything in it last written at ``when`` (the storage's mtimes)."""
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
        os.utime(dirpath, (when, when))


# -- what the settled form holds -------------------------------------------------------
def listed(root: Path, **kw: Any) -> list[str]:
    """The job ids a listing shows (``list``; ``include_finished=True``: ``--all``)."""
    return [i.job_id for i in scan(root, **kw)]


def own_settled(root: Path) -> Path:
    """This user's own folder of the settled form (core.markers): where its entries go."""
    return root / SETTLED_DIR / str(os.geteuid())


def settled_ids(root: Path) -> set[str]:
    d = own_settled(root)
    return {n for n in os.listdir(d) if not n.startswith(".")} if d.is_dir() else set()


def markers(root: Path, job_id: str | None = None) -> list[str]:
    d = root / RUNS_DIR
    names = sorted(n for n in os.listdir(d) if not n.startswith(".")) if d.is_dir() else []
    return [n for n in names if job_id is None or n.startswith(job_id + "@")]


def leftovers(root: Path) -> list[str]:
    """Temp files a writer left in the index folders (there must be none)."""
    return [n for d in (root, own_settled(root).parent, own_settled(root), root / RUNS_DIR) if d.is_dir() for n in os.listdir(d) if n.startswith(".tmp-")]


# -- counting what a listing asks of the file system ----------------------------------------
@contextmanager
def counted_ops(root: Path) -> Iterator[collections.Counter[str]]:
    """Counts the file-system operations made inside the block on paths under ``root``
    (or relative to a folder opened there): opens, directory listings, stats, writes."""
    counts: collections.Counter[str] = collections.Counter()
    prefix = os.path.join(str(root), "")
    events = {"open": "open", "os.listdir": "list", "os.scandir": "list", "os.rename": "write", "os.remove": "write", "os.mkdir": "write"}
    on = [True]

    def mine(path: object) -> bool:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        return isinstance(path, str) and (path.startswith(prefix) or path == str(root) or not os.path.isabs(path))

    def hook(event: str, args: tuple) -> None:
        kind = events.get(event)
        if on[0] and kind and args and not (event == "open" and isinstance(args[0], int)) and (isinstance(args[0], int) or mine(args[0])):
            counts[kind] += 1

    real = os.stat, os.lstat, os.fstat

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def stat_(path: Any, *a: Any, **k: Any) -> Any:
            if on[0] and (isinstance(path, int) or mine(path)):
                counts["stat"] += 1
            return fn(path, *a, **k)

        return stat_

    os.stat, os.lstat, os.fstat = (wrap(f) for f in real)
    sys.addaudithook(hook)  # cannot be removed: switched off instead
    try:
        yield counts
    finally:
        on[0] = False
        os.stat, os.lstat, os.fstat = real


# -- the concurrent writers of test_settled.py ------------------------------------------------
#: A settler whose stop file never comes (its test failed) ends after this many seconds.
SETTLER_CAP = 120.0


def _settler(root: Path, stop: Path) -> dict[str, Any]:
    """Lists (and so settles) again and again until ``stop`` exists (the relaunchers are
    done); a listing must never show a job twice."""
    out: dict[str, Any] = {"loops": 0, "violations": []}
    cap = time.monotonic() + SETTLER_CAP
    while not out["loops"] or not (stop.exists() or time.monotonic() > cap):
        ids = listed(root, include_finished=out["loops"] % 3 == 2)
        if len(ids) != len(set(ids)):
            out["violations"].append(f"a job listed twice: {sorted(i for i in ids if ids.count(i) > 1)}")
        out["loops"] += 1
    return out


def _relauncher(root: Path, job_ids: list[str], rounds: int, remote: bool) -> dict[str, Any]:
    """Relaunches settled jobs, one after another, ``rounds`` times each, as this host's
    process or as one on another host: marks the run, writes its records, checks that
    listings (its own, made while the settlers run) show it until it ends, then ends it
    with its own word."""
    out: dict[str, Any] = {"runs": 0, "violations": []}
    ident = other_host() if remote else identity()
    for run in range(1, rounds + 1):
        for job_id in job_ids:
            paths = JobPaths(root, job_id)
            if remote:
                mark_run(root, job_id, typed(Identity, ident) if isinstance(ident, dict) else ident)  # what that host's launcher does first
            else:
                paths.create()
            now = time.time()
            write_json_atomic(paths.job, {"job_id": job_id, "state": "running", "restarts": run, "host": ident["host"], "started_at": now, "updated_at": now})
            write_json_atomic(paths.status, {**ident, "job_id": job_id, "state": "running", "restarts": run, "step": 1, "heartbeat_at": now})
            for _ in range(2):
                if job_id not in listed(root):
                    out["violations"].append(f"{job_id} run {run} ({'remote' if remote else 'local'}) not listed while it runs")
            now = time.time()
            write_json_atomic(paths.status, {**ident, "job_id": job_id, "state": "finished", "restarts": run, "step": 2, "heartbeat_at": now, "ended_at": now})
            write_json_atomic(paths.job, {"job_id": job_id, "state": "finished", "restarts": run, "host": ident["host"], "exit_code": 0, "ended_at": now})
            out["runs"] += 1
    return out


def main(argv: list[str]) -> int:
    role, root, result = argv[0], Path(argv[1]), Path(argv[2])
    if role == "settle":
        out = _settler(root, Path(argv[3]))
    else:
        out = _relauncher(root, argv[4].split(","), int(argv[3]), remote=role == "relaunch-remote")
    result.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
