"""Issue 2, acceptance 5, through the CLI: liveness verdicts in ``list``, hostile files,
and ``cleanup`` deleting only what is dead or finished, never through a symlink."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from support.env import base_env
from support.records import identity
from support.scripts import CONTROLLED_LOOP
from support.waiting import wait_for

from forgather_control.core import JobPaths, local_host, read_json, write_json_atomic


def jobs_by_id(cli, *args: str) -> dict[str, dict[str, Any]]:
    r = cli("control", "list", "--json", *args)
    assert r.code == 0, r
    return {j["job_id"]: j for j in r.json()}


def wait_running(cli, jobs_dir: Path, job_id: str) -> None:
    """The job's own status.json first (read in this process: a ``list`` per poll would
    compete with the job's start for the CPU), then ``list`` says it runs."""
    wait_for(lambda: (read_json(JobPaths(jobs_dir, job_id).status, quiet=True) or {}).get("state") == "running", timeout=120, what=f"{job_id}'s status.json")
    wait_for(lambda: jobs_by_id(cli).get(job_id, {}).get("state") == "running", timeout=120, interval=0.2, what=f"{job_id} listed running")


def write_job(root: Path, job_id: str, *, endpoint: dict | None = None, status: dict | None = None) -> JobPaths:
    paths = JobPaths(root, job_id).create()
    if endpoint is not None:
        write_json_atomic(paths.endpoint, {"job_id": job_id, "protocol": 1, **endpoint})
    if status is not None:
        write_json_atomic(paths.status, {"job_id": job_id, **status})
    return paths


def unrelated_pid_job(root: Path, job_id: str) -> JobPaths:
    """Our own live pid, but a start time that is not ours: a recycled pid."""
    ident = identity()
    ident["pid_start_time"] = float(ident["pid_start_time"]) - 1000.0
    return write_job(root, job_id, endpoint={**ident, "url": None, "token": "t"}, status={**ident, "state": "running", "step": 7, "heartbeat_at": time.time()})


def other_host_job(root: Path, job_id: str, heartbeat_age: float = 1.0) -> JobPaths:
    rec = {"host": "some-other-node", "boot_id": "another-boot", "pid": 4242, "pid_start_time": 1.0}
    return write_job(
        root,
        job_id,
        endpoint={**rec, "url": None, "token": "t"},
        status={**rec, "state": "running", "step": 5, "heartbeat_at": time.time() - heartbeat_age},
    )


def finished_job(root: Path, job_id: str, state: str = "stopped") -> JobPaths:
    return write_job(root, job_id, status={**identity(999_999_999), "state": state, "step": 3, "heartbeat_at": time.time()})


