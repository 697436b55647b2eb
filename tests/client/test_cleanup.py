"""cleanup's safety rules, in process: only dead or finished jobs, judged again right
before deleting, never through a link, never outside the jobs directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.records import identity

from forgather_control.client import cleanup
from forgather_control.core import InvalidJobId, JobPaths, write_json_atomic


def _dead_job(root: Path, job_id: str) -> JobPaths:
    paths = JobPaths(root, job_id).create(mark=False)  # as an earlier run left it: no marker of ours
    write_json_atomic(paths.status, {**identity(999_999_999), "state": "stopped", "step": 1})
    return paths


def test_delete_job_removes_a_finished_job_without_following_links(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    paths = _dead_job(root, "gone-1")
    os.symlink(outside, paths.dir / "link-dir")
    os.symlink(outside / "keep.txt", paths.inbox / "link-file.json")
    outcome = cleanup.delete_job(root, "gone-1")
    assert outcome.deleted and not outcome.error, outcome
    assert not paths.dir.exists()
    assert (outside / "keep.txt").read_text() == "keep"
    assert os.listdir(root) == []  # no .tmp-deleting leftovers


def test_delete_job_refuses_symlinked_folder_and_live_job(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    root.mkdir()
    outside = tmp_path / "outside"
    _dead_job(tmp_path, "outside")  # a finished-looking job, but outside the root
    os.symlink(outside, root / "linked")
    outcome = cleanup.delete_job(root, "linked")
    assert not outcome.deleted and "symlink" in outcome.reason
    assert (outside / "status.json").exists()

    live = JobPaths(root, "live-1").create()
    write_json_atomic(live.status, {**identity(), "state": "running", "step": 1, "heartbeat_at": time.time()})
    outcome = cleanup.delete_job(root, "live-1")
    assert not outcome.deleted and "alive" in outcome.reason
    assert live.dir.is_dir()
    with pytest.raises(InvalidJobId):
        cleanup.delete_job(root, "../outside")
