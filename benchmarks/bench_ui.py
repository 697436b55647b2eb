"""The web page and its listing over a long jobs directory (a benchmark, not a test).

Two page servers (``forgather_control.ui.UiServer`` in this process, ``max_age=0``, so
every request reads the jobs again) over two jobs directories written here: one with a
single job (the baseline) and one with ``--jobs`` jobs (default 1,000: four in five
running under this process's pid, one in five finished). Measured in the same run,
round by round so that the neighbours' load falls on both sides alike, one warm-up round
first, best of ``--repeat``:

- ``GET /api/jobs`` (what the page polls) as a whole HTTP request from this process;
- the page in Debian's Chromium (headless, driven by Playwright) from navigation start
  to the last row on screen (``document.body.dataset.jobsLoadMs``, set by jobs.js after
  its first render), "Show ended" on, so every job is a row.

Prints best and median times and the ratio of the long directory's best to the single
job's best, and exits 1 when a ratio is over its budget. The budgets stand where the
absolute ones of the tests that measured this before stood (1,000 jobs on screen, and
their listing, each under a second) on this 2-core machine, whose single job's page
takes 0.18 s and listing 5 ms: ``--page-budget`` 6 (measured 3.6-4.3x) and
``--api-budget`` 150 (measured 40-74x: the listing reads every folder, so it grows with
the directory, while the single job's request is mostly HTTP). Usage::

    python benchmarks/bench_ui.py [--jobs 1000] [--repeat 5] [--page-budget 6] [--api-budget 150]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from forgather_control.core import JobPaths
from forgather_control.core.liveness import process_identity
from forgather_control.core.records import encode
from forgather_control.ui import UiConfig, UiServer

CHROMIUM = os.environ.get("FORGATHER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def _write(path: Path, data: dict) -> None:
    """A record as rank 0 writes it (0600, replaced whole), without the fsync."""
    tmp = path.with_name(f".tmp-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def build_jobs(root: Path, n: int) -> None:
    """``n`` job folders: job ``i`` runs under this process's pid (alive) unless ``i % 5 == 4``,
    which finished an hour ago under a pid long gone."""
    me = encode(process_identity())
    now = time.time()
    for i in range(n):
        alive = i % 5 != 4
        ident = dict(me) if alive else {**me, "pid": 2**22 - 7, "pid_start_time": 1.0}
        job_id = f"sweep-{i:04d}"
        paths = JobPaths(root, job_id).create()
        state = "running" if alive else "finished"
        ago = 0.0 if alive else 3600.0
        job = {"job_id": job_id, "argv": ["train.py"], "host": ident["host"], "scheduler": {"type": "local"}, "restarts": 0}
        job.update(created_at=now - 4000, started_at=now - 4000, updated_at=now - ago, state=state)
        if not alive:
            job.update(ended_at=now - ago, exit_code=0)
        _write(paths.job, job)
        status = {**ident, "job_id": job_id, "state": state, "step": i * 10, "max_steps": 10_000, "started_at": now - 4000}
        status.update(updated_at=now - ago, heartbeat_at=now - ago, restarts=0, world_size=1, metrics={"loss": 2.0 - i / 1000}, commands=[])
        if not alive:
            status["ended_at"] = now - ago
        _write(paths.status, status)


def time_api(server: UiServer) -> float:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.config.token}"}, timeout=60) as c:
        t0 = time.perf_counter()
        r = c.get("/api/jobs")
        took = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"GET /api/jobs answered {r.status_code}: {r.text[:500]}")
    return took


def time_page(page, server: UiServer, jobs: int) -> float:
    page.goto(server.url + "/")
    page.wait_for_function(f"() => document.body.dataset.jobsShown === '{jobs}' && document.body.dataset.jobsLoadMs", timeout=60_000)
    return float(page.evaluate("document.body.dataset.jobsLoadMs")) / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--page-budget", type=float, default=6.0, help="the long directory's page over the single job's, best runs")
    ap.add_argument("--api-budget", type=float, default=150.0, help="the long directory's GET /api/jobs over the single job's, best runs")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FORGATHER_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    sizes = {"base": 1, "long": args.jobs}
    servers: dict[str, UiServer] = {}
    samples: dict[tuple[str, str], list[float]] = {(what, side): [] for what in ("api", "page") for side in sizes}
    try:
        for side, n in sizes.items():
            build_jobs(tmp / side, n)
            servers[side] = UiServer(UiConfig(jobs_dir=tmp / side, port=0, max_age=0.0))
            servers[side].start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                pages = {}
                for side, server in servers.items():
                    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
                    pages[side] = ctx.new_page()
                    pages[side].goto(server.login_url)
                    pages[side].wait_for_selector("tr[data-job]")
                    pages[side].evaluate("localStorage.setItem('forgather.ui.showEnded', '1')")
                for i in range(args.repeat + 1):
                    for side, server in servers.items():
                        api, shown = time_api(server), time_page(pages[side], server, sizes[side])
                        if i:
                            samples["api", side].append(api)
                            samples["page", side].append(shown)
            finally:
                browser.close()
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"jobs dirs: 1 job and {args.jobs} jobs (4 in 5 running, 1 in 5 finished); {args.repeat} runs each after a warm-up, interleaved")
    print(f"{'what':<52} {'median s':>9} {'best s':>7} {'best x baseline':>16}  budget")
    budgets = {"api": args.api_budget, "page": args.page_budget}
    names = {"api": "GET /api/jobs", "page": "page: navigation to the last row"}
    over = []
    for what in ("api", "page"):
        base = min(samples[what, "base"])
        for side, n in sizes.items():
            xs = samples[what, side]
            ratio = min(xs) / base
            verdict = "-" if side == "base" else f"{'ok' if ratio <= budgets[what] else 'OVER'} (<= {budgets[what]:g}x)"
            if verdict.startswith("OVER"):
                over.append(f"{names[what]}: {ratio:.1f}x the single job's, budget {budgets[what]:g}x")
            label = f"{names[what]} ({n} job{'s' if n != 1 else ''}{', baseline' if side == 'base' else ''})"
            print(f"{label:<52} {statistics.median(xs):>9.3f} {min(xs):>7.3f} {ratio:>16.2f}  {verdict}")
    if over:
        print(f"FAIL: {'; '.join(over)}")
        return 1
    print(f"PASS: {args.jobs} jobs within {args.page_budget:g}x the single job's page and {args.api_budget:g}x its listing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
