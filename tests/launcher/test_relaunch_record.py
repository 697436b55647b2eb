"""The launcher's side of ``forgather control resume`` (issue 23), without torchrun: the
command line a relaunch record keeps, the record under SLURM, a roll back applied once,
and a resubmitted SLURM job numbering its runs on from the job's last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.history import launch_run, rank0_status

from forgather_control.cli import launch as launch_cmd
from forgather_control.core import JobPaths
from forgather_control.core.records import ResumeRequest, RollBack
from forgather_control.core.relaunch import read_relaunch
from forgather_control.launcher import LaunchConfig, LaunchError, make_plan
from forgather_control.launcher.records import read_previous
from forgather_control.launcher.relaunch import record_relaunch

SLURM = {"SLURM_JOB_ID": "900", "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "n1", "SLURM_STEP_NODELIST": "n1", "SLURM_NODEID": "0", "SLURM_RESTART_COUNT": "1"}


def test_the_recorded_command_line_leaves_out_notify_values_of_the_launcher_only(monkeypatch: pytest.MonkeyPatch) -> None:
    typed = ["forgather", "-v", "launch", "--nproc-per-node", "2", "--notify", "slack://T/B/SECRET", "--standalone", "--notify-cmd=page-me --key k"]
    typed += [
        "--notify-file",
        "/home/me/sinks",
        "--notify-file=/home/me/sinks2",
        "--grace=30",
        "--no-control-after",
        "60",
        "train.py",
        "--notify",
        "the script's own",
        "--lr",
        "1",
    ]
    monkeypatch.setattr(sys, "argv", typed)
    assert launch_cmd._relaunch_argv() == (
        "launch",
        "--nproc-per-node",
        "2",
        "--standalone",
        "--grace=30",
        "--no-control-after",
        "60",
        "train.py",
        "--notify",
        "the script's own",
        "--lr",
        "1",
    )
    monkeypatch.setattr(sys, "argv", ["python", "my_driver.py"])  # a launch from Python: no command line
    assert launch_cmd._relaunch_argv() == ()


def test_under_slurm_the_record_holds_the_batch_script_and_its_options(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    argv = ("launch", "--nproc-per-node", "2", "train.py", "--lr", "1")
    plan = make_plan(LaunchConfig(script="train.py", relaunch_argv=argv), SLURM, python="python3", jobs_dir=str(jobs))
    paths = JobPaths(jobs, plan.job_id).create(mark=False)
    asked: list[list[str]] = []

    def scontrol(cmd):
        asked.append(list(cmd))
        out = (
            '#!/bin/bash\n#SBATCH --signal=USR1@90\nexec srun forgather launch --nproc-per-node 2 "$@"\n'
            if "write" in cmd
            else ("JobId=900 JobName=t Partition=debug NumNodes=1 TimeLimit=00:30:00 Requeue=1 Command=/w/t.sbatch train.py --lr 1 WorkDir=/w StdOut=/w/o.out")
        )
        return subprocess.CompletedProcess(cmd, 0, out, "")

    record_relaunch(paths, plan, env={**SLURM, "PATH": "/bin", "HF_TOKEN": "x"}, cwd="/w", runner=scontrol)
    rec = read_relaunch(paths)
    assert asked == [["scontrol", "write", "batch_script", "900", "-"], ["scontrol", "show", "job", "-o", "900"]]
    assert rec is not None and rec.scheduler == "slurm" and rec.argv == list(argv) and rec.env == {"PATH": "/bin"} and rec.run == 1
    assert rec.slurm is not None and rec.slurm.script.startswith("#!/bin/bash") and rec.slurm.script_args == ["train.py", "--lr", "1"]
    assert (rec.slurm.partition, rec.slurm.time_limit, rec.slurm.workdir, rec.slurm.requeue) == ("debug", 30, "/w", True)

    def broken(cmd):
        return subprocess.CompletedProcess(cmd, 1, "", "slurm_load_jobs error: Invalid job id specified")

    record_relaunch(paths, plan, env=SLURM, cwd="/w", runner=broken)  # said in the log; resume refuses it then
    rec = read_relaunch(paths)
    assert rec is not None and rec.scheduler == "slurm" and rec.slurm is None


def test_a_resubmitted_slurm_job_numbers_its_runs_on_from_the_jobs_last() -> None:
    resumed = LaunchConfig(script="train.py", resume=ResumeRequest(job_id="slurm-12", run=4))
    p = make_plan(resumed, SLURM, python="python3", jobs_dir="/j").placement
    assert (p.job_id, p.restart_count, p.scheduler.restart_count) == ("slurm-12", 5, 1)  # the allocation's own count kept for SLURM
    with pytest.raises(LaunchError, match="not the job being resumed"):
        LaunchConfig(script="train.py", job_id="other", resume=ResumeRequest(job_id="slurm-12"))


def test_a_roll_back_is_applied_once_and_its_target_must_be_on_disk(tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs", tmp_path / "out"
    a, b = out / "checkpoint-100", out / "checkpoint-200"
    for ck in (a, b):
        ck.mkdir(parents=True)
    first = launch_run(jobs, "rb")
    rank0_status(jobs, first, "stopped", b)
    status = json.loads((jobs / "rb" / "status.json").read_text())
    status["checkpoints"] = [{"path": str(a), "step": 100}, {"path": str(b), "step": 200}]
    (jobs / "rb" / "status.json").write_text(json.dumps(status))
    first.finish("stopped", 0)
    paths = JobPaths(jobs, "rb")
    placement = make_plan(LaunchConfig(script="train.py", job_id="rb"), {}, python="p", jobs_dir=str(jobs)).placement
    assert read_previous(paths, placement).resume_from == str(b)

    asked = RollBack(id="0011223344556677", path=str(a), step=100)
    prev = read_previous(paths, placement, roll_back=asked)
    assert prev.resume_from == str(a) and [(c.step, c.left_behind) for c in prev.checkpoints] == [(100, False), (200, True)]
    assert prev.roll_back is not None and (prev.roll_back.id, prev.roll_back.run) == (asked.id, 1)
    with pytest.raises(LaunchError, match="not one of the job's checkpoints"):
        read_previous(paths, placement, roll_back=RollBack(id="99" * 8, path=str(out / "checkpoint-7")))
    with pytest.raises(LaunchError, match="no longer on disk"):
        read_previous(paths, placement, roll_back=asked, exists=lambda p: p != str(a))

    # the run that rolled back records it; a requeue with the same request does not roll back again
    second = launch_run_rolled(jobs, "rb", asked)
    job = json.loads((jobs / "rb" / "job.json").read_text())
    assert job["resume_from"] == str(a) and job["roll_back"]["id"] == asked.id
    assert [c.get("left_behind") for c in job["checkpoints"]] == [None, True]
    c = out / "checkpoint-150"
    c.mkdir()
    rank0_status(jobs, second, "stopped", c)
    second.finish("stopped", 0)
    again = read_previous(paths, placement, roll_back=asked)
    assert again.resume_from == str(c) and [(p.step, p.left_behind) for p in again.checkpoints] == [(100, False), (200, True), (150, False)]


def launch_run_rolled(jobs: Path, job_id: str, roll: RollBack):
    """One launch of ``job_id`` that a resume asked to roll back (as execute() starts it)."""
    from forgather_control.launcher.records import JobRecords

    plan = make_plan(LaunchConfig(script="train.py", resume=ResumeRequest(job_id=job_id, roll_back=roll)), {}, python="python3", jobs_dir=str(jobs))
    paths = JobPaths(jobs, job_id)
    prev = read_previous(paths, plan.placement, roll_back=roll)
    plan = plan.with_history(restarts=prev.restarts, resume_from=prev.resume_from)
    rec = JobRecords(paths, plan)
    rec.claim(prev)
    rec.start(prev, argv=["forgather", "launch", "train.py"], cwd=str(jobs))
    return rec
