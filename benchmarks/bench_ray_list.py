"""Wall time of ``forgather control list --ray`` against the plain local ``list``
(a benchmark, not a test; issue 5).

Starts its own two-node Ray cluster on this machine (``ray start --block`` per node,
each with its own FORGATHER_JOBS_DIR, the same helper the tests use; never
``ray stop``), puts ``--jobs`` records per node in it (mostly finished, some dead) plus
one live plain-loop job per node, and times in the same run, as whole subprocesses the
way a user runs them:

- ``forgather control list --json``: the local listing of one node's directory;
- ``forgather control list --ray-address ADDRESS --json``: both nodes through Ray, merged;
- the same two through the Python API in this process (``scan`` vs ``list_cluster``),
  which leaves out the interpreter's start-up.

Prints a small table of medians and the ratio to the local ``list``. Usage::

    RAY_AUTH_MODE=disabled python benchmarks/bench_ray_list.py [--jobs 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.env import base_env  # noqa: E402
from support.paths import EXAMPLES, FORGATHER  # noqa: E402
from support.processes import Procs  # noqa: E402
from support.ray_cluster import LocalRayCluster, ray_env, write_dead_job, write_finished_job  # noqa: E402
from support.waiting import wait_for  # noqa: E402

from forgather_control.client import scan  # noqa: E402
from forgather_control.core import JobPaths, read_json  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_cli(args: list[str], env: dict[str, str]) -> None:
    p = subprocess.run([*FORGATHER, *args], env=env, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise SystemExit(f"forgather {' '.join(args)} failed ({p.returncode}): {p.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="job records per node (default 200)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement (default 5)")
    args = ap.parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)

    base = Path(tempfile.mkdtemp(prefix="bench-ray-list-"))
    dirs = {"fg-a": base / "jobs-a", "fg-b": base / "jobs-b"}
    cluster = LocalRayCluster(base, ray_env())
    procs = Procs(base)
    try:
        for name, d in dirs.items():
            for i in range(args.jobs):
                (write_finished_job if i % 5 else write_dead_job)(d, f"{name}-{i:05d}")
            procs.start(
                [sys.executable, str(EXAMPLES / "plain_loop.py"), "--job-id", f"{name}-live", "--step-time", "0.05", "--output-dir", str(base / f"out-{name}")],
                env=base_env(d),
                name=f"plain-{name}",
            )
        t0 = time.perf_counter()
        for name, d in dirs.items():
            cluster.add_node(name, d)
        print(f"two-node Ray cluster up in {time.perf_counter() - t0:.1f}s at {cluster.address}", file=sys.stderr)
        for name, d in dirs.items():
            paths = JobPaths(d, f"{name}-live")
            wait_for(lambda paths=paths: (read_json(paths.status, quiet=True) or {}).get("state") == "running", timeout=180, what=f"{name}-live running")

        env = {**base_env(dirs["fg-a"]), "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        os.environ["FORGATHER_JOBS_DIR"] = str(dirs["fg-a"])
        from forgather_control.client.ray_listing import list_cluster

        # Warm up once each (page cache, Ray's first worker per node).
        run_cli(["control", "list", "--json"], env)
        res = list_cluster(address=cluster.address, jobs_dir=None, timeout=60)
        assert not res.missing_nodes and len(res.jobs) == 2 + 2 * (args.jobs // 5), (len(res.jobs), res.missing_nodes)

        rows = [
            ("forgather control list --json", timed(lambda: run_cli(["control", "list", "--json"], env), args.repeat)),
            (
                "forgather control list --ray-address ADDR --json",
                timed(lambda: run_cli(["control", "list", "--ray-address", str(cluster.address), "--json"], env), args.repeat),
            ),
            ("API: scan(jobs dir)", timed(lambda: scan(dirs["fg-a"]), args.repeat)),
            ("API: list_cluster(address)", timed(lambda: list_cluster(address=cluster.address, jobs_dir=None, timeout=60), args.repeat)),
        ]
    finally:
        left = procs.cleanup() + cluster.shutdown()
        if left:
            print(f"WARNING: processes left behind: {left}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\n{args.jobs} records + 1 live job per node, 2 nodes; median of {args.repeat} runs\n")
    print("| what | median s | min s | ratio |")
    print("|---|---:|---:|---:|")
    for i, (what, times) in enumerate(rows):
        ref = statistics.median(rows[i - i % 2][1])  # CLI vs CLI, API vs API
        med = statistics.median(times)
        print(f"| {what} | {med:.3f} | {min(times):.3f} | {med / ref:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
