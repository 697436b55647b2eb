"""``forgather control resume`` refuses, with the reason and exit 8, and starts nothing
(issue 23): a job that still runs, another user's job (a real other uid), one without a
relaunch record, a record another uid wrote, a checkpoint that is gone or not the job's,
and a SLURM job on a host without ``sbatch``. The jobs are records as the launcher leaves
them (support.history): no torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import run_cli_here
from support.env import base_env
from support.history import launch_run, rank0_status
from support.users import VICTIM_UID, OtherUser, require_setpriv, shared_dir

from forgather_control.core import JobPaths
from forgather_control.core.errors import EXIT_NOT_RESUMABLE
from forgather_control.core.records import Relaunch, SlurmBatch
from forgather_control.core.relaunch import write_relaunch


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume that is not refused would start a launcher (or become one: the attached
    resume execs it, in this process): here it fails the test instead."""
    from forgather_control.client.resume import Resumption

    def started(self, *args, **kwargs):
        raise AssertionError(f"resume of {self.job_id} was not refused")

    for way in ("exec", "attach", "detach", "submit"):
        monkeypatch.setattr(Resumption, way, started)


def resume(jobs: Path, *args: str, **env: str):
    return run_cli_here("control", "resume", *args, "--jobs-dir", str(jobs), env=env)


def refused(res, *words: str) -> None:
    assert res.code == EXIT_NOT_RESUMABLE, (res.code, res.err)
    for word in words:
        assert word in res.err, res.err


def listed(jobs: Path, job_id: str) -> list[tuple[int, bool, bool | None]]:
    """(step, on disk, resume point) of each checkpoint ``status --json`` lists."""
    res = run_cli_here("control", "status", job_id, "--json", "--jobs-dir", str(jobs))
    return [(c["step"], c["on_disk"], c.get("resume_point")) for c in json.loads(res.out)["checkpoints"]]


def record(job_id: str, cwd: Path, **fields) -> Relaunch:
    return Relaunch(**{"job_id": job_id, "argv": ["launch", "train.py"], "python": sys.executable, "cwd": str(cwd), **fields})


def test_each_refusal_says_why_and_starts_nothing(tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a, b = out / "checkpoint-100", out / "checkpoint-200"
    for ck in (a, b):
        ck.mkdir(parents=True)
    run = launch_run(jobs, "demo")  # this process is its launcher: it runs
    paths = JobPaths(jobs, "demo")
    write_relaunch(paths, record("demo", tmp_path))
    refused(resume(jobs, "demo"), "job demo is starting: it still runs", "forgather control save-stop demo --wait")

    rank0_status(jobs, run, "stopped", b)
    status = json.loads(paths.status.read_text())
    (paths.status).write_text(json.dumps({**status, "checkpoints": [{"path": str(a), "step": 100}, {"path": str(b), "step": 200}]}))
    run.finish("stopped", 76)
    before = sorted(os.listdir(paths.dir))

    refused(resume(jobs, "demo", "--from", "150"), "150 is not one of job demo's checkpoints", "forgather control status demo")
    refused(resume(jobs, "demo", "--from", str(out / "checkpoint-7")), "is not one of job demo's checkpoints")
    a.rename(out / "moved")
    refused(resume(jobs, "demo", "--from", "100"), f"cannot roll job demo back to {a} (step 100): no longer on disk")
    b.rename(out / "moved-too")
    refused(resume(jobs, "demo"), "job demo has no checkpoint left to resume from", "no longer on disk", "--from")
    assert listed(jobs, "demo") == [(100, False, None), (200, False, None)]  # status lists them, gone
    b.mkdir()
    assert listed(jobs, "demo") == [(100, False, None), (200, True, True)]

    write_relaunch(paths, record("demo", tmp_path, python=str(tmp_path / "gone" / "python")))
    refused(resume(jobs, "demo"), "which is not on this host")

    batch = SlurmBatch(slurm_job_id="77", script='#!/bin/bash\nexec srun forgather launch "$@"\n')
    write_relaunch(paths, record("demo", tmp_path, scheduler="slurm", slurm=batch))
    refused(resume(jobs, "demo", PATH=str(tmp_path / "no-slurm-here")), "ran under SLURM", "sbatch", "not on PATH")
    write_relaunch(paths, record("demo", tmp_path, scheduler="slurm"))
    refused(resume(jobs, "demo"), "its batch script was not recorded")

    os.chown(paths.relaunch, VICTIM_UID, VICTIM_UID)  # a record another uid wrote
    refused(resume(jobs, "demo"), "relaunch record is refused", f"uid {VICTIM_UID}", "not trusted")
    os.unlink(paths.relaunch)
    refused(resume(jobs, "demo"), "job demo has no relaunch record", "not started by `forgather launch`", "--job-id demo")
    assert sorted(os.listdir(paths.dir)) == [n for n in before if n != "relaunch.json"]  # nothing started, nothing written
    assert resume(jobs, "nosuch").code == 3


def test_another_users_job_is_theirs_to_resume() -> None:
    """A job folder of a real other uid, readable to us: refused, naming its owner, before
    its records are used. A private one (0700) too."""
    require_setpriv()
    with shared_dir(0o1777) as shared:
        other = OtherUser(VICTIM_UID)
        job = json.dumps({"job_id": "theirs", "state": "stopped", "restarts": 0, "exit_code": 76})
        rec = json.dumps({"job_id": "theirs", "argv": ["launch", "/tmp/x.py"], "python": "/usr/bin/python3", "cwd": "/tmp"})
        for name, mode in (("theirs", "022"), ("private", "077")):
            other.sh(f"umask {mode} && mkdir {name} && printf '%s' '{job}' > {name}/job.json && printf '%s' '{rec}' > {name}/relaunch.json", cwd=shared.root)
        refused(resume(shared.root, "theirs"), f"job theirs is the job of uid {VICTIM_UID}", "only its owner can resume it")
        refused(resume(shared.root, "private"), f"uid {VICTIM_UID}", "only its owner can resume it")


def test_resume_imports_no_torch_fastapi_or_ray(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    launch_run(jobs, "quiet").finish("stopped", 76)
    probe = "import sys; from forgather_control.cli.main import run; rc = run(sys.argv[1:]); "
    probe += "print(sorted(m for m in ('torch', 'fastapi', 'ray', 'uvicorn') if m in sys.modules)); sys.exit(rc)"
    argv = [sys.executable, "-c", probe, "control", "resume", "quiet", "--jobs-dir", str(jobs)]
    done = subprocess.run(argv, env=base_env(jobs), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (EXIT_NOT_RESUMABLE, "[]"), done.stderr
