"""The launcher's copy of its ranks' output: to the terminal and to each rank's log.

Real parts: the launcher's pump (its socket, its thread) and the worker's side of the
connection (``callback/output._connect``, what the bootstrap calls), in this process."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from support.users import VICTIM_UID

from forgather_control.callback.output import _connect
from forgather_control.core.jobs import JobPaths
from forgather_control.launcher.output import SOCKET_PREFIX, OutputPump, sweep_stale


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


def _socket_folder(root: Path, name: str, *, listening: bool, age: float) -> tuple[Path, socket.socket | None]:
    folder = root / f"{SOCKET_PREFIX}{name}"
    folder.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(folder / "s"))
    if listening:
        sock.listen(1)
    else:
        sock.close()  # its file stays: nobody listens on it, as after a launcher's kill -9
    past = time.time() - age
    os.utime(folder, (past, past))
    return folder, sock if listening else None


def test_the_socket_folders_launchers_killed_with_sigkill_left_are_swept_and_no_other(tmp_path: Path) -> None:
    """A launcher killed with SIGKILL cannot remove its socket's folder in the temp
    folder; the next launcher on the host removes such folders of its user's, old enough
    and with nobody listening, and never a live launcher's, a young one, another user's
    or one behind a link."""
    root = tmp_path / "tmp"
    root.mkdir()
    stale, _ = _socket_folder(root, "stale", listening=False, age=3600)
    young, _ = _socket_folder(root, "young", listening=False, age=1)
    live, listener = _socket_folder(root, "live", listening=True, age=3600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / f"{SOCKET_PREFIX}link").symlink_to(elsewhere)  # never followed
    other = root / "not-ours-by-name"
    other.mkdir()
    theirs, _ = _socket_folder(root, "theirs", listening=False, age=3600)
    os.chown(theirs, VICTIM_UID, VICTIM_UID)  # another user's (the test runs as root): theirs to remove
    os.utime(theirs, (time.time() - 3600,) * 2)
    try:
        assert sweep_stale(str(root)) == [str(stale)]
    finally:
        assert listener is not None
        listener.close()
    assert not stale.exists() and young.exists() and live.exists() and elsewhere.exists() and other.exists() and theirs.exists()
    assert (root / f"{SOCKET_PREFIX}link").is_symlink()
