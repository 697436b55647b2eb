"""Lightning's live knobs (issue 22): what the control callback declares at train start
for the trainer it finds, and that each change lands where Lightning reads it.

In one process (the set sent over the real server at a chosen step applies at that
step): the learning rate halves in every step after it and the schedule keeps it,
ModelCheckpoint saves on the new interval, validation and logging run on theirs, the
clipping value reaches the module each step, max_steps extends the run and then, set
below the current step, ends it finished. On two real ranks (torchrun, gloo): the
rates of both ranks halve at the same step and stay halved 100 steps on.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from support.env import base_env
from support.knobs import post_set, read_steps, set_and_wait
from support.paths import REPO
from support.processes import Procs
from support.records import final_status
from support.torchrun import TIMEOUT, end_step, ended_lines, torchrun_argv, wait_client, wait_step

from forgather_control.core import read_json
from forgather_control.core.records import KnobChange

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the real Lightning Trainer: slow (support.tiers)

ALL = {"lr", "lr_scale", "max_steps", "log_every", "save_every", "eval_every", "max_grad_norm"}


def fit(tmp_path: Path, jobs_dir: Path, job_id: str, at: dict[int, Any], **kw: Any) -> tuple[Any, Any, Any]:
    """``support.lightning_trainer.fit``, imported when a test runs (not when pytest collects)."""
    pytest.importorskip("lightning.pytorch")
    from support.lightning_trainer import fit as fit_trainer

    return fit_trainer(tmp_path, jobs_dir, job_id, at, **kw)


def entries(jobs_dir: Path, job_id: str) -> dict[str, dict]:
    return {e["id"]: e for e in read_json(jobs_dir / job_id / "status.json")["commands"]}


def rate(step: int, scale: float = 1.0) -> float:
    """``KnobModule``'s schedule: the rate step ``step`` trains with."""
    return 0.01 * scale * (1.0 - 0.1 * (step - 1) / 1000)


@pytest.mark.xdist_group("trainers-in-process")
def test_each_knob_lands_where_lightning_reads_it_at_the_step_it_is_set(tmp_path: Path, jobs_dir: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from support.lightning_trainer import KnobModule

    saves = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=50, save_top_k=-1)
    script_key = saves.state_key
    module = KnobModule()
    knobs = {"lr_scale": 0.5, "save_every": 7, "eval_every": 10, "log_every": 3, "max_grad_norm": 0.25}
    trainer, driver, ctl = fit(
        tmp_path,
        jobs_dir,
        "knobs",
        {5: knobs, 20: {"max_steps": 100}, 70: {"max_steps": 3}},
        max_steps=60,
        module=module,
        callbacks=[saves],
        logger=CSVLogger(tmp_path / "logs", name="run", version=0),
        val_check_interval=40,
        check_val_every_n_epoch=None,
        gradient_clip_val=1.0,
        log_every_n_steps=50,
    )
    assert {k.name for k in ctl.controller.knobs.settings()} == ALL
    e = entries(jobs_dir, "knobs")
    first, longer, shorter = (e[driver.sent[s]] for s in (5, 20, 70))
    assert (first["state"], first["step"]) == ("completed", 5), first
    assert {c["name"]: (c["old"], c["value"]) for c in first["result"]["changes"]} == {
        "lr_scale": (1.0, 0.5),
        "save_every": (50, 7),
        "eval_every": (40, 10),
        "log_every": (50, 3),
        "max_grad_norm": (1.0, 0.25),
    }
    # the rate: halved from the step after the change on, the schedule going on from there
    assert [driver.rates[s] for s in range(1, 6)] == pytest.approx([rate(s) for s in range(1, 6)])
    assert [driver.rates[s] for s in range(6, 71)] == pytest.approx([rate(s, 0.5) for s in range(6, 71)])
    # max_steps: 60 -> 100 carries the run past 60; 3, below step 70, ends it there, finished
    assert longer["result"]["changes"] == [{"name": "max_steps", "value": 100, "old": 60}]
    assert (shorter["state"], shorter["step"], shorter["result"]["changes"]) == ("completed", 70, [{"name": "max_steps", "value": 3, "old": 100}])
    assert trainer.global_step == 70 and read_json(jobs_dir / "knobs" / "status.json")["state"] == "finished"
    # ModelCheckpoint on the new interval (the old one, 50, never comes); its state keeps the script's key
    assert driver.saves == list(range(7, 71, 7))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(f"epoch={(s - 1) // 16}-step={s}.ckpt" for s in range(7, 71, 7))
    import torch

    assert script_key in torch.load(tmp_path / "ckpt" / "epoch=4-step=70.ckpt", weights_only=False)["callbacks"]
    assert driver.validations == list(range(10, 71, 10))  # every 10 steps, not 40
    assert {s: v for s, v in module.clipped.items() if s <= 70} == {s: 1.0 if s <= 5 else 0.25 for s in range(1, 71)}
    with open(tmp_path / "logs" / "run" / "version_0" / "metrics.csv") as f:
        logged = sorted({int(row["step"]) for row in csv.DictReader(f) if row.get("train_loss")})
    assert logged == list(range(5, 70, 3)), logged  # every 3 steps from the change on (Lightning counts them its way), none at 50


