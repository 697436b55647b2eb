"""Rank 0 under a flood of connections, against itself quiet, in the same run.

A plain training loop (examples/trainer_control/plain_loop.py) runs with the common limit
of 1,024 open files. First quiet, then while this script holds N idle connections and M
half-sent requests open against its control server (re-opening what the server drops).
Reported, each as a ratio to the quiet phase: the step rate, the heartbeat's age
(status.json, written off the training thread), the file channel's round trip (a
command dropped in the inbox until its receipt completes), and rank 0's open files.

Budgets: the step rate keeps at least 80% of quiet; the heartbeat stays under 3x its
interval; the file channel answers; rank 0 stays under half its descriptor limit.

    python benchmarks/bench_resources.py [--idle 1100] [--half 100] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from forgather_control.core import JobPaths, read_json, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1024
HEARTBEAT_INTERVAL = 2.0


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


class Probe:
    """Samples the job's step rate, heartbeat age and open files from its records."""

    def __init__(self, paths: JobPaths, pid: int) -> None:
        self.paths, self.pid = paths, pid

    def measure(self, seconds: float) -> dict[str, float]:
        first = read_json(self.paths.status) or {}
        t0, ages, fds = time.time(), [], []
        while time.time() - t0 < seconds:
            st = read_json(self.paths.status, quiet=True) or {}
            if isinstance(st.get("heartbeat_at"), (int, float)):
                ages.append(time.time() - st["heartbeat_at"])
            fds.append(len(os.listdir(f"/proc/{self.pid}/fd")))
            time.sleep(0.25)
        last = read_json(self.paths.status) or {}
        dt = (last.get("updated_at") or time.time()) - (first.get("updated_at") or t0)
        rate = (last.get("step", 0) - first.get("step", 0)) / dt if dt > 0 else 0.0
        return {"rate": rate, "age": max(ages) if ages else float("inf"), "fds": max(fds), "inbox": self.file_round_trip()}

    def file_round_trip(self, timeout: float = 60.0) -> float:
        cid = f"c-bench{time.time_ns() % 10**9}"
        t = time.monotonic()
        write_json_atomic(self.paths.inbox / f"{time.time_ns()}-{cid}.json", {"id": cid, "command": "evaluate", "key": cid})
        while time.monotonic() - t < timeout:
            for entry in (read_json(self.paths.status, quiet=True) or {}).get("commands", []):
                if entry.get("id") == cid and entry.get("state") in ("completed", "failed", "rejected"):
                    return time.monotonic() - t
            time.sleep(0.05)
        return float("inf")


class Flood:
    """Holds ``idle`` silent connections and ``half`` half-sent requests open, and
    reopens what the server drops, until stopped."""

    def __init__(self, host: str, port: int, idle: int, half: int) -> None:
        self.host, self.port, self.idle, self.half = host, port, idle, half
        self.open: list[socket.socket] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for s in self.open:
            s.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.open = [s for s in self.open if _alive(s)]
            for _ in range(self.idle + self.half - len(self.open)):
                if self._stop.is_set():
                    break
                try:
                    s = socket.create_connection((self.host, self.port), timeout=0.5)
                    if len(self.open) >= self.idle:
                        s.sendall(b"POST /jobs/x/control HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n")
                    self.open.append(s)
                except OSError:
                    self.refused += 1
            self._stop.wait(0.5)


def _alive(s: socket.socket) -> bool:
    try:
        s.setblocking(False)
        data = s.recv(1, socket.MSG_PEEK)
        s.setblocking(True)
        if data == b"":
            s.close()
            return False
        return True
    except BlockingIOError:
        s.setblocking(True)
        return True
    except OSError:
        s.close()
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=int, default=1100)
    p.add_argument("--half", type=int, default=100)
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    with tempfile.TemporaryDirectory() as d:
        jobs = Path(d) / "jobs"
        env = {**os.environ, "FORGATHER_JOBS_DIR": str(jobs), "OMP_NUM_THREADS": "1"}
        argv_ = [sys.executable, str(REPO / "examples/trainer_control/plain_loop.py"), "--job-id", "bench", "--output-dir", f"{d}/out", "--step-time", "0.002"]
        job = subprocess.Popen(argv_, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_limit, start_new_session=True)
        try:
            paths = JobPaths(jobs, "bench")
            while not (read_json(paths.endpoint, quiet=True) or {}).get("url"):
                if job.poll() is not None:
                    print("the job died before serving")
                    return 2
                time.sleep(0.1)
            host, port = read_json(paths.endpoint)["url"].removeprefix("http://").rsplit(":", 1)
            probe = Probe(paths, job.pid)
            probe.measure(3.0)  # warm up
            quiet = probe.measure(args.seconds)
            with Flood(host, int(port), args.idle, args.half) as flood:
                time.sleep(2.0)  # let it fill
                flooded = probe.measure(args.seconds)
                held = len(flood.open)
        finally:
            job.kill()
            job.wait(30)
    rows = [
        ("steps per second", quiet["rate"], flooded["rate"], flooded["rate"] / quiet["rate"] if quiet["rate"] else 0.0),
        ("heartbeat age, max s", quiet["age"], flooded["age"], flooded["age"] / max(quiet["age"], 1e-9)),
        ("file channel round trip s", quiet["inbox"], flooded["inbox"], flooded["inbox"] / max(quiet["inbox"], 1e-9)),
        ("rank 0 open files, max", quiet["fds"], flooded["fds"], flooded["fds"] / max(quiet["fds"], 1)),
    ]
    print(f"flood: {args.idle} idle + {args.half} half-sent connections asked, {held} held open at the end; rank 0 limit {LIMIT} files")
    print(f"{'measure':<30}{'quiet':>12}{'flooded':>12}{'ratio':>10}")
    for name, q, f, r in rows:
        print(f"{name:<30}{q:>12.3f}{f:>12.3f}{r:>9.2f}x")
    ok = rows[0][3] >= 0.8 and flooded["age"] < 3 * HEARTBEAT_INTERVAL and flooded["inbox"] < 30 and flooded["fds"] < 0.5 * LIMIT
    print(json.dumps({"quiet": quiet, "flooded": flooded, "held": held}))
    print("PASS" if ok else "FAIL: over budget")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
