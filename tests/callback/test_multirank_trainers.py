"""Issue 3, acceptance 1 and 2: each trainer example on two ranks under real torchrun
(gloo, CPU), one scenario for all of them so they cannot drift apart.

One job takes save (a complete checkpoint, evaluated first: every trainer has evaluation
configured), ``save --no-eval`` from the CLI over the file channel (no evaluation), eval
(metrics, and the checkpoint the trainer's own policy wrote after it, if any) and
save-stop (both ranks end at the step it applied at, exit code 0, the same agreement
trace); a second job resumes
from the commanded checkpoint and is aborted: both ranks end at the abort's step, nothing
is saved, and the status says aborted. ``TRAINERS`` holds what genuinely differs: the
script, what a checkpoint looks like, and how the resumed run is checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.records import final_status
from support.torchrun import TIMEOUT, command, end_step, ended_lines, read_traces, torchrun, wait_client, wait_step
from support.waiting import wait_for

from forgather_control.client import JobHandle
from forgather_control.core.records import Receipt

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # real torchrun jobs on 2 cores shared with other test runs


def hf_checkpoint(entry: Receipt, out: Path) -> None:
    """A Trainer checkpoint folder: model, optimizer, scheduler, state and both ranks' RNG."""
    ckpt = Path(entry.result.checkpoint)
    assert ckpt.name == f"checkpoint-{entry.step}" and ckpt.parent == out, entry
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= names, names
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= names, names  # both ranks wrote their part
    assert (ckpt / "trainer_state.json").is_file()


def lightning_checkpoint(entry: Receipt, out: Path) -> None:
    """Lightning's checkpoint file, at the commanded step, with weights and optimizer."""
    ckpt = Path(entry.result.checkpoint)
    assert ckpt.name == f"forgather-step={entry.step}.ckpt" and ckpt.is_file(), entry
    import torch  # here: every xdist worker collects this module, and torch takes seconds to import

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == entry.step and state["state_dict"] and state["optimizer_states"]


def plain_checkpoint(entry: Receipt, out: Path) -> None:
    """The plain loop's torch.save: step, model and optimizer."""
    ckpt = Path(entry.result.checkpoint)
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["step"] == entry.step and state["model"] and state["optimizer"]["param_groups"]


def model_checkpoint(entry: Receipt, out: Path) -> None:
    """Lightning's ModelCheckpoint saves after every validation here: the eval names it."""
    ckpt = Path(entry.result.checkpoint)
    assert ckpt.parent == out / "checkpoints" and re.fullmatch(rf"epoch=\d+-step={entry.step}\.ckpt", ckpt.name) and ckpt.is_file(), entry
    assert entry.reason == "the trainer's checkpoint callback (ModelCheckpoint) wrote this checkpoint after the evaluation", entry


def no_checkpoint(entry: Receipt, out: Path) -> None:
    assert entry.result.checkpoint is None and entry.reason is None, entry


