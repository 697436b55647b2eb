"""The Forgather framework's own trainers under ``forgather launch``, for real: Python
3.12, the framework from ../shared/vendor (tests/support/framework.py builds the venv),
torchrun with gloo on CPU, our CLI as a subprocess.

The script (examples/trainer_control/forgather_trainer.py) has no line about control: the
launcher attaches it to the framework's ``Trainer`` and ``AccelTrainer``. One scenario per
trainer and rank count: listed with step and loss; ``save --wait`` names the checkpoint the
framework wrote (``OUT/checkpoints/checkpoint-N``); ``eval``; ``save-stop``, then a
relaunch that resumes at the saved step; ``abort`` exits 77, writes no checkpoint, records
no resume point, and the code after ``train()`` does not run. A SIGTERM to the launcher
saves and stops, and the relaunch resumes from that save.

``PipelineTrainer`` is patched the same way (it is a ``BaseTrainer``; the quick tests and
``test_every_trainer_the_framework_ships_gets_the_callback`` show it), but it is not trained
here: it splits a causal language model into pipeline stages across ranks
(``torch.distributed.pipelining``) with the splitters of the framework's model library,
which is more model than a test on 2 CPU cores can train.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from support.framework import framework_env
from support.paths import EXAMPLES
from support.processes import Proc, Procs
from support.records import read_record
from support.waiting import wait_for

from forgather_control.core.outcome import EXIT_ABORTED, EXIT_PREEMPTED, EXIT_STOPPED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCRIPT = EXAMPLES / "forgather_trainer.py"
TIMEOUT = 300.0


def launch(procs: Procs, py: Path, jobs_dir: Path, job_id: str, out: Path, *args: str, nproc: int = 1, name: str = "launch") -> Proc:
    argv = [str(py.parent / "forgather"), "launch", "--jobs-dir", str(jobs_dir), "--job-id", job_id, "--nproc-per-node", str(nproc)]
    argv += [str(SCRIPT), "--output-dir", str(out), "--step-sleep", "0.02", *args]
    return procs.start(argv, env=framework_env(py, jobs_dir), name=name)


def control(cli, *args: str) -> dict:
    res = cli("control", *args, "--json", timeout=TIMEOUT)
    assert res.code == 0, f"forgather control {' '.join(args)} -> {res.code}\n{res.out}\n{res.err}"
    return json.loads(res.out)


def listed(cli, job_id: str, job: Proc, *, run: int) -> dict:
    """The job in ``list --json`` once it runs (this run) with a step and a loss."""

    def ready():
        if job.popen.poll() is not None:
            raise AssertionError(f"launcher exited early ({job.popen.returncode}):\n{job.output()[-4000:]}")
        res = cli("control", "list", "--json")
        row = next((j for j in json.loads(res.out) if j["job_id"] == job_id), None) if res.code == 0 else None
        ok = row and row["state"] == "running" and row.get("restarts", 0) + 1 >= run and (row.get("step") or 0) >= 3 and row.get("loss") is not None
        return row if ok else None

    return wait_for(ready, timeout=TIMEOUT, interval=0.5, what=f"{job_id} listed running with a step and a loss")


def checkpoints(out: Path) -> list[str]:
    folder = out / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def start_steps(job: Proc) -> dict[int, int]:
    """rank -> the step training started from, as the script's callback printed it."""
    return {int(r): int(s) for r, s in re.findall(r"rank (\d+): training from step (\d+)", job.output())}


def a_framework_checkpoint(path: str, out: Path) -> Path:
    ckpt = Path(path)
    assert ckpt.parent == out / "checkpoints" and ckpt.name.startswith("checkpoint-"), path
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors.index.json", "optimizer_state.pt", "trainer_state.pt"} <= names, names
    return ckpt


