"""Redirect: whoever can write a job's records can name any checkpoint in them. A run
resumes only from a checkpoint its own user owns, inside its output directory, links
resolved; the launcher and the ranks each skip anything else and say why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.history import launch_run
from support.services import require_service

from forgather_control.callback import resume_from
from forgather_control.core import JobPaths
from forgather_control.core.checkpoints import Checkpoint, Scope
from forgather_control.core.env import ENV_OUTPUT_DIR, ENV_RESUME_FROM

#: Another user's uid (no account needs to exist for a file to be owned by it).
OTHER_UID = 1001


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Path]:
    """The job's output folder holding its own checkpoint (step 100), another user's
    (300) and a link to a folder outside (400); a checkpoint outside it (500)."""
    require_service("root", os.geteuid() == 0, "giving a file to another uid takes root (os.chown)")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    own, theirs, link, outside = out / "checkpoint-100", out / "checkpoint-300", out / "checkpoint-400", elsewhere / "checkpoint-500"
    for folder in (own, theirs, outside, elsewhere / "target"):
        folder.mkdir(parents=True)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    link.symlink_to(elsewhere / "target")
    return {"out": out, "own": own, "theirs": theirs, "link": link, "outside": outside}


def test_scope_refuses_a_checkpoint_outside_the_output_dir_another_users_and_a_link_out(planted: dict[str, Path]) -> None:
    scope = Scope(str(planted["out"]), os.getuid())
    assert scope.refuses(str(planted["own"])) is None
    assert "outside the job's output directory" in (scope.refuses(str(planted["outside"])) or "")
    assert f"owned by uid {OTHER_UID}, not by the job's user (uid {os.getuid()})" == scope.refuses(str(planted["theirs"]))
    assert "outside the job's output directory" in (scope.refuses(str(planted["link"])) or "") and "a link to" in (scope.refuses(str(planted["link"])) or "")


def test_a_relaunch_skips_every_planted_checkpoint_with_its_reason_and_resumes_from_its_own(
    planted: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_OUTPUT_DIR, str(planted["out"]))
    jobs = tmp_path / "jobs"
    first = launch_run(jobs, "victim")
    first.finish("stopped", 0)
    # another writer rewrites job.json: the job's own checkpoint, then newer ones it planted
    job = json.loads(JobPaths(jobs, "victim").job.read_text())
    job["checkpoints"] = [{"path": str(planted[k]), "step": step, "run": 0} for k, step in (("own", 100), ("theirs", 300), ("link", 400), ("outside", 500))]
    JobPaths(jobs, "victim").job.write_text(json.dumps(job))

    again = launch_run(jobs, "victim")
    assert again.plan.resume_from == str(planted["own"])
    assert json.loads(JobPaths(jobs, "victim").job.read_text())["output_dir"] == os.path.realpath(planted["out"])
    skipped = dict(s.split(": ", 1) for s in again.plan.resume_gone)
    assert skipped[Checkpoint(str(planted["outside"]), 500).describe()].startswith("outside the job's output directory")
    assert skipped[Checkpoint(str(planted["link"]), 400).describe()].startswith("outside the job's output directory")
    assert skipped[Checkpoint(str(planted["theirs"]), 300).describe()] == f"owned by uid {OTHER_UID}, not by the job's user (uid {os.getuid()})"
    again.finish("stopped", 0)


def test_a_rank_resumes_only_from_a_checkpoint_the_rule_allows(
    planted: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The ranks ask the same rule of $FORGATHER_RESUME_FROM (set by hand, or by a launcher
    that did not check)."""
    monkeypatch.setenv(ENV_OUTPUT_DIR, str(planted["out"]))
    for bad in ("theirs", "link", "outside"):
        monkeypatch.setenv(ENV_RESUME_FROM, str(planted[bad]))
        assert resume_from() is None, bad
        assert f"not resuming from {planted[bad]}" in caplog.text
    monkeypatch.setenv(ENV_RESUME_FROM, str(planted["own"]))
    assert resume_from() == str(planted["own"])
