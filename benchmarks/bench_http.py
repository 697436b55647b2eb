"""Rank 0's HTTP path, layer by layer (a benchmark, not a test).

Three servers in this process, each in its own thread, measured in the same run, round by
round (so the machine's load falls on all alike), one warm-up round first:

- ``ours``: the job's control API (``callback.server.create_app``) as rank 0 serves it
  (``serving.ServerThread`` hosted in a control loop, ``core.rankloop``, beside a
  once-a-second timer as rank 0's I/O round: uvicorn, the guarded protocol), with a token
  and a status record the size of a real one;
- ``bare``: a bare ASGI app on the same ``ServerThread`` (same protocol, same guard),
  answering every path with a fixed JSON body: what the protocol and uvicorn cost alone;
- ``reference``: an aiohttp app with the same two routes, as the Forgather framework's own
  control callback serves them (``forgather.ml.trainer.callbacks.control_callback``).

Each answers ``GET /health`` and ``GET /jobs/ID/status`` (with the bearer token), over a
kept-alive connection and over a new connection per request; ours also a command's
receipt (``GET /jobs/ID/commands/CID``: a request through its router, which the guard
does not answer itself; the reference has no such route). Prints the median time a
request takes (microseconds; the best round shown) and ``ours / reference``: the median
of the rounds' ratios, each round measuring both back to back; exits 1 when ours is over
``--budget`` times the reference on a kept-alive connection. Usage::

    python benchmarks/bench_http.py [--requests 2000] [--rounds 7] [--budget 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import threading
import time
from typing import Any

from forgather_control.callback.server import Followed, create_app
from forgather_control.core import Ledger, parse_command
from forgather_control.core.liveness import process_identity
from forgather_control.core.rankloop import ControlLoop
from forgather_control.core.records import Receipt, Status
from forgather_control.core.states import JobState
from forgather_control.serving.thread import ServerThread

JOB = "bench-http"
TOKEN = "t" * 43


def _status() -> Status:
    me = process_identity()
    receipts = [
        Receipt(
            id=f"c-{i:012x}",
            command="save_checkpoint",
            state="completed",
            key=f"k-{i:016x}",
            source="http",
            seq=i,
            created_at=1e9,
            updated_at=1e9,
            step=100 * i,
        )
        for i in range(20)
    ]
    return Status(
        host=me.host,
        boot_id=me.boot_id,
        pid=me.pid,
        pid_start_time=me.pid_start_time,
        job_id=JOB,
        state=JobState.RUNNING,
        step=12345,
        max_steps=100000,
        metrics={"loss": 0.1234, "learning_rate": 1e-4, "grad_norm": 1.5, "epoch": 1.2},
        steps_per_second=12.5,
        eta_seconds=7000.0,
        world_size=8,
        commands=receipts,
        pending_commands=0,
        started_at=1e9,
        updated_at=1e9,
        check_interval=1.0,
    )


def _bare_app() -> Any:
    body = json.dumps({"ok": True, "protocol": 1}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class _Reference:
    """The framework callback's server: aiohttp, the same routes, JSON answers."""

    def __init__(self, status: Status) -> None:
        from aiohttp import web

        from forgather_control.core.records import encode

        async def health(request: Any) -> Any:
            return web.json_response({"ok": True, "protocol": 1})

        async def job_status(request: Any) -> Any:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response({"detail": "token"}, status=401)
            return web.json_response(encode(status))

        self.app = web.Application()
        self.app.router.add_get("/health", health)
        self.app.router.add_get(f"/jobs/{JOB}/status", job_status)
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            runner = web.AppRunner(self.app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()


def _time(port: int, path: str, n: int, *, keep_alive: bool) -> float:
    """Median microseconds of ``n`` GETs of ``path``."""
    headers = {"Host": "127.0.0.1", "Authorization": f"Bearer {TOKEN}"}
    times = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(n):
        if not keep_alive:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        t = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        times.append(time.perf_counter() - t)
        assert resp.status == 200, (port, path, resp.status)
        if not keep_alive:
            conn.close()
    conn.close()
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests per measure per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--budget", type=float, default=1.0, help="ours / reference on a kept-alive connection, at most")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    status = _status()
    ledger = Ledger()
    receipt, _ = ledger.submit(parse_command("evaluate"), key="bench", source="http")
    control = ControlLoop("bench-control")  # as rank 0: the server in its control thread, beside its I/O round
    round_task = control.every(1.0, lambda: None, name="the I/O round")
    ours = ServerThread(create_app(job_id=JOB, ledger=ledger, status=lambda: status, token=TOKEN, followed=Followed()), loop=control)
    bare = ServerThread(_bare_app())
    ports = {"ours": ours.start(), "bare": bare.start()}
    try:
        ports["reference"] = _Reference(status).port
    except ImportError:
        print("aiohttp is not installed: no reference server", file=sys.stderr)
    routes = {"health": "/health", "status": f"/jobs/{JOB}/status", "receipt": f"/jobs/{JOB}/commands/{receipt.id}"}
    results: dict[str, list[float]] = {}
    for r in range(args.rounds + 1):
        # each measure on every server back to back, in an order that turns round by round
        # (a drift in the machine's load then falls on each server alike)
        servers = list(ports.items())
        servers = servers[r % len(servers) :] + servers[: r % len(servers)]
        for route, path in routes.items():
            for keep in (True, False):
                for server, port in servers:
                    if server == "bare" and route != "health":
                        continue  # one fixed body: the same as its /health
                    if server == "reference" and route == "receipt":
                        continue  # no such route
                    n = args.requests if keep else max(50, args.requests // 10)
                    us = _time(port, path, n, keep_alive=keep)
                    if r:  # round 0 warms up
                        results.setdefault(f"{server} {route} {'kept-alive' if keep else 'new connection'}", []).append(us)
    best = {k: min(v) for k, v in results.items()}
    failed = []
    rows = []
    for key, us in best.items():
        server, route, how = key.split(" ", 2)
        ref = results.get(f"reference {route} {how}")
        # each round's ratio (ours and the reference measured back to back), then their
        # median: the machine's load moves both alike within a round, not across rounds
        ratio = statistics.median(o / r for o, r in zip(results[key], ref, strict=True)) if ref and server == "ours" else None
        rows.append({"measure": key, "median_us_best_round": round(us, 1), "ours_over_reference": round(ratio, 2) if ratio else None})
        if ratio is not None and how == "kept-alive" and ratio > args.budget:
            failed.append(f"{key}: {ratio:.2f}x the reference (budget {args.budget}x)")
    if args.json:
        print(json.dumps({"rows": rows, "failed": failed}, indent=1))
    else:
        for row in rows:
            ratio = f"  {row['ours_over_reference']:.2f}x the reference" if row["ours_over_reference"] else ""
            print(f"{row['measure']:<36} {row['median_us_best_round']:>8.1f} us{ratio}")
        print("FAIL: " + "; ".join(failed) if failed else "PASS")
    ours.stop()
    round_task.cancel()
    bare.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
