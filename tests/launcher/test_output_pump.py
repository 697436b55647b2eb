"""The launcher's copy of its ranks' output: to the terminal and to each rank's log.

Real parts: the launcher's pump (its socket, its thread) and the worker's side of the
connection (``callback/output._connect``, what the bootstrap calls), in this process."""

from __future__ import annotations

import os
from pathlib import Path

from forgather_control.callback.output import _connect
from forgather_control.core.jobs import JobPaths
from forgather_control.launcher.output import OutputPump


def _run_rank(pump: OutputPump, rank: int, text: bytes) -> None:
    out = _connect(pump.address, str(rank), "out")
    try:
        os.write(out, text)
    finally:
        os.close(out)


def test_a_detached_launchers_log_keeps_a_bounded_part_of_the_ranks_output_and_says_where_the_rest_is(tmp_path: Path) -> None:
    """A detached relaunch's log (``resume --detach``) is its terminal: it used to get
    every line of every rank, for the job's whole life, beside the ranks' own bounded logs."""
    paths = JobPaths(tmp_path / "jobs", "detached").create()
    terminal = tmp_path / "launcher-run-1.log"
    fd = os.open(terminal, os.O_WRONLY | os.O_CREAT, 0o600)
    pump = OutputPump(paths.dir, max_bytes=1 << 20, stdout_fd=fd, stderr_fd=fd, terminal_bytes=1000)
    try:
        pump.start()
        lines = b"".join(b"step %05d loss 1.0\n" % i for i in range(500))  # 10,000 bytes
        _run_rank(pump, 0, lines)
        _run_rank(pump, 1, lines)
    finally:
        pump.close()
        os.close(fd)
    text = terminal.read_bytes()
    note = b"----- forgather: this log stops here; every rank's output goes on in its log: forgather control logs detached -----\n"
    assert text.endswith(note) and text.count(note) == 1, text[-300:]
    assert len(text) == 1000 + 1 + len(note)  # the bound, then the line saying where the rest is
    assert text.startswith(b"step 00000 loss 1.0\n")
    for rank in (0, 1):  # the ranks' own logs have all of it
        assert (paths.dir / "logs" / f"rank-{rank}.log").read_bytes() == lines


def test_a_terminal_gets_all_of_the_ranks_output_when_no_bound_is_asked(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "attached").create()
    terminal = tmp_path / "terminal.out"
    fd = os.open(terminal, os.O_WRONLY | os.O_CREAT, 0o600)
    pump = OutputPump(paths.dir, max_bytes=1 << 20, stdout_fd=fd, stderr_fd=fd)
    try:
        pump.start()
        lines = b"".join(b"step %05d loss 1.0\n" % i for i in range(500))
        _run_rank(pump, 0, lines)
    finally:
        pump.close()
        os.close(fd)
    assert terminal.read_bytes() == lines