@pytest.mark.xdist_group("trainers-in-process")
def test_only_what_the_trainer_honours_is_declared_and_max_epochs_bounds_max_steps(tmp_path: Path, jobs_dir: Path) -> None:
    from forgather_control.core.knobs import KnobError

    # ModelCheckpoint per epoch, validation once an epoch (a fraction), no clipping: none of
    # their knobs; max_epochs=2 of 16 steps bounds max_steps at 32
    trainer, _, ctl = fit(tmp_path, jobs_dir, "few", {}, max_steps=-1, max_epochs=2)
    assert trainer.global_step == 32
    settings = {k.name: k for k in ctl.controller.knobs.settings()}
    assert set(settings) == {"lr", "lr_scale", "max_steps", "log_every"}
    assert (settings["max_steps"].value, settings["max_steps"].max, settings["log_every"].value) == (32, 32, 50)
    with pytest.raises(KnobError, match="max_steps must be at most 32, not 33"):
        ctl.controller.knobs.vet([KnobChange(name="max_steps", value=33)])


def test_lr_scale_on_two_ranks_halves_both_at_the_same_step_and_the_schedule_keeps_it(jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    argv = torchrun_argv(REPO / "tests" / "support" / "lightning_knobs_job.py", "--output-dir", str(tmp_path / "out"), "--trace-dir", str(trace))
    job = procs.start(argv, env=base_env(jobs_dir, FORGATHER_JOB_ID="plk"), name="lightning-knobs")
    client = wait_client(jobs_dir, "plk", job)
    before = wait_step(client, 3)
    assert {k.name for k in before.knobs or ()} == ALL, before.knobs
    for bad in ({"save_every": 0}, {"eval_every": 1.5}, {"nope": 1}):
        code, body = post_set(jobs_dir, "plk", **bad)
        assert (code, body.get("refused")) == (422, "knob"), (bad, body)
    assert client.status().commands == before.commands  # nothing queued

    half = set_and_wait(client, lr_scale=0.5)
    assert half.result.changes == [KnobChange(name="lr_scale", value=0.5, old=1.0)]
    wait_step(client, half.step + 105)
    end = set_and_wait(client, max_steps=1)  # below the current step: the run ends there
    assert job.wait(TIMEOUT) == 0, job.output()[-4000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1} and end_step(lines[0]) == end_step(lines[1]) == end.step, job.output()[-3000:]
    assert final_status(jobs_dir, "plk")["state"] == "finished"
    for rank in (0, 1):
        # each step's rate over the script's schedule: 1 up to the change's step, 0.5 from the next on
        ratio = {r["step"]: r["lr"] / (0.01 * (1.0 - 0.5 * (r["step"] - 1) / 2000)) for r in read_steps(trace, rank)}
        assert [s for s, r in ratio.items() if r != pytest.approx(1.0)] == list(range(half.step + 1, end.step + 1)), rank
        assert all(r == pytest.approx(0.5) for s, r in ratio.items() if s > half.step), rank
        assert max(ratio) >= half.step + 100  # the schedule went on 100 steps and kept the scale
