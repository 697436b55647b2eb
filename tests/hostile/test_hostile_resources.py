"""Rank 0 under a flood of connections, with the common limit of 1,024 open files: 1,100
idle connections and 100 half-sent requests. The heartbeat and the file channel go on,
the process never runs out of descriptors, the log gets one line about it (not a
traceback per accept), and HTTP answers again once the flood's deadline has passed."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgather_control.core import JobPaths, read_json, write_json_atomic

REPO = Path(__file__).resolve().parents[2]
LIMIT = 1024
IDLE, HALF = 1100, 100

pytestmark = pytest.mark.slow


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _health(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def test_a_flood_of_connections_leaves_the_control_plane_working(tmp_path: Path, wait_for) -> None:
    jobs = tmp_path / "jobs"
    env = {**os.environ, "FORGATHER_JOBS_DIR": str(jobs), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, str(REPO / "examples/trainer_control/plain_loop.py"), "--job-id", "flooded", "--output-dir", str(tmp_path / "out")]
    log = (tmp_path / "job.log").open("wb")
    job = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_limit_files, start_new_session=True)
    held: list[socket.socket] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))  # the attacker has room
    try:
        paths = JobPaths(jobs, "flooded")

        def served() -> dict | None:
            endpoint = read_json(paths.endpoint, quiet=True) or {}
            return endpoint if endpoint.get("url") else None

        endpoint = wait_for(served, timeout=120, what="the job to serve")
        host, port = endpoint["url"].removeprefix("http://").rsplit(":", 1)
        port = int(port)
        for i in range(IDLE + HALF):
            try:
                s = socket.create_connection((host, port), timeout=1)
            except OSError:
                continue  # refused or reset: the cap at work
            if i >= IDLE:
                s.sendall(b"POST /jobs/flooded/control HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n")  # never finished
            held.append(s)
        assert len(held) > 100  # the flood really arrived
        assert _fds(job.pid) < LIMIT - 64, "rank 0 ran out of descriptors"
        # the heartbeat goes on ...
        first = read_json(paths.status)["heartbeat_at"]
        wait_for(lambda: (read_json(paths.status, quiet=True) or {}).get("heartbeat_at", 0) > first + 2, timeout=30, what="the heartbeat")
        # ... and so does the file channel
        write_json_atomic(paths.inbox / f"{time.time_ns()}-c-flood.json", {"id": "c-flood", "command": "evaluate", "key": "k-flood"})

        def receipt() -> dict | None:
            for entry in (read_json(paths.status, quiet=True) or {}).get("commands", []):
                if entry.get("id") == "c-flood" and entry.get("state") == "completed":
                    return entry
            return None

        assert wait_for(receipt, timeout=60, what="the file command's receipt")["result"]["metrics"]
        assert _fds(job.pid) < LIMIT - 64
        # once the flood's requests miss their deadline, HTTP answers a newcomer again
        wait_for(lambda: _health(host, port), timeout=60, interval=0.5, what="HTTP to answer again")
    finally:
        for s in held:
            s.close()
        job.kill()
        job.wait(30)
        log.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    text = (tmp_path / "job.log").read_text(errors="replace")
    assert text.count("Traceback") == 0, text[-3000:]
    assert text.count("cannot accept connections") <= 2, text[-3000:]
    assert len(text) < 200_000
    assert json.loads(json.dumps(read_json(paths.status)))["state"] in ("running", "stopping")
