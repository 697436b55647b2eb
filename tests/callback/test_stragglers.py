"""Issue 21, stragglers: on a real two-rank DDP job (gloo on CPU), the rank that sleeps
half as long again each step is named, by its own time per step, though DDP makes both
ranks' steps equally long. Equal ranks are named by nobody. The comparison itself
(StragglerWatch) is tests/core/test_guards.py; this is what measures and carries it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from support.launcher import launch
from support.paths import EXAMPLES
from support.torchrun import TIMEOUT, command, torchrun, wait_client, wait_step
from support.waiting import wait_for

from forgather_control.core.outcome import EXIT_STOPPED
from forgather_control.core.records import Status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # real torchrun jobs on 2 cores shared with other test runs


def event_step(status: Status) -> int | None:
    return next((e.step for e in status.guard_events or [] if e.kind == "straggler"), None)


def _named(status: Status) -> Status | None:
    return status if status.stragglers else None


def test_a_rank_half_again_as_slow_is_named_with_its_factor_in_status(jobs_dir: Path, procs, tmp_path: Path, cli) -> None:
    """Under ``forgather launch``: named within a minute (the guard's 5 s here), with its
    factor, in status.json, the guard events, and ``status --json`` with each rank's host."""
    args = ("--output-dir", str(tmp_path / "out"), "--step-time", "0.03", "--slow-rank", "1", "--slow-factor", "1.5", "--max-steps", "100000")
    job = launch(
        procs,
        jobs_dir,
        "slow-1",
        EXAMPLES / "plain_loop.py",
        *args,
        opts=("--nproc-per-node", "2"),
        FORGATHER_GUARDS="straggler:alert,for=5",
        FORGATHER_CHECK_INTERVAL="0.5",
    )
    client = wait_client(jobs_dir, "slow-1", job)
    started = time.monotonic()
    wait_step(client, 3)
    status = wait_for(lambda: _named(client.status()), timeout=TIMEOUT, interval=0.5, what="a straggler to be named")
    took = time.monotonic() - started
    assert took < 60, f"named after {took:.0f} s"
    [straggler] = status.stragglers or []
    assert straggler.rank == 1 and straggler.factor >= 1.25 and straggler.node == 0 and straggler.step == event_step(status)
    table = {r.rank: r for r in status.ranks or []}
    assert set(table) == {0, 1} and table[1].ratio is not None and table[1].ratio >= 1.25 and (table[0].ratio or 0) < 1
    assert (table[1].seconds or 0) > (table[0].seconds or 0) > 0
    [event] = [e for e in status.guard_events or [] if e.kind == "straggler"]
    assert event.rank == 1 and event.action == "alert" and event.guard.startswith("straggler:alert") and "rank 1 (node 0)" in (event.evidence or "")

    r = cli("control", "status", "slow-1", "--json")
    assert r.code == 0, r
    shown = r.json()
    assert [(x["rank"], x["node"], x["host"]) for x in shown["ranks"]] == [(0, 0, socket.gethostname()), (1, 0, socket.gethostname())]
    assert [s["rank"] for s in shown["stragglers"]] == [1]
    r = cli("control", "status", "slow-1")
    assert r.code == 0 and "stragglers  rank 1 (node 0)" in r.out and "the median of the others" in r.out, r.out
    rows = [line.strip("│ ").split() for line in r.out.splitlines()]
    assert [row[1:3] + row[-1:] for row in rows if row[:1] == ["1"]] == [[socket.gethostname(), "0", "straggler"]], r.out

    assert command(client, "stop").state == "completed"
    assert job.wait(TIMEOUT) == EXIT_STOPPED, job.output()[-3000:]


def test_equal_ranks_are_named_by_nobody(jobs_dir: Path, procs, tmp_path: Path) -> None:
    job = torchrun(
        procs,
        "plain_loop.py",
        *("--job-id", "even-1", "--output-dir", str(tmp_path / "out"), "--step-time", "0.02", "--max-steps", "100000"),
        jobs_dir=jobs_dir,
        env={"FORGATHER_GUARDS": "straggler:alert,for=3", "FORGATHER_CHECK_INTERVAL": "0.5"},
    )
    client = wait_client(jobs_dir, "even-1", job)
    wait_step(client, 3)
    # eight seconds of checks: well past the guard's 3 s, judged by the job's own record
    first = client.status()
    status = wait_for(
        lambda: (lambda s: s if (s.updated_at or 0) - (first.updated_at or 0) >= 8 and s.ranks else None)(client.status()),
        timeout=TIMEOUT,
        interval=0.5,
        what="eight seconds of checks",
    )
    assert not status.stragglers and not [e for e in status.guard_events or [] if e.kind == "straggler"]
    assert all(r.ratio is not None and r.ratio < 1.25 for r in status.ranks or []), status.ranks
    assert command(client, "stop").state == "completed"
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