@pytest.mark.parametrize(("trainer", "nproc"), [("trainer", 1), ("accel", 2)])
def test_listed_saved_evaluated_save_stopped_resumed_and_aborted(
    trainer: str, nproc: int, framework_py: Path, jobs_dir: Path, procs: Procs, cli, tmp_path: Path
) -> None:
    out, job_id = tmp_path / "out", f"fg-{trainer}"
    job = launch(procs, framework_py, jobs_dir, job_id, out, "--trainer", trainer, "--after-train", str(tmp_path / "exported-1"), nproc=nproc)
    row = listed(cli, job_id, job, run=1)
    assert row["world_size"] == nproc and row["max_steps"] == 100_000, row

    save = control(cli, "save", job_id, "--wait")
    assert save["state"] == "completed", save
    saved = a_framework_checkpoint(save["result"]["checkpoint"], out)
    assert saved.name == f"checkpoint-{save['step']}"

    ev = control(cli, "eval", job_id, "--wait")
    assert ev["state"] == "completed" and isinstance(ev["result"]["metrics"]["eval_loss"], float), ev

    stop = control(cli, "save-stop", job_id, "--wait")
    assert stop["state"] == "completed", stop
    assert job.wait(TIMEOUT) == EXIT_STOPPED, job.output()[-4000:]
    resume = a_framework_checkpoint(stop["result"]["checkpoint"], out)
    assert (tmp_path / "exported-1").read_text().strip() == str(stop["step"])  # a stop returns from train()

    again = launch(procs, framework_py, jobs_dir, job_id, out, "--trainer", trainer, "--after-train", str(tmp_path / "exported-2"), nproc=nproc, name="again")
    listed(cli, job_id, again, run=2)
    assert f"resuming from {resume}" in again.output(), again.output()[-4000:]
    assert start_steps(again) == dict.fromkeys(range(nproc), stop["step"]), again.output()[-4000:]  # every rank, at the saved step

    before = checkpoints(out)
    abort = control(cli, "abort", job_id, "--yes", "--wait")
    assert abort["state"] == "completed" and abort["step"] > stop["step"], abort
    assert again.wait(TIMEOUT) == EXIT_ABORTED, again.output()[-4000:]
    assert checkpoints(out) == before  # abort wrote no checkpoint, not even the trainer's final one
    assert not (tmp_path / "exported-2").exists()  # the code after train() did not run
    assert "does not return into the script" in again.output()
    record = read_record(jobs_dir, job_id, "job.json")
    assert record["state"] == "aborted" and record["exit_code"] == EXIT_ABORTED
    assert [c["path"] for c in record["checkpoints"]][-1] == str(resume), record["checkpoints"]  # no resume point from the abort


def test_sigterm_saves_and_stops_two_ranks_and_the_relaunch_resumes_there(framework_py: Path, jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    out, job_id = tmp_path / "out", "fg-term"
    job = launch(procs, framework_py, jobs_dir, job_id, out, nproc=2)
    listed(cli, job_id, job, run=1)
    job.popen.send_signal(signal.SIGTERM)
    assert job.wait(TIMEOUT) == EXIT_PREEMPTED, job.output()[-4000:]
    record = read_record(jobs_dir, job_id, "job.json")
    assert record["state"] == "stopped" and record["checkpoints"], record
    point = record["checkpoints"][-1]
    a_framework_checkpoint(point["path"], out)

    again = launch(procs, framework_py, jobs_dir, job_id, out, nproc=2, name="again")
    listed(cli, job_id, again, run=2)
    assert start_steps(again) == {0: point["step"], 1: point["step"]}, again.output()[-4000:]
    control(cli, "stop", job_id, "--wait")
    assert again.wait(TIMEOUT) == EXIT_STOPPED, again.output()[-4000:]


#: Builds each trainer the framework ships (one rank, gloo) after the bootstrap's hooks,
#: as a launched worker would, and names the ones holding our callback bound to them.
PROBE = """
import json, tempfile
import torch, torch.distributed as dist
from forgather_control.callback import bootstrap
bootstrap.install()
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
from accelerate import Accelerator
from forgather.ml.distributed import DistributedEnvironment
from forgather.ml.trainer import Trainer, TrainingArguments
from forgather.ml.trainer.accelerate.accel_trainer import AccelTrainer, AccelTrainingArguments
from forgather.ml.trainer.pipeline.pipeline_trainer import PipelineTrainer, PipelineTrainingArguments
from forgather_control.callback.hf import TrainerControlCallback
env = DistributedEnvironment()
common = dict(output_dir=tempfile.mkdtemp(), use_cpu=True, per_device_train_batch_size=4, per_device_eval_batch_size=4)
model = lambda: torch.nn.Linear(2, 2)
made = {
    "Trainer": Trainer(args=TrainingArguments(**common), distributed_env=env, model=model()),
    "AccelTrainer": AccelTrainer(args=AccelTrainingArguments(**common), accelerator=Accelerator(cpu=True), distributed_env=env, model=model()),
    "PipelineTrainer": PipelineTrainer(args=PipelineTrainingArguments(**common), distributed_env=env, model_init=model, model_splitter=lambda *a, **k: None),
}
print(json.dumps({k: sum(isinstance(c, TrainerControlCallback) and c.trainer is t for c in t.callbacks) for k, t in made.items()}))
"""


def test_every_trainer_the_framework_ships_gets_the_callback(framework_py: Path, jobs_dir: Path) -> None:
    """The patch sits on BaseTrainer, so every trainer the framework ships gets exactly
    one callback, bound to it, when built (PipelineTrainer too, which is not trained here)."""
    import subprocess

    env = framework_env(framework_py, jobs_dir, FORGATHER_LAUNCHED="1", FORGATHER_JOB_ID="probe")
    res = subprocess.run([str(framework_py), "-c", PROBE], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"Trainer": 1, "AccelTrainer": 1, "PipelineTrainer": 1}
