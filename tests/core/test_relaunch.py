"""What a relaunch record holds and never holds, what SLURM's word on a job becomes, and the
roll back's one rule (issue 23): pure functions, no process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.records import typed

from forgather_control.core import JobPaths
from forgather_control.core.checkpoints import Checkpoint, choose, find, history, roll_back
from forgather_control.core.files import RecordError
from forgather_control.core.records import Job, Relaunch, SlurmBatch, Status
from forgather_control.core.relaunch import (
    batch_from,
    read_relaunch,
    recordable_env,
    relaunch_env,
    resume_request,
    sbatch_argv,
    time_limit_minutes,
    write_relaunch,
)

LAUNCHER_ENV = {
    "PATH": "/usr/bin",
    "MY_SETTING": "on",
    "FORGATHER_OUTPUT_DIR": "/scratch/run1",
    "SLURM_CONF": "/etc/slurm/slurm.conf",
    # secrets, any case
    "HF_TOKEN": "hf_x",
    "wandb_api_key": "w",
    "AWS_SECRET_ACCESS_KEY": "a",
    "DB_PASSWORD": "p",
    "FORGATHER_TOKEN": "t",
    # one run's
    "FORGATHER_NOTIFY": "slack://T/B/X",
    "FORGATHER_NOTIFY_CMD": "page-me",
    "FORGATHER_RESUME": '{"job_id": "a"}',
    "FORGATHER_RESUME_FROM": "/scratch/run1/ck-10",
    "FORGATHER_KNOBS": "{}",
    "FORGATHER_RESTARTS": "2",
    "SLURM_JOB_ID": "77",
    "SLURM_NODEID": "0",
    "SLURMD_NODENAME": "n1",
    "SRUN_DEBUG": "3",
    "PMI_RANK": "0",
    "TORCHELASTIC_RUN_ID": "x",
}


def test_the_record_holds_no_secret_and_nothing_of_one_run() -> None:
    kept = {"FORGATHER_OUTPUT_DIR": "/scratch/run1", "MY_SETTING": "on", "PATH": "/usr/bin", "SLURM_CONF": "/etc/slurm/slurm.conf"}
    assert recordable_env(LAUNCHER_ENV) == kept
    assert recordable_env({"BIG": "x" * 40_000, "NUL": "a\x00b"}) == {}


def test_a_relaunch_takes_secrets_from_the_shell_it_is_resumed_from() -> None:
    """The recorded environment is the job's; a secret comes from where the resume runs,
    as it came from where the launch ran. Our token and alert sinks never come along, nor
    does a variable of the resuming shell's own run."""
    shell = {"PATH": "/other", "HF_TOKEN": "hf_new", "FORGATHER_TOKEN": "t", "FORGATHER_NOTIFY": "x", "SLURM_JOB_ID": "9", "UNRELATED": "1"}
    env = relaunch_env({**recordable_env(LAUNCHER_ENV), "SNEAKY_KEY": "from a record"}, shell)
    assert env == {"FORGATHER_OUTPUT_DIR": "/scratch/run1", "MY_SETTING": "on", "PATH": "/usr/bin", "SLURM_CONF": "/etc/slurm/slurm.conf", "HF_TOKEN": "hf_new"}


SHOW_JOB = (
    "JobId=77 JobName=train UserId=me(1000) GroupId=me(1000) Account=(null) QOS=normal JobState=RUNNING Requeue=1 Restarts=0 "
    "TimeLimit=1-02:03:30 Partition=gpu NumNodes=2 NumCPUs=2 NumTasks=2 NtasksPerN:B:S:C=1:0:*:* "
    "Command=/home/me/train.sbatch -m pkg.train --name my run --lr=1e-4 WorkDir=/home/me/work StdErr=/home/me/work/slurm-77.out "
    "StdIn=/dev/null StdOut=/home/me/work/slurm-77.out Power="
)


def test_what_slurm_says_of_a_job_becomes_its_resubmission() -> None:
    launcher = ["launch", "--nproc-per-node", "4", "--requeue", "-m", "pkg.train", "--name", "my run", "--lr=1e-4"]
    batch = batch_from("77", '#!/bin/bash\nsrun forgather launch "$@"\n', SHOW_JOB, launcher_args=launcher)
    # the launcher's own arguments are taken as they are: "my run" stays one argument
    assert batch.script_args == ["-m", "pkg.train", "--name", "my run", "--lr=1e-4"]
    assert (batch.job_name, batch.partition, batch.nodes, batch.ntasks_per_node, batch.time_limit) == ("train", "gpu", 2, 1, 1564)
    assert (batch.account, batch.qos, batch.workdir, batch.output, batch.requeue) == (None, "normal", "/home/me/work", "/home/me/work/slurm-77.out", True)
    assert sbatch_argv("/usr/bin/sbatch", batch, "/jobs/slurm-77/relaunch.sbatch") == [
        "/usr/bin/sbatch",
        "--parsable",
        "--job-name=train",
        "--partition=gpu",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--time=1564",
        "--qos=normal",
        "--chdir=/home/me/work",
        "--output=/home/me/work/slurm-77.out",
        "--error=/home/me/work/slurm-77.out",
        "--requeue",
        "--open-mode=append",
        "/jobs/slurm-77/relaunch.sbatch",
        "-m",
        "pkg.train",
        "--name",
        "my run",
        "--lr=1e-4",
    ]
    # arguments the script does not pass on to the launcher are split at spaces
    assert batch_from("1", "x", "Command=/s.sbatch extra 2 train.py WorkDir=/w", launcher_args=["launch", "train.py"]).script_args == ["extra", "2", "train.py"]
    assert [time_limit_minutes(t) for t in ("UNLIMITED", "Partition_Limit", "00:05:00", "10:00", "00:00:01", "30")] == [None, None, 5, 10, 1, 30]
    with pytest.raises(ValueError, match="empty"):
        batch_from("1", "  ", SHOW_JOB)
    with pytest.raises(ValueError, match="more than a relaunch record keeps"):
        batch_from("1", "#" * (600 * 1024), SHOW_JOB)


