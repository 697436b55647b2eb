"""Whole-file writes and hostile-file reads (no sockets, no processes)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from forgather_control.core import InvalidJobId, JobPaths, default_job_id, read_json, resolve_jobs_dir, validate_job_id, write_json_atomic
from forgather_control.core.files import TEMP_PREFIX, ensure_private_dir


def test_write_is_whole_and_private(tmp_path: Path) -> None:
    target = tmp_path / "endpoint.json"
    write_json_atomic(target, {"token": "secret", "n": 1})
    assert json.loads(target.read_text()) == {"n": 1, "token": "secret"}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    write_json_atomic(target, {"n": 2})
    assert read_json(target) == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["endpoint.json"], "no temp file may be left behind"


def test_modes_hold_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = JobPaths(tmp_path / "root", "job-1").create()
        write_json_atomic(paths.endpoint, {"token": "t"})
    finally:
        os.umask(old)
    for d in (paths.root, paths.dir, paths.inbox):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(paths.endpoint).st_mode) == 0o600


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_json_atomic(target, {"ok": True})

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        write_json_atomic(target, {"bad": Boom()})
    assert read_json(target) == {"ok": True}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\x00\xff garbage", b"[1, 2]", b'"just a string"', b'{"a": 1'],
    ids=["empty", "truncated", "binary", "list", "string", "half"],
)
def test_garbage_is_skipped_with_a_warning(tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "status.json"
    p.write_bytes(content)
    assert read_json(p) is None
    assert "skipping" in caplog.text


def test_huge_symlink_and_folder_are_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    huge.write_bytes(b'{"a": "' + b"x" * (2 << 20) + b'"}')
    assert read_json(huge) is None
    outside = tmp_path / "outside.json"
    outside.write_text('{"secret": 1}')
    link = tmp_path / "link.json"
    link.symlink_to(outside)
    assert read_json(link) is None, "a symlink must never be followed"
    (tmp_path / "dir.json").mkdir()
    assert read_json(tmp_path / "dir.json") is None
    assert read_json(tmp_path / "missing.json") is None


def test_private_dir_refuses_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OSError, match="symlink"):
        ensure_private_dir(link)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "-x", "x" * 129, "a b", "..", "é"])
def test_bad_job_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidJobId, match="invalid job id"):
        validate_job_id(bad)
    with pytest.raises(InvalidJobId):
        JobPaths(Path("/tmp"), bad)


def test_default_job_ids() -> None:
    assert default_job_id({"SLURM_JOB_ID": "42"}) == "slurm-42"
    assert default_job_id({"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}) == "slurm-40_3"
    local = default_job_id({})
    validate_job_id(local)
    assert local != default_job_id({})


def test_jobs_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGATHER_JOBS_DIR", str(tmp_path / "env"))
    assert resolve_jobs_dir() == tmp_path / "env"
    assert resolve_jobs_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("FORGATHER_JOBS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_jobs_dir() == tmp_path / "home" / ".forgather" / "jobs"
