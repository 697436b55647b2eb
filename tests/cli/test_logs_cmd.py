"""Issue 23: ``forgather control logs`` on a job folder's logs (written as the launcher
writes them, ``core/logs.RankLog``): each line after its rank, one rank, a tail of N,
hostile lines printed clean, a rotated log read whole-tail, and the refusals."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.cli import run_cli_here
from support.records import identity

from forgather_control.client.logs import log_ranks, read_rank
from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.logs import RankLog

HOSTILE = "\x1b[2J\x1b]0;pwned\x07"


def make_job(jobs_dir: Path, job_id: str, texts: dict[int, str], *, max_bytes: int = 1 << 20) -> JobPaths:
    paths = JobPaths(jobs_dir, job_id).create()
    write_json_atomic(paths.job, {"job_id": job_id, "state": "finished", "exit_code": 0, "ended_at": time.time(), **identity()})
    (paths.dir / "logs").mkdir(mode=0o700)
    fd = os.open(paths.dir / "logs", os.O_RDONLY)
    try:
        for rank, text in texts.items():
            w = RankLog(fd, rank, max_bytes=max_bytes, host="node-a", node=0, run=0)
            w.write(text.encode())
            w.close()
    finally:
        os.close(fd)
    return paths


def logs(jobs_dir: Path, *args: str):
    return run_cli_here("control", "logs", *args, "--jobs-dir", str(jobs_dir))


def test_every_rank_one_rank_and_a_tail(jobs_dir: Path) -> None:
    make_job(jobs_dir, "two-ranks", {0: "a0\nb0\nc0\nd0\n", 1: f"a1\nb1\n{HOSTILE} hostile\nd1\nno end yet"})
    res = logs(jobs_dir, "two")  # a prefix
    assert res.code == 0, res.err
    assert res.out.splitlines() == [
        *(f"[rank0]: {x}0" for x in "abcd"),
        "[rank1]: a1",
        "[rank1]: b1",
        "[rank1]: \\x1b[2J\\x1b]0;pwned\\x07 hostile",
        "[rank1]: d1",
        "[rank1]: no end yet",
    ]
    assert "\x1b" not in res.out and "\x07" not in res.out
    res = logs(jobs_dir, "two-ranks", "--rank", "1", "--tail", "3")
    assert (res.code, res.out.splitlines()) == (0, ["[rank1]: \\x1b[2J\\x1b]0;pwned\\x07 hostile", "[rank1]: d1", "[rank1]: no end yet"])
    # -f on a job that has ended: its tail and the rest, then it returns by itself
    res = logs(jobs_dir, "two-ranks", "-f", "--tail", "1")
    assert (res.code, res.out.splitlines()) == (0, ["[rank0]: d0", "[rank1]: d1", "[rank1]: no end yet"])


def test_a_rotated_log_is_read_whole_tail(jobs_dir: Path) -> None:
    text = "".join(f"line {i:04d}\n" for i in range(20_000))  # 200 kB through a 64 KiB bound
    paths = make_job(jobs_dir, "rotated", {0: text}, max_bytes=64 << 10)
    assert sorted(os.listdir(paths.dir / "logs")) == ["rank-0.json", "rank-0.log", "rank-0.log.1"]
    current = (paths.dir / "logs" / "rank-0.log").read_text().count("\n")
    res = logs(jobs_dir, "rotated", "--tail", str(current + 3))
    assert res.out.splitlines() == [f"[rank0]: line {i:04d}" for i in range(20_000 - current - 3, 20_000)]
    # the page's poll: ranks, a tail, then what came after its offset
    assert log_ranks(jobs_dir, "rotated") == [0]
    tail = read_rank(jobs_dir, "rotated", 0, lines=2)
    assert tail.lines == ["line 19998", "line 19999"]
    assert read_rank(jobs_dir, "rotated", 0, after=tail.offset).lines == []
    assert read_rank(jobs_dir, "rotated", 0, after=tail.offset - 11).lines == ["line 19999"]


def test_refusals(jobs_dir: Path) -> None:
    make_job(jobs_dir, "has-logs", {0: "x\n"})
    JobPaths(jobs_dir, "no-logs").create()
    res = logs(jobs_dir, "has-logs", "--rank", "3")
    assert (res.code, res.err.strip()) == (1, "error: job has-logs has no log of rank 3; rank(s) 0 have one")
    res = logs(jobs_dir, "no-logs")
    assert res.code == 1 and "has no logs" in res.err and "forgather launch" in res.err
    assert logs(jobs_dir, "nothing-here").code == 3
    assert logs(jobs_dir, "has-logs", "--tail", "-1").code == 2
