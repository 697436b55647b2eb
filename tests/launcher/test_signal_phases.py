"""A stop signal to ``forgather launch`` in every phase of a real run (issue 20, item 11):
HF's Trainer and Lightning on two ranks (gloo, CPU), the signal sent to the launcher as a
person or SLURM's preemption sends it, after a line the script prints in that phase.

Each job makes its phase long in the script (a 30 s evaluation, a 15 s save, a first
batch or a model load of ten minutes) and the grace shorter than that phase: a stop
checked only at a step's end waited the whole grace and ended ``failed``. Wanted: a
checkpoint at the first safe point inside the grace (between evaluation batches; the end
of the save under way), or, before any step has finished, a stop at once whose outcome
says there was nothing to save yet.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support.launcher import launch
from support.paths import EXAMPLES
from support.processes import Procs
from support.records import read_record as read
from support.waiting import wait_for

from forgather_control.core.attachment import nothing_to_save_reason
from forgather_control.core.outcome import EXIT_PREEMPTED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # forgather launch, torchrun, HF and Lightning

HF = EXAMPLES / "hf_trainer.py"
LIGHTNING = EXAMPLES / "lightning_trainer.py"
START = 240.0  # torch and a trainer framework import on 2 busy cores
#: the launcher injects the callback; the examples' own is left out
COMMON = ("--no-control-callback", "--step-time", "0.05")


def signalled(job, line: str, signum: int, grace: float) -> int:
    """Wait for ``line`` in the job's output, send ``signum`` to the launcher, and return
    its exit code (waiting the grace and the kill that follows it at most)."""
    wait_for(lambda: line in job.output() or job.popen.poll() is not None, timeout=START, interval=0.1, what=repr(line))
    assert job.popen.poll() is None, f"the launcher exited before {line!r}:\n{job.output()[-4000:]}"
    os.kill(job.pid, signum)
    return job.wait(grace + 60)


def outcome(jobs_dir: Path, job_id: str, cli) -> tuple[dict, dict]:
    """job.json, and ``forgather control status --json`` (its ``why``: the stop's reason)."""
    res = cli("control", "status", job_id, "--json")
    assert res.code == 0, res.err
    return read(jobs_dir, job_id, "job.json"), res.json()


def the_stop(status: dict) -> dict:
    """The launcher's save_and_stop, the one command of the run."""
    (stop,) = status["commands"]
    assert stop["command"] == "save_and_stop" and stop["key"].startswith("launcher-stop-"), stop
    return stop


EVALS = {
    # script, the line at its evaluation's first batch, the checkpoint the stop writes
    "hf": (HF, ("--eval-steps", "10"), "rank 0 evaluating at step 10", "checkpoint-10", signal.SIGTERM),
    "lightning": (LIGHTNING, ("--val-every", "10"), "rank 0 validating at step 10", "checkpoints/forgather-step=10.ckpt", signal.SIGUSR1),
}


@pytest.mark.parametrize("kind", sorted(EVALS))
def test_a_signal_during_a_long_evaluation_cuts_it_short_and_saves_inside_the_grace(kind: str, jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    script, args, line, ckpt, signum = EVALS[kind]
    out, job_id, grace = tmp_path / "out", f"{kind}-eval", 20.0
    args = (*COMMON, *args, "--eval-time", "30", "--output-dir", str(out))
    job = launch(procs, jobs_dir, job_id, script, *args, opts=("--nproc-per-node", "2", "--grace", "20"))
    assert signalled(job, line, signum, grace) == EXIT_PREEMPTED, job.output()[-4000:]
    record, status = outcome(jobs_dir, job_id, cli)
    why = "(the evaluation at step 10 was cut short at batch "
    assert (record["state"], record["signals"], record["last_checkpoint"]) == ("stopped", [signal.Signals(signum).name], str(out / ckpt)), record
    assert why in record["reason"] and (status["state"], status["exit_code"], status["why"]) == ("stopped", EXIT_PREEMPTED, record["reason"]), status
    stop = the_stop(status)
    assert (stop["state"], stop["step"], stop["result"]["checkpoint"]) == ("completed", 10, str(out / ckpt)), stop
    assert not list(out.glob("**/epoch=*.ckpt")), "ModelCheckpoint judged no partial validation"
    assert job.output().count("evaluating at step") + job.output().count("validating at step") == 2  # one evaluation, on two ranks


def test_a_signal_during_a_save_stops_at_its_end_with_that_checkpoint(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    """HF's own save at step 10 takes 15 s; the stop asked during it is answered by it:
    the job stops at the next step, without a second 15 s save that would outlast the grace."""
    out, grace = tmp_path / "out", 24.0
    args = ("--save-strategy", "steps", "--save-steps", "10", "--save-time", "15", "--output-dir", str(out))
    job = launch(procs, jobs_dir, "hf-save", HF, *COMMON, *args, opts=("--nproc-per-node", "2", "--grace", "24"))
    assert signalled(job, "rank 0 saving at step 10", signal.SIGUSR1, grace) == EXIT_PREEMPTED, job.output()[-4000:]
    record, status = outcome(jobs_dir, "hf-save", cli)
    assert (record["state"], record["signals"], record["last_checkpoint"]) == ("stopped", ["SIGUSR1"], str(out / "checkpoint-10")), record
    assert record["reason"] == "save_and_stop (the checkpoint of step 10, finished after the stop was asked, is its checkpoint)", record
    assert (status["state"], status["exit_code"], status["why"]) == ("stopped", EXIT_PREEMPTED, record["reason"]), status
    stop = the_stop(status)
    assert (stop["state"], stop["result"]["checkpoint"], stop["result"]["saved_at_step"]) == ("completed", str(out / "checkpoint-10"), 10), stop
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10"] and job.output().count("saving at step") == 2  # one save, two ranks


FIRST = {
    # before the trainer exists (HF's model still loading), during the first step (Lightning's first batch loading)
    "before the trainer exists": (HF, ("--load-time", "600"), "rank 0 loading the model", signal.SIGTERM),
    "during the first step": (LIGHTNING, ("--first-batch-time", "600"), "rank 0 loading the first batch", signal.SIGUSR1),
}


@pytest.mark.parametrize("phase", sorted(FIRST))
def test_a_signal_before_any_step_finished_stops_at_once_with_nothing_to_save(phase: str, jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    """No step has finished, so nothing can be lost: the launcher stops every rank at once
    (no wait for a trainer or a first step that may come only after the grace), exit 75."""
    script, args, line, signum = FIRST[phase]
    out, job_id, grace = tmp_path / "out", "early", 300.0
    job = launch(procs, jobs_dir, job_id, script, *COMMON, *args, "--output-dir", str(out), opts=("--nproc-per-node", "2", "--grace", "300"))
    assert signalled(job, line, signum, grace) == EXIT_PREEMPTED, job.output()[-4000:]
    record, status = outcome(jobs_dir, job_id, cli)
    why = nothing_to_save_reason(signal.Signals(signum).name)
    assert (record["state"], record["reason"], record["signals"], record.get("last_checkpoint")) == ("stopped", why, [signal.Signals(signum).name], None)
    assert (status["state"], status["exit_code"], status["why"], status.get("commands") or []) == ("stopped", EXIT_PREEMPTED, why, []), status
    assert "nothing to save yet; stopping torchrun and its workers now" in job.output()
    assert not any(out.rglob("*.ckpt")) and not any(out.glob("checkpoint-*"))  # nothing written