def folder(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def model_checkpoint_after_eval(client: JobHandle, out: Path) -> list[str]:
    """Lightning: a validation makes ModelCheckpoint save (it saves after validation in
    this setup); returns its file, which the abort must neither add to nor replace."""
    ev = command(client, "eval")
    assert ev.state == "completed", ev
    return wait_for(lambda: sorted(p.name for p in (out / "checkpoints").glob("epoch=*.ckpt")), what="ModelCheckpoint's file")


@dataclass(frozen=True)
class Trainer:
    script: str
    job: str  # job id prefix
    step_time: str
    checkpoint: Callable[[Receipt, Path], None]  # checks a save's ledger entry against the output dir
    eval_metric: str  # the metric an eval reports
    status_metrics: frozenset[str]  # rank 0's status shows at least these
    #: a commanded save evaluates first (evaluation is configured), and reports this metric
    save_reports: str
    #: what an eval's receipt says of a checkpoint the trainer's own policy wrote after it
    eval_checkpoint: Callable[[Receipt, Path], None] = no_checkpoint
    status_epoch: bool = False
    #: the resumed job: extra arguments, and whether it writes into the first job's folder
    resume_args: tuple[str, ...] = ()
    resume_into_same_dir: bool = True
    #: what a job's output folder holds (everything in it)
    files: Callable[[Path], list[str]] = folder
    #: run before the abort on the resumed job: what it must still hold after the abort
    before_abort: Callable[[JobHandle, Path], list[str]] | None = None


TRAINERS = {
    "hf": Trainer(
        script="hf_trainer.py",
        job="hf",
        step_time="0.02",
        checkpoint=hf_checkpoint,
        eval_metric="eval_loss",
        status_metrics=frozenset({"loss", "learning_rate"}),
        save_reports="eval_loss",
        status_epoch=True,
        resume_args=("--save-strategy", "epoch"),  # nothing saved after the abort, not even at epoch end
    ),
    "lightning": Trainer(
        script="lightning_trainer.py",
        job="pl",
        step_time="0.02",
        checkpoint=lightning_checkpoint,
        eval_metric="val_loss",
        status_metrics=frozenset({"loss"}),
        save_reports="val_loss",
        eval_checkpoint=model_checkpoint,
        resume_into_same_dir=False,
        files=lambda out: folder(out / "checkpoints"),
        before_abort=model_checkpoint_after_eval,
    ),
    "plain": Trainer(
        script="plain_loop.py",
        job="pd",
        step_time="0.01",
        checkpoint=plain_checkpoint,
        eval_metric="eval_loss",
        status_metrics=frozenset({"loss"}),
        save_reports="eval_loss",
    ),
}


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_two_ranks_save_eval_save_stop_then_resume_and_abort(kind: str, jobs_dir: Path, procs, cli, tmp_path: Path) -> None:
    t = TRAINERS[kind]
    out = tmp_path / "out"
    traces = tmp_path / "traces"
    first, second = f"{t.job}-a", f"{t.job}-b"
    common = ("--step-time", t.step_time)
    job = torchrun(procs, t.script, "--output-dir", str(out), "--job-id", first, *common, jobs_dir=jobs_dir, env={"FORGATHER_TRACE_AGREEMENT": str(traces)})
    client = wait_client(jobs_dir, first, job)
    wait_step(client, 3)

    saved = command(client, "save")
    assert saved.state == "completed", saved
    t.checkpoint(saved, out)
    ckpt = Path(saved.result.checkpoint)
    assert t.save_reports in saved.result.metrics, saved  # evaluation is configured: evaluated first

    res = cli("control", "save", first, "--no-eval", "--wait", "--json", "--channel", "file", timeout=TIMEOUT)
    assert res.code == 0, res.err
    quick = res.json()
    assert (quick["state"], quick["options"], quick["result"].get("metrics")) == ("completed", {"evaluate": False}, None), quick
    assert Path(quick["result"]["checkpoint"]).exists()

    ev = command(client, "eval")
    assert ev.state == "completed" and isinstance(ev.result.metrics.get(t.eval_metric), float), ev
    t.eval_checkpoint(ev, out)

    st = client.status()
    assert st.world_size == 2 and st.max_steps == 1_000_000 and st.state == "running", st
    assert st.last_checkpoint == quick["result"]["checkpoint"]
    assert t.status_metrics <= set(st.metrics), st.metrics
    if t.status_epoch:
        assert st.epoch is not None, st

    stop = command(client, "save-stop")
    assert stop.state == "completed", stop
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1}, job.output()[-3000:]
    assert end_step(lines[0]) == end_step(lines[1]) == stop.step
    t.checkpoint(stop, out)  # the stop's checkpoint is as complete as a save's
    final = final_status(jobs_dir, first)
    assert final["state"] == "stopped" and not (jobs_dir / first / "endpoint.json").exists(), final
    tr = read_traces(traces)
    assert set(tr) == {0, 1} and tr[0] == tr[1] and len(tr[0]) >= 4  # the same checks, in the same order

    # The commanded checkpoint resumes a second job (from its step, not from 0); then abort.
    out2 = out if t.resume_into_same_dir else tmp_path / "out2"
    kept = t.files(out2)
    job2 = torchrun(
        procs,
        t.script,
        "--output-dir",
        str(out2),
        "--job-id",
        second,
        *common,
        "--resume",
        str(ckpt),
        *t.resume_args,
        jobs_dir=jobs_dir,
        name=f"{t.job}-resume",
    )
    client2 = wait_client(jobs_dir, second, job2)
    wait_step(client2, saved.step + 2)
    if t.before_abort:
        kept = t.before_abort(client2, out2)
    ab = command(client2, "abort")
    assert ab.state == "completed" and ab.step > saved.step, ab  # resumed from the checkpoint's step
    assert job2.wait(TIMEOUT) == 0, job2.output()[-3000:]
    lines = ended_lines(job2)
    assert set(lines) == {0, 1} and all("aborted=True" in line for line in lines.values()), job2.output()[-3000:]
    assert end_step(lines[0]) == end_step(lines[1]) == ab.step
    assert t.files(out2) == kept, (t.files(out2), kept, ab)  # nothing saved at or after the abort
    final = final_status(jobs_dir, second)
    assert final["state"] == "aborted" and final["resume_point"] is None, final  # the abort recorded no resume point
