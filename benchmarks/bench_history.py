"""The page's metric history request over a hostile metrics.json (a benchmark, not a test).

One job folder whose metrics.json holds ``--series`` series of ``--points`` points (default
4 of 100,000: 14 MB, written by another writer than rank 0's, which keeps 4,096), served by
a page server (``forgather_control.ui.UiServer``) in this process. Measured in the same
run, in CPU seconds of this process (``time.process_time``: the server's threads and the
client's), round by round, one warm-up round first, best of ``--repeat``:

- the baseline: ``read_history`` of the file, the read no answer can avoid;
- ``GET /api/jobs/<id>/metrics``, the page's first request (the whole history's view);
- ``GET /api/jobs/<id>/metrics?since=<last step - 1>``, the page's poll after it.

Prints best and median CPU seconds, the answer's size and its ratio to the baseline, and
exits 1 when a request's best is over ``--budget`` times the baseline's (default 2; the
answer, at most ``VIEW_POINTS`` points a series, costs little beside the read). Before
the view, the whole history was the answer: 3-4x the read, 14 MB to the page every 2 s.
Usage::

    python benchmarks/bench_history.py [--points 100000] [--series 4] [--repeat 5] [--budget 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from forgather_control.core import JobPaths
from forgather_control.core.metrics import FILENAME, read_history
from forgather_control.ui import UiConfig, UiServer


def write_history(paths: JobPaths, series: int, points: int) -> int:
    """metrics.json of ``series`` noisy falling curves of ``points`` points; its size."""
    rng = random.Random(0)
    t0 = time.time() - points
    data = {}
    for k in range(series):
        steps = list(range(1, points + 1))
        values = [round(0.3 + 2.0 * math.exp(-4.0 * s / points) + rng.gauss(0, 0.04), 6) for s in steps]
        data[f"metric_{k}" if k else "loss"] = {"step": steps, "time": [t0 + s for s in steps], "value": values}
    path = paths.dir / FILENAME
    path.write_text(json.dumps({"version": 1, "job_id": paths.job_id, "series": data}))
    os.chmod(path, 0o600)
    return path.stat().st_size


def cpu(call: Callable[[], int]) -> tuple[float, int]:
    """The process's CPU seconds for ``call()``, and what it returned (a size)."""
    t0 = time.process_time()
    size = call()
    return time.process_time() - t0, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--series", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--budget", type=float, default=2.0, help="a request's best CPU over the read's best")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-history-"))
    paths = JobPaths(tmp, "huge").create()
    file_size = write_history(paths, args.series, args.points)
    server = UiServer(UiConfig(jobs_dir=tmp, port=0))
    server.start()
    names = {"read": "read_history (baseline)", "whole": "GET .../metrics (the whole view)", "since": f"GET .../metrics?since={args.points - 1}"}
    samples: dict[str, list[float]] = {k: [] for k in names}
    sizes: dict[str, int] = {}
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.config.token}"}, timeout=120) as c:

            def get(query: str) -> int:
                r = c.get("/api/jobs/huge/metrics" + query)
                if r.status_code != 200:
                    raise SystemExit(f"GET metrics{query} answered {r.status_code}: {r.text[:500]}")
                r.json()
                return len(r.content)

            calls = {"read": lambda: len(read_history(paths).series), "whole": lambda: get(""), "since": lambda: get(f"?since={args.points - 1}")}
            for i in range(args.repeat + 1):
                for what, call in calls.items():
                    took, size = cpu(call)
                    sizes[what] = size
                    if i:
                        samples[what].append(took)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"metrics.json: {args.series} series of {args.points:,} points, {file_size:,} bytes; {args.repeat} runs each after a warm-up, interleaved")
    print(f"{'what':<40} {'median cpu s':>12} {'best cpu s':>10} {'answer bytes':>13} {'best x baseline':>16}  budget")
    base = min(samples["read"])
    over = []
    for what, label in names.items():
        xs = samples[what]
        ratio = min(xs) / base
        verdict = "-" if what == "read" else f"{'ok' if ratio <= args.budget else 'OVER'} (<= {args.budget:g}x)"
        if verdict.startswith("OVER"):
            over.append(f"{label}: {ratio:.2f}x the read's CPU, budget {args.budget:g}x")
        answer = "-" if what == "read" else f"{sizes[what]:,}"
        print(f"{label:<40} {statistics.median(xs):>12.3f} {min(xs):>10.3f} {answer:>13} {ratio:>16.2f}  {verdict}")
    if over:
        print(f"FAIL: {'; '.join(over)}")
        return 1
    print(f"PASS: each request within {args.budget:g}x the CPU of reading the file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
