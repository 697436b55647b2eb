"""A receipt never lies and a retry never duplicates, through the real CLI: a command
to a frozen rank 0 says "sent; it may still apply" with its key and exits 6, and the
same command re-sent with ``--key`` follows the first receipt to its end; Ctrl-C while a
command is being sent exits 130 and names the key."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.env import base_env
from support.paths import EXAMPLES, FORGATHER
from support.processes import Procs
from support.records import identity

from forgather_control.core import JobPaths, read_json, write_json_atomic
from forgather_control.core.errors import EXIT_FAILED, EXIT_INTERRUPTED


def _serving(paths: JobPaths, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        endpoint = read_json(paths.endpoint, quiet=True) or {}
        if endpoint.get("url"):
            return endpoint
        assert proc.poll() is None and time.monotonic() < deadline, "the job never served"
        time.sleep(0.1)


@pytest.mark.slow  # a real training process, frozen and thawed
def test_a_frozen_job_is_sent_nothing_over_http_and_its_stop_waits_in_its_inbox(cli, procs: Procs, jobs_dir: Path, tmp_path: Path) -> None:
    """A long pause (SIGSTOP): the kernel takes the connection, nobody answers the proof
    that comes before the token, so nothing was sent over HTTP (not "may still apply");
    on channel auto the stop goes to the job's inbox and applies, once, when it resumes.
    (A server that proves itself and then never answers the command is exit 6: test_retry_by_key.)"""
    argv = [sys.executable, str(EXAMPLES / "plain_loop.py"), "--job-id", "frozen", "--output-dir", str(tmp_path / "out")]
    job = procs.start(argv, env=base_env(jobs_dir), name="frozen")
    paths = JobPaths(jobs_dir, "frozen")
    _serving(paths, job.popen)
    os.kill(job.pid, signal.SIGSTOP)
    try:
        first = cli("control", "stop", "frozen", "--wait", "--timeout", "5", "--json")
        assert first.code == EXIT_FAILED, first
        assert "nothing was sent" in first.err and "inbox" in first.err and "stays queued" in first.err, first.err
        assert "may still apply" not in first.err
        command_id = re.search(r"command (c-[0-9a-f]+) is still not yet picked up", first.err).group(1)
    finally:
        os.kill(job.pid, signal.SIGCONT)
    assert job.wait(120) == 0
    stops = [c for c in read_json(paths.status)["commands"] if c["command"] == "graceful_stop"]
    assert [(c["id"], c["state"], c["source"]) for c in stops] == [(command_id, "completed", "file")]  # queued once, taken once


def test_ctrl_c_while_sending_exits_130_and_names_the_key(jobs_dir: Path, tmp_path: Path) -> None:
    """A server that takes the request and holds it: the CLI is interrupted mid-send."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    got_post = threading.Event()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            data = conn.recv(65536)
            if data.startswith(b"GET /hello"):
                from forgather_control.core.proof import proof

                nonce = data.split(b"nonce=")[1].split(b" ")[0].decode()
                body = json.dumps({"job_id": "held", "proof": proof("tok", "held", nonce), "protocol": 1}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                data = conn.recv(65536)  # the same kept-alive connection carries the command
            if data.startswith(b"POST"):
                got_post.set()  # and never answer

    threading.Thread(target=serve, daemon=True).start()
    paths = JobPaths(jobs_dir, "held").create()
    write_json_atomic(paths.endpoint, {"job_id": "held", "url": f"http://127.0.0.1:{port}", "token": "tok", **identity()})
    write_json_atomic(paths.status, {"job_id": "held", "state": "running", "step": 1, **identity()})
    p = subprocess.Popen([*FORGATHER, "control", "save", "held"], env=base_env(jobs_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert got_post.wait(60), "the command was never sent"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        listener.close()
    assert p.returncode == EXIT_INTERRUPTED, (out, err)
    assert "may have reached the job" in err and "--key k-" in err and "Traceback" not in err