def test_sigkilled_job_shows_dead_and_cleanup_removes_it(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    argv = [sys.executable, CONTROLLED_LOOP, "killed", str(tmp_path / "out")]  # a live job's process; training is not the point
    proc = procs.start(argv, env=base_env(jobs_dir), name="killed")
    wait_running(cli, jobs_dir, "killed")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    paths = JobPaths(jobs_dir, "killed")
    assert paths.endpoint.exists()  # left behind: nobody cleaned up
    j = jobs_by_id(cli)["killed"]
    assert j["state"] == "dead" and j["liveness"] == "dead", j
    r = cli("control", "stop", "killed")
    assert r.code == 5 and "dead" in r.err and "cleanup" in r.err
    r = cli("control", "cleanup", "--yes", "--json")
    assert r.code == 0, r
    assert r.json()["deleted"] == ["killed"]
    assert not paths.dir.exists()


def test_recycled_pid_is_dead(cli, jobs_dir: Path) -> None:
    unrelated_pid_job(jobs_dir, "recycled")
    j = jobs_by_id(cli)["recycled"]
    assert j["state"] == "dead", j
    assert j["pid"] == os.getpid()


def test_other_host_fresh_heartbeat_unknown_and_kept(cli, jobs_dir: Path) -> None:
    fresh = other_host_job(jobs_dir, "elsewhere")
    stale = other_host_job(jobs_dir, "elsewhere-old", heartbeat_age=3600)
    unrelated_pid_job(jobs_dir, "recycled")
    finished_job(jobs_dir, "done")
    jobs = jobs_by_id(cli, "--all")
    assert jobs["elsewhere"]["state"] == "unknown"
    assert jobs["elsewhere-old"]["state"] == "stale"
    assert local_host().hostname != "some-other-node"

    r = cli("control", "cleanup", "--dry-run", "--json")
    assert r.code == 0
    assert sorted(c["job_id"] for c in r.json()["candidates"]) == ["done", "recycled"]
    assert (jobs_dir / "done").is_dir()  # a dry run deletes nothing
    r = cli("control", "cleanup", "--dry-run")
    assert r.code == 0 and "done" in r.out and "recycled" in r.out and "elsewhere" not in r.out

    r = cli("control", "cleanup", "--yes")
    assert r.code == 0, r
    assert fresh.dir.is_dir() and fresh.endpoint.exists()
    assert stale.dir.is_dir()
    assert not (jobs_dir / "done").exists() and not (jobs_dir / "recycled").exists()
    assert set(jobs_by_id(cli, "--all")) == {"elsewhere", "elsewhere-old"}


def test_hostile_files_list_answers_and_cleanup_never_follows_links(cli, jobs_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("must survive")
    (outside / "status.json").write_text('{"state": "stopped", "step": 1}')

    finished_job(jobs_dir, "normal-done")
    keeper = other_host_job(jobs_dir, "remote-live")
    # garbage, truncated, huge records
    write_job(jobs_dir, "garbage").status.write_bytes(b"\x00\xff garbage \x80")
    write_job(jobs_dir, "truncated").status.write_text('{"state": "runn')
    huge = write_job(jobs_dir, "huge")
    with open(huge.status, "wb") as fh:
        fh.write(b'{"state": "stopped", "pad": "')
        fh.write(b"x" * (3 << 20))
        fh.write(b'"}')
    write_job(jobs_dir, "not-an-object").status.write_text("[1, 2, 3]")
    # record files that are links or folders
    linked = write_job(jobs_dir, "linked-status")
    os.symlink(outside / "status.json", linked.status)
    folder = write_job(jobs_dir, "status-is-folder")
    folder.status.mkdir()
    # a dead job whose folder holds a link to the outside folder
    dead = unrelated_pid_job(jobs_dir, "dead-with-link")
    os.symlink(outside, dead.dir / "escape")
    os.symlink(precious, dead.dir / "escape-file")
    # a job folder that is itself a symlink out of the root, and stray root files
    os.symlink(outside, jobs_dir / "symlinked-job")
    (jobs_dir / "stray-file").write_text("not a folder")
    (jobs_dir / ".tmp-status.json.123.abcd").write_text("{")
    os.symlink(tmp_path / "does-not-exist", jobs_dir / "dangling")

    r = cli("control", "list", "--all", "--json")
    assert r.code == 0, r
    jobs = {j["job_id"]: j for j in r.json()}
    assert "symlinked-job" not in jobs and "stray-file" not in jobs and "dangling" not in jobs
    assert jobs["normal-done"]["state"] == "stopped"
    assert jobs["remote-live"]["state"] == "unknown"
    assert jobs["dead-with-link"]["state"] == "dead"
    assert "Traceback" not in r.err
    assert "symlink" in r.err  # warned about, on stderr
    r = cli("control", "list")
    assert r.code == 0, r
    r = cli("control", "status", "garbage", "--json")
    assert r.code == 0, r  # an unreadable record is the job's own problem, shown: no crash
    assert r.json()["state"] == "corrupt" and "not valid JSON" in r.json()["evidence"]

    r = cli("control", "cleanup", "--yes", "--json")
    assert r.code == 0, r
    deleted = set(r.json()["deleted"])
    assert {"normal-done", "dead-with-link"} <= deleted
    assert "remote-live" not in deleted and "symlinked-job" not in deleted
    assert precious.read_text() == "must survive"
    assert (outside / "status.json").exists()
    assert os.path.islink(jobs_dir / "symlinked-job") and (jobs_dir / "symlinked-job" / "precious.txt").exists()
    assert keeper.endpoint.exists()
    assert not (jobs_dir / "dead-with-link").exists()
    assert not any(p.name.startswith(".tmp-deleting") for p in jobs_dir.iterdir())
    assert shutil.rmtree.avoids_symlink_attacks


def test_cleanup_leaves_live_jobs_alone(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    """A live job is never a candidate, through the pid check and the HTTP probe."""
    argv = [sys.executable, CONTROLLED_LOOP, "alive-1", str(tmp_path / "out")]
    proc = procs.start(argv, env=base_env(jobs_dir), name="alive")
    wait_running(cli, jobs_dir, "alive-1")
    finished_job(jobs_dir, "old-done")
    r = cli("control", "cleanup", "--yes", "--json")
    assert r.code == 0, r
    assert r.json()["deleted"] == ["old-done"]
    assert JobPaths(jobs_dir, "alive-1").endpoint.exists()
    assert read_json(JobPaths(jobs_dir, "alive-1").status)["state"] == "running"
    assert proc.popen.poll() is None


def test_other_hosts_loopback_url_is_never_contacted(cli, jobs_dir: Path) -> None:
    """A record from another host says http://127.0.0.1:PORT: that is *its* loopback. A
    stranger listening on PORT here must never get a request (nor the job's token):
    list/status/cleanup do not probe it, commands go through the file channel."""
    import http.server
    import threading

    seen: list[str] = []

    class Stranger(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"GET {self.path} {self.headers.get('Authorization')}")
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"jobs": [{"job_id": "faraway"}]}')

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stranger)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        rec = {"host": "some-other-node", "boot_id": "another-boot", "pid": 4242, "pid_start_time": 1.0}
        paths = write_job(
            jobs_dir,
            "faraway",
            endpoint={**rec, "url": f"http://127.0.0.1:{port}", "port": port, "token": "their-secret-token"},
            status={**rec, "state": "running", "step": 5, "heartbeat_at": time.time()},
        )
        assert jobs_by_id(cli)["faraway"]["state"] == "unknown"
        r = cli("control", "status", "faraway", "--json")
        assert r.code == 0 and r.json()["live"] is False, r
        r = cli("control", "save", "faraway", "--json")
        assert r.code == 0, r
        assert r.json()["source"] == "file" and len(list(paths.inbox.iterdir())) == 1
        r = cli("control", "save", "faraway", "--channel", "http")
        assert r.code == 4 and "--channel file" in r.err
        r = cli("control", "cleanup", "--yes", "--json")
        assert r.code == 0 and r.json()["deleted"] == []
        assert seen == []
    finally:
        server.shutdown()
        server.server_close()


def test_relaunch_starting_on_another_host_is_not_finished_and_cleanup_keeps_it(cli, jobs_dir: Path) -> None:
    """The same id relaunched on another host (shared jobs dir, no SLURM): its launcher
    beats, rank 0 has not written yet, and the previous run's status.json says stopped.
    That old status must not make the job look finished, or cleanup deletes a live job."""
    rec = {"host": "some-other-node", "boot_id": "another-boot", "pid_start_time": 1.0}
    paths = write_job(jobs_dir, "again", status={**rec, "pid": 4242, "state": "stopped", "step": 9, "restarts": 0, "heartbeat_at": time.time() - 3600})
    write_json_atomic(paths.job, {"job_id": "again", "state": "running", "restarts": 1, "control": True, "host": rec["host"], "started_at": time.time()})
    paths.nodes.mkdir(mode=0o700)
    write_json_atomic(paths.nodes / "0.json", {**rec, "pid": 4343, "node_rank": 0, "state": "running", "restarts": 1, "heartbeat_at": time.time()})
    j = jobs_by_id(cli)["again"]
    assert j["liveness"] == "unknown" and j["state"] == "unknown", j  # another host: alive is not ours to say
    r = cli("control", "cleanup", "--yes", "--json")
    assert r.code == 0 and r.json()["deleted"] == [], r
    assert paths.job.exists()
    # once that launcher stops beating, the job is stale (and still not "finished")
    write_json_atomic(paths.nodes / "0.json", {**rec, "pid": 4343, "node_rank": 0, "state": "running", "restarts": 1, "heartbeat_at": time.time() - 3600})
    assert jobs_by_id(cli)["again"]["liveness"] == "stale"
