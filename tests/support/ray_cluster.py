"""A throw-away Ray cluster on this machine, for the Ray tests and benchmarks/bench_ray_list.py.

Each node is a ``ray start --block`` in a session of its own; stopping a node kills its
process tree (``forgather_control.launcher.proctree``): the only processes we may
touch. ``ray stop`` (every Ray process on the machine) is never used.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from forgather_control.core import JobPaths, write_json_atomic

from .env import base_env
from .ports import free_port
from .processes import Proc, Procs, dead_pid, describe
from .records import identity

#: Seconds for a node to start: two cores shared with other test runs.
START_TIMEOUT = 180.0


@dataclass
class RayNode:
    name: str
    proc: Proc  # ``ray start --block``, its log and its process tree
    jobs_dir: Path


@dataclass
class LocalRayCluster:
    """Ray nodes on this machine, each a ``ray start --block`` in its own session.

    Every node gets its own free ports (several Ray defaults are fixed numbers that
    would collide with other clusters on the machine) and a short private temp dir
    (so ``ray.init("auto")`` elsewhere is never pointed at us).
    """

    base: Path
    env: dict[str, str]
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fgr-", dir="/tmp")))
    nodes: list[RayNode] = field(default_factory=list)
    address: str | None = None
    procs: Procs = field(init=False)

    def __post_init__(self) -> None:
        self.procs = Procs(self.base)

    def add_node(self, name: str, jobs_dir: Path, *, extra_env: dict[str, str] | None = None) -> RayNode:
        head = self.address is None
        exe = Path(sys.executable).with_name("ray")
        ray_cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
        argv = [
            *ray_cli,
            "start",
            "--block",
            f"--node-name={name}",
            f"--temp-dir={self.temp_dir}",
            "--num-cpus=1",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        if head:
            port = free_port()
            self.address = f"127.0.0.1:{port}"
            argv += ["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}"]
        else:
            argv += [f"--address={self.address}"]
        env = {**self.env, "FORGATHER_JOBS_DIR": str(jobs_dir), **(extra_env or {})}
        proc = self.procs.start(argv, env=env, name=f"ray-{name}")
        node = RayNode(name, proc, jobs_dir)
        self.nodes.append(node)
        deadline = time.monotonic() + START_TIMEOUT
        while "Ray runtime started" not in proc.output():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                if head:
                    self.address = None
                raise RuntimeError(f"ray node {name} did not start (exit {proc.popen.poll()}):\n{proc.output()[-3000:]}")
            time.sleep(0.2)
        proc.tree.track()
        return node

    def stop_node(self, node: RayNode, sig: int = signal.SIGTERM, timeout: float = 60.0) -> list[str]:
        """SIGTERM lets ``ray start --block`` stop its own processes; then its process
        tree is killed. Returns what survived (should be nothing)."""
        popen, tree = node.proc.popen, node.proc.tree
        tree.track()
        if sig != signal.SIGKILL:
            # Only to `ray start`, not its whole tree: with every process signalled at
            # once, the head takes ~30 s instead of 2 to stop.
            try:
                popen.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        left = [describe(p) for p in tree.kill(timeout=timeout)]
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            left.append(f"{popen.pid} ray start did not die")
        return left

    def shutdown(self) -> list[str]:
        leftovers: list[str] = []
        for node in reversed(self.nodes):  # workers first, then the head
            leftovers += self.stop_node(node)
        if not leftovers:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return leftovers


def ray_env() -> dict[str, str]:
    """The environment for everything Ray here: no auth token, no address inherited
    from the caller, no jobs dir but the one we give."""
    env = base_env(RAY_AUTH_MODE="disabled")
    for k in ("RAY_ADDRESS", "FORGATHER_JOBS_DIR", "FORGATHER_RAY_LIST_DELAY"):
        env.pop(k, None)
    return env


def write_dead_job(root: Path, job_id: str) -> None:
    """Records of a job whose process has exited without cleaning up (judged dead)."""
    paths = JobPaths(root, job_id).create()
    ident = {**identity(), "pid": dead_pid(), "pid_start_time": time.time() - 100}
    write_json_atomic(
        paths.endpoint, {"job_id": job_id, "url": "http://127.0.0.1:9", "port": 9, "token": "t", "started_at": time.time() - 100, "protocol": 1, **ident}
    )
    write_json_atomic(paths.status, {"job_id": job_id, "state": "running", "step": 7, "heartbeat_at": time.time() - 50, **ident})


def write_finished_job(root: Path, job_id: str) -> None:
    """Records of a job that ran to its end."""
    paths = JobPaths(root, job_id).create()
    write_json_atomic(paths.status, {"job_id": job_id, "state": "finished", "step": 20, "max_steps": 20, "ended_at": time.time() - 10, **identity()})
