"""Issue 23: a rank's log in the job folder, bounded and rotated (core/logs.py), read
whole across its rotation, its lines safe to print, no link followed, no foreign file read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forgather_control.core.files import RecordError
from forgather_control.core.logs import DEFAULT_MAX_BYTES, MIN_MAX_BYTES, LogsFolder, RankLog, clean_lines, max_bytes_from

HOSTILE = "\x1b[2J\x1b]0;pwned\x07 \u202eevil"


def writer(job: Path, rank: int = 0, **kw: object) -> RankLog:
    (job / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(job / "logs", os.O_RDONLY)
    return RankLog(fd, rank, host="node-a", node=0, run=0, **kw)  # type: ignore[arg-type]


def test_rotation_keeps_two_files_and_the_tail_reads_across_them(tmp_path: Path) -> None:
    w = writer(tmp_path, 1, max_bytes=100)
    for i in range(40):
        w.write(f"line {i:02d}\n".encode())  # 8 bytes a line, 12 a file (a line is never split): rotated three times
    names = sorted(os.listdir(tmp_path / "logs"))
    assert names == ["rank-1.json", "rank-1.log", "rank-1.log.1"]
    assert all(os.path.getsize(tmp_path / "logs" / n) <= 100 for n in names)
    assert oct(os.stat(tmp_path / "logs" / "rank-1.log").st_mode & 0o777) == "0o600"
    with LogsFolder(tmp_path) as logs:
        assert logs.ranks() == [1]
        # .1 holds lines 24-35, the current file 36-39: the tail of 10 reads into .1
        tail = logs.tail(1, 10)
        assert tail.lines == [f"line {i:02d}" for i in range(30, 40)]
        assert tail.offset == 320 and tail.host == "node-a"
        # a reader at offset 0 lost the first two files' worth, and is told how much
        first = logs.after(1, 0)
        assert first.skipped == 192 and first.lines[0] == "line 24" and first.offset == 320
        # a poll from an offset inside .1 gets the rest of .1, then the new file
        assert logs.after(1, 280).lines == ["line 35", *[f"line {i:02d}" for i in range(36, 40)]]
        w.write(b"line 40\npart")
        nxt = logs.after(1, 320)
        assert nxt.lines == ["line 40"] and nxt.offset == 328  # "part" waits for its end
        assert logs.after(1, 328, partial=True).lines == ["part"]
        anew = logs.after(1, 10_000)  # an offset past the end (the logs were made anew): from their start
        assert anew.lines[0] == "line 24" and anew.offset == 328


def test_a_relaunch_appends_after_a_line_that_says_so(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.write(b"run 0 died mid-line")
    w.close()
    w = writer(tmp_path)
    w.state.run = 1
    w.write(b"run 1\n")
    with LogsFolder(tmp_path) as logs:
        lines = logs.tail(0, 5).lines
    assert lines[0] == "run 0 died mid-line" and lines[1].startswith("----- forgather: run 0 of this job, rank 0 on node-a") and lines[2] == "run 1"


def test_lines_are_printed_clean() -> None:
    raw = f"{HOSTILE}\nprogress 10%\rprogress 90%\r\nwin\r\n\ttab\n".encode() + b"\xff bad byte\n" + b"x" * 9000 + b"\n"
    lines = clean_lines(raw)
    assert lines[0] == "\\x1b[2J\\x1b]0;pwned\\x07 \\u202eevil"
    assert lines[1:4] == ["progress 90%", "win", "        tab"]
    assert lines[4] == "\ufffd bad byte"
    assert lines[5].endswith("... (808 more characters)")
    assert not any(ch in "".join(lines) for ch in "\x1b\x07\r\t\u202e")


def test_links_and_other_users_files_are_never_read(tmp_path: Path) -> None:
    job = tmp_path / "job"
    w = writer(job, 0)
    w.write(b"mine\n")
    secret = tmp_path / "secret"
    secret.write_text("not a log\n")
    os.symlink(secret, job / "logs" / "rank-1.log")
    with LogsFolder(job) as logs, pytest.raises(RecordError, match="symlink"):
        logs.tail(1, 5)
    # the writer never writes through one either
    with pytest.raises(OSError):
        writer(job, 1)
    assert secret.read_text() == "not a log\n"
    # a logs folder that is a link
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(job / "logs", other / "logs")
    with pytest.raises(RecordError):
        LogsFolder(other)
    # a file of another uid in the owner's folder (root makes one)
    if os.geteuid() == 0:
        os.chown(job / "logs" / "rank-0.log", 1001, 1001)
        with LogsFolder(job) as logs, pytest.raises(RecordError, match="uid 1001"):
            logs.tail(0, 5)


def test_the_bound_is_documented_and_configurable() -> None:
    assert max_bytes_from({}) == DEFAULT_MAX_BYTES == 8 << 20
    assert max_bytes_from({"FORGATHER_LOG_BYTES": "16M"}) == 16 << 20
    assert max_bytes_from({"FORGATHER_LOG_BYTES": "65536"}) == MIN_MAX_BYTES
    for bad in ("1K", "lots", "-5"):
        with pytest.raises(ValueError, match="FORGATHER_LOG_BYTES"):
            max_bytes_from({"FORGATHER_LOG_BYTES": bad})
