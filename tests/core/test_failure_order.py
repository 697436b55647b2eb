"""Which rank's failure came first: decided without trusting writers' clocks across
hosts (each failure file's time on the storage's one clock; one host's own clock only
among its own ranks), and a record that gives no time never comes first."""

from __future__ import annotations

import os
from pathlib import Path

from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.failures import read_failures, root_cause
from forgather_control.core.records import FailureRecord, encode

T = 1_800_000_000.0


def failure(paths: JobPaths, *, rank: int, host: str, at: float | None, written: float, kind: str = "RuntimeError") -> None:
    """Rank ``rank``'s failure, timed ``at`` by its writer's clock, written at ``written``
    by the storage's clock (the file's mtime)."""
    path = paths.failures / f"run-0-rank-{rank}.json"
    paths.failures.mkdir(parents=True, exist_ok=True)
    rec = FailureRecord(rank=rank, run=0, host=host, pid=100 + rank, type=kind, message=f"rank {rank}", traceback=[], at=at)
    write_json_atomic(path, encode(rec))
    ns = int(written * 1e9)
    os.utime(path, ns=(ns, ns))


def test_a_writer_whose_clock_is_five_seconds_ahead_does_not_make_the_consequence_the_root_cause(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "skewed").create(mark=False)
    failure(paths, rank=3, host="node-b", at=T + 5.0, written=T, kind="ValueError")  # the cause; node-b's clock is 5 s ahead
    failure(paths, rank=0, host="node-a", at=T + 1.0, written=T + 1.0)  # the consequence, a second later
    assert [f.rank for f in read_failures(paths)] == [3, 0]
    cause = root_cause(paths)
    assert cause is not None and cause.type == "ValueError"


def test_a_failure_without_a_time_never_wins_over_one_with_a_time(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "untimed").create(mark=False)
    failure(paths, rank=1, host="node-a", at=None, written=T - 100)
    failure(paths, rank=2, host="node-a", at=T, written=T)
    assert [f.rank for f in read_failures(paths)] == [2, 1]
    cause = root_cause(paths)
    assert cause is not None and cause.rank == 2


def test_in_a_tie_of_the_storage_clock_one_host_orders_its_own_ranks_by_its_own_clock(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "tied").create(mark=False)
    failure(paths, rank=0, host="node-a", at=T + 0.3, written=T)
    failure(paths, rank=1, host="node-a", at=T + 0.1, written=T)
    assert [f.rank for f in read_failures(paths)] == [1, 0]