def test_roll_back_leaves_the_newer_ones_behind_and_resume_passes_them_over() -> None:
    a, b, c = Checkpoint("/o/a", 10, 0), Checkpoint("/o/b", 20, 0), Checkpoint("/o/c", 30, 1)
    rolled = roll_back([a, b, c], a)
    assert [p.left_behind for p in rolled] == [False, True, True] and rolled == [a, b, c]
    assert choose(rolled, exists=lambda p: True) == (a, [])  # left behind: passed over without a reason
    assert find(rolled, 20) == b and find(rolled, "/o/./c") == c and find(rolled, 99) is None
    # rolled forward to b: b is the resume point again, c stays behind
    assert [p.left_behind for p in roll_back(rolled, b)] == [False, False, True]
    # job.json's mark survives the same save named again by that run's status.json
    job = typed(Job, {"checkpoints": [p.as_record().as_record() for p in rolled]})
    status = typed(Status, {"restarts": 1, "resume_point": {"path": "/o/c", "step": 30}, "checkpoints": [{"path": "/o/c", "step": 30}]})
    assert [p.left_behind for p in history(job, status)] == [False, True, True]
    # ... but a later run that writes the same path again saved a new checkpoint there
    later = typed(Status, {"restarts": 2, "resume_point": {"path": "/o/c", "step": 15}})
    assert [(p.path, p.run, p.left_behind) for p in history(job, later)][-1] == ("/o/c", 2, False)


def test_every_checkpoint_of_a_run_is_in_the_history_not_only_its_newest() -> None:
    both = [{"path": "/o/a", "step": 10}, {"path": "/o/b", "step": 20}]
    status = typed(Status, {"restarts": 0, "resume_point": both[1], "checkpoints": both})
    assert [(p.path, p.run) for p in history(None, status)] == [("/o/a", 0), ("/o/b", 0)]


def test_a_relaunch_record_is_read_only_from_its_owner_and_never_through_a_link(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "mine").create(mark=False)
    record = Relaunch(job_id="mine", argv=["launch", "train.py"], python="/usr/bin/python3", cwd="/w", env={"A": "1"})
    write_relaunch(paths, record)
    assert oct(os.stat(paths.relaunch).st_mode & 0o777) == "0o600" and read_relaunch(paths) == record
    os.chown(paths.relaunch, 1001, 1001)  # a real other uid's file in the folder
    with pytest.raises(RecordError, match="not trusted"):
        read_relaunch(paths)
    os.unlink(paths.relaunch)
    elsewhere = tmp_path / "planted.json"
    write_relaunch(JobPaths(tmp_path / "jobs", "other").create(mark=False), record)
    os.rename(tmp_path / "jobs" / "other" / "relaunch.json", elsewhere)
    os.symlink(elsewhere, paths.relaunch)
    with pytest.raises(RecordError, match="symlinks"):
        read_relaunch(paths)
    os.unlink(paths.relaunch)
    write_relaunch(paths, Relaunch(job_id="other", argv=["launch", "x.py"], python="p", cwd="/"))
    with pytest.raises(RecordError, match="names job 'other'"):
        read_relaunch(paths)


def test_the_resume_request_is_checked() -> None:
    assert resume_request({}) is None
    req = resume_request({"FORGATHER_RESUME": '{"job_id": "demo", "run": 3, "roll_back": {"id": "00ff00ff00ff00ff", "path": "/o/a", "step": 10}}'})
    assert req is not None and (req.job_id, req.run, req.roll_back.path if req.roll_back else None) == ("demo", 3, "/o/a")
    for bad in ('{"job_id": "../x"}', '{"job_id": "a", "roll_back": {"id": "; rm -rf", "path": "/"}}', "[1]", "nope"):
        with pytest.raises(ValueError, match="FORGATHER_RESUME"):
            resume_request({"FORGATHER_RESUME": bad})
    assert SlurmBatch(slurm_job_id="1", script="x").script_args == []
