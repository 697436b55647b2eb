"""Issue 22: the knobs HF's Trainer and the Forgather framework's trainers honour, declared
by the control callback at train begin.

The quick tests drive the callback with objects shaped like each trainer's (their
``args``/``state``/``control``, a dataloader with or without a length, the framework's
``PeriodicFunction``), in this process, one rank: which knobs each configuration gets,
what a change writes into the trainer, and where ``max_steps`` may go. The real jobs
(two ranks, torchrun, gloo) follow, marked slow: HF with a linear schedule under
``forgather launch`` (``lr_scale`` on every rank at the same step and 100 steps later,
``save_every``, ``max_steps`` refused beyond what HF's loop reaches, extended, then
shortened below the step), and the framework's own trainers on Python 3.12.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.framework import framework_env
from support.launcher import START_TIMEOUT, launch
from support.processes import Proc, Procs
from support.records import final_status, read_record
from support.torchrun import end_step, ended_lines
from support.waiting import wait_for

from forgather_control.callback import Controller
from forgather_control.callback.forgather import Periods, declare_knobs
from forgather_control.callback.hf import TrainerControlCallback, _hf_last_step
from forgather_control.core.commands import KnobRefused
from forgather_control.core.env import ENV_CHECK_INTERVAL
from forgather_control.core.errors import EXIT_BAD_KNOB, EXIT_OK
from forgather_control.core.records import CommandOptions, KnobChange


# -- HF-shaped objects -----------------------------------------------------------------------
@dataclasses.dataclass
class HFArgs:
    output_dir: str = "/nonexistent"
    max_steps: int = 25
    num_train_epochs: float = 3.0
    gradient_accumulation_steps: int = 1
    save_strategy: str = "steps"
    eval_strategy: str = "no"
    logging_strategy: str = "steps"
    max_grad_norm: float = 1.0
    load_best_model_at_end: bool = False
    deepspeed: Any = None


@dataclasses.dataclass
class HFState:
    global_step: int = 0
    max_steps: int = 25
    epoch: float = 0.0
    logging_steps: int = 5
    eval_steps: int = 10
    save_steps: int = 500


@dataclasses.dataclass
class HFControl:
    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False


class Optimizer:
    """A torch optimizer's shape: parameter groups with a rate."""

    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr, "initial_lr": lr}]


class Scheduler:
    """A LambdaLR's shape: base rates it recomputes from."""

    def __init__(self, opt: Optimizer) -> None:
        self.base_lrs = [g["initial_lr"] for g in opt.param_groups]
        self._last_lr = list(self.base_lrs)


class Loader:
    def __init__(self, n: int | None) -> None:
        self.n = n

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("no length")
        return self.n


class HFRun:
    """The calls HF's loop makes to its callbacks, DefaultFlowCallback's rules included
    (it runs before ours), without transformers."""

    def __init__(self, ctl: Controller, batches: int | None = 10, **args: Any) -> None:
        self.args, self.state, self.control = HFArgs(**args), HFState(), HFControl()
        self.state.max_steps = self.args.max_steps
        self.opt = Optimizer(0.1)
        self.sched = Scheduler(self.opt)
        self.loader = Loader(batches)
        self.cb = TrainerControlCallback(ctl)
        self.saves: list[int] = []

    def kwargs(self) -> dict[str, Any]:
        return {"optimizer": self.opt, "lr_scheduler": self.sched, "train_dataloader": self.loader, "model": None}

    def begin(self) -> None:
        self.cb.on_train_begin(self.args, self.state, self.control, **self.kwargs())

    def step(self) -> None:
        s, a, c = self.state, self.args, self.control
        s.global_step += 1
        if a.save_strategy == "steps" and s.global_step % s.save_steps == 0:  # DefaultFlowCallback
            c.should_save = True
        if s.global_step >= s.max_steps:
            c.should_training_stop = True
            c.should_save = a.save_strategy == "steps"
        self.control = self.cb.on_step_end(a, s, c, **self.kwargs())
        if self.control.should_save:
            self.saves.append(s.global_step)
            self.control.should_save = False


def controller(jobs_dir: Path, job_id: str) -> Controller:
    return Controller(job_id=job_id, jobs_dir=jobs_dir, enable_http=False, signals=(), check_interval=0.0)


def set_knobs(ctl: Controller, **changes: Any) -> str:
    entry, _ = ctl.ledger.submit("set", options=CommandOptions(changes=[KnobChange(name=k, value=v) for k, v in changes.items()]))
    return entry.id


def test_hf_gets_the_knobs_its_configuration_honours(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-knobs")
    run = HFRun(ctl)
    run.begin()
    with ctl:
        knobs = {k.name: k for k in ctl.knobs.settings() or []}
        assert sorted(knobs) == ["log_every", "lr", "lr_scale", "max_grad_norm", "max_steps", "save_every"]  # eval is "no"
        assert (knobs["save_every"].value, knobs["log_every"].value, knobs["max_grad_norm"].value) == (500, 5, 1.0)
        # max_steps 25 at 10 steps an epoch: HF's loop runs 3 epochs, to step 30 at most
        assert (knobs["max_steps"].value, knobs["max_steps"].min, knobs["max_steps"].max) == (25, 1, 30)
        assert ctl.max_steps == 25


@pytest.mark.parametrize(
    "args, missing",
    [
        ({"save_strategy": "epoch"}, "save_every"),
        ({"save_strategy": "best"}, "save_every"),
        ({"logging_strategy": "epoch"}, "log_every"),
        ({"deepspeed": "ds.json"}, "max_grad_norm"),  # DeepSpeed's engine clips by its own config
    ],
)
def test_an_hf_interval_that_would_do_nothing_is_not_offered(jobs_dir: Path, args: dict[str, Any], missing: str) -> None:
    ctl = controller(jobs_dir, "hf-some")
    run = HFRun(ctl, **args)
    run.begin()
    with ctl:
        assert missing not in ctl.knobs and "lr_scale" in ctl.knobs


@pytest.mark.parametrize(
    "batches, args, last",
    [
        (10, {"max_steps": 25}, 30),  # the epoch max_steps falls in ends the loop
        (10, {"max_steps": 30}, 30),
        (10, {"max_steps": 25, "gradient_accumulation_steps": 3}, 28),  # 4 optimizer steps an epoch (the last of 1 batch), 7 epochs
        (10, {"max_steps": -1, "num_train_epochs": 2.5}, 30),  # epoch-based: ceil(2.5) epochs
        (None, {"max_steps": 25}, None),  # no length: sys.maxsize epochs, no bound
    ],
)
def test_hf_max_steps_is_bounded_by_the_epochs_its_loop_computed_at_start(batches: int | None, args: dict[str, Any], last: int | None) -> None:
    assert _hf_last_step(None, HFArgs(**args), Loader(batches)) == last


def test_hf_save_every_and_max_steps_change_what_the_flow_reads(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-set")
    run = HFRun(ctl, max_steps=25)
    run.begin()
    with ctl:
        run.step()
        set_knobs(ctl, save_every=4, max_steps=30, max_grad_norm=0.5)
        run.step()  # applied here, after the flow decided this step
        assert (run.state.save_steps, run.state.max_steps, run.args.max_grad_norm, ctl.max_steps) == (4, 30, 0.5, 30)
        while not run.control.should_training_stop:
            run.step()
        assert run.state.global_step == 30 and run.saves == [4, 8, 12, 16, 20, 24, 28, 30]
        # beyond what the loop reaches (3 epochs of 10): refused before anything is queued
        with pytest.raises(KnobRefused, match="max_steps must be at most 30, not 31"):
            set_knobs(ctl, max_steps=31)
        assert [str(e.command) for e in ctl.ledger.recent(10)] == ["set"]


def test_hf_max_steps_below_the_step_ends_training_there_as_the_flow_would(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-short")
    run = HFRun(ctl, max_steps=30)
    run.begin()
    with ctl:
        for _ in range(7):
            run.step()
        command = set_knobs(ctl, max_steps=3)
        run.step()
        entry = ctl.ledger.get(command)
        assert entry.state.value == "completed" and entry.step == 8
        assert run.control.should_training_stop and run.saves == [8] and run.state.max_steps == 3  # the end's save, save_strategy "steps"
    assert ctl.state.value == "finished"


def test_hf_lr_scale_scales_the_groups_and_the_schedulers_base_rates(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-lr")
    run = HFRun(ctl)
    run.begin()
    with ctl:
        set_knobs(ctl, lr_scale=0.5)
        run.step()
        assert run.opt.param_groups[0]["lr"] == run.opt.param_groups[0]["initial_lr"] == 0.05
        assert run.sched.base_lrs == [0.05] and ctl.knobs["lr_scale"] == 0.5


def test_hf_with_load_best_model_at_end_refuses_a_save_every_off_eval_every_when_it_is_sent(jobs_dir: Path) -> None:
    """A set that breaks HF's rule (the best checkpoint is one saved where it evaluated)
    is refused by rank 0 when it is sent, so nothing is queued and the sender hears why
    at once; it used to be accepted and then fail on every rank at the agreed step."""
    ctl = controller(jobs_dir, "hf-best")
    run = HFRun(ctl, eval_strategy="steps", load_best_model_at_end=True)
    run.state.save_steps = 20
    run.begin()
    with ctl:
        with pytest.raises(KnobRefused, match=r"load_best_model_at_end needs save_every \(15\) to be a multiple of eval_every \(10\)"):
            set_knobs(ctl, save_every=15)
        with pytest.raises(KnobRefused, match=r"save_every \(20\) to be a multiple of eval_every \(15\)"):
            set_knobs(ctl, eval_every=15)  # the other knob, against the value the first has now
        assert ctl.ledger.next_pending() is None  # nothing queued
        command = set_knobs(ctl, save_every=30, eval_every=15)  # both at once: judged together
        run.step()
        assert ctl.ledger.get(command).state.value == "completed" and (run.state.save_steps, run.state.eval_steps) == (30, 15)
        set_knobs(ctl, save_every=60)
        run.step()
        assert run.state.save_steps == 60


def test_without_load_best_model_at_end_save_every_is_free(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "hf-free")
    run = HFRun(ctl, eval_strategy="steps")
    run.state.save_steps = 20
    run.begin()
    with ctl:
        command = set_knobs(ctl, save_every=15)
        run.step()
        assert ctl.ledger.get(command).state.value == "completed" and run.state.save_steps == 15


# -- framework-shaped objects ----------------------------------------------------------------
class PeriodicFunction:
    """forgather.ml.trainer.periodic_function.PeriodicFunction: fires ``period`` steps
    after its last reset."""

    def __init__(self, period: int) -> None:
        self.period, self.rel_step = period, 0

    def step(self) -> bool:
        self.rel_step += 1
        return self.rel_step >= self.period

    def reset(self) -> None:
        self.rel_step = 0


@dataclasses.dataclass
class FGArgs:
    output_dir: str = "/nonexistent"
    save_strategy: str = "steps"
    eval_strategy: str = "no"
    logging_strategy: str = "steps"
    save_steps: int = 1000
    eval_steps: int = 100
    logging_steps: int = 50
    max_grad_norm: float | None = None
    fuse_optim_with_backward: bool = False


@dataclasses.dataclass
class FGState:
    global_step: int = 0
    max_steps: int = 40
    epoch: float = 0.0
    save_steps: int = 1000


class FGTrainer:
    """The parts of ``forgather.ml.trainer.Trainer._train_loop`` the knobs reach: the
    loop's PeriodicFunction locals handed to ``_maybe_log_save_evaluate`` every step, and
    its end where ``global_step >= self.max_steps``."""

    def __init__(self, callback: TrainerControlCallback, **args: Any) -> None:
        self.args, self.state, self.control = FGArgs(**args), FGState(), HFControl()
        self.max_steps = 40
        self.optimizer = Optimizer(0.1)
        self.lr_scheduler = Scheduler(self.optimizer)
        self.callback = callback
        self.saves: list[int] = []

    def _maybe_log_save_evaluate(self, loss_log: Any, total_norm_log: Any, periodic_log: Any, periodic_eval: Any, periodic_save: Any) -> None:
        if periodic_save.step():
            periodic_save.reset()
            self.saves.append(self.state.global_step)

    def kwargs(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler, "train_dataloader": None, "model": None}

    def begin(self) -> None:
        self.periodic = [PeriodicFunction(self.args.logging_steps), PeriodicFunction(self.args.eval_steps), PeriodicFunction(self.args.save_steps)]
        self.callback.on_train_begin(self.args, self.state, self.control, **self.kwargs())

    def step(self) -> bool:
        """One step of the loop; False once it ends."""
        self.state.global_step += 1
        self.callback.on_step_end(self.args, self.state, self.control, **self.kwargs())
        self._maybe_log_save_evaluate([], [], *self.periodic)
        return self.state.global_step < self.max_steps


FGTrainer.__module__ = "forgather.ml.trainer.trainer"


def test_the_frameworks_trainer_gets_its_knobs_and_a_change_reaches_its_loop(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-knobs")
    cb = TrainerControlCallback(ctl)
    trainer = FGTrainer(cb)
    cb.bind(trainer)
    trainer.begin()
    with ctl:
        knobs = {k.name: k for k in ctl.knobs.settings() or []}
        assert sorted(knobs) == ["log_every", "lr", "lr_scale", "max_grad_norm", "max_steps", "save_every"]  # eval is "no"
        assert (knobs["max_steps"].value, knobs["max_steps"].max, knobs["max_grad_norm"].value) == (40, None, 0.0)  # its loop has no other bound
        trainer.step()
        set_knobs(ctl, save_every=5, max_steps=60, max_grad_norm=2.0)
        while trainer.step():
            pass
        assert (trainer.max_steps, trainer.state.max_steps, trainer.state.save_steps, trainer.args.max_grad_norm) == (60, 60, 5, 2.0)
        assert trainer.state.global_step == 60 and trainer.saves == list(range(5, 61, 5))  # counted from the last save (none)


def test_the_frameworks_max_steps_below_the_step_ends_its_loop_there(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-short")
    cb = TrainerControlCallback(ctl)
    trainer = FGTrainer(cb)
    cb.bind(trainer)
    trainer.begin()
    with ctl:
        for _ in range(5):
            trainer.step()
        command = set_knobs(ctl, max_steps=2)
        assert not trainer.step()
        assert trainer.state.global_step == 6 and ctl.ledger.get(command).step == 6
    assert ctl.state.value == "finished"


def test_the_frameworks_knobs_need_its_trainer_and_fused_steps_cannot_clip(jobs_dir: Path) -> None:
    ctl = controller(jobs_dir, "fg-fused")
    trainer = FGTrainer(TrainerControlCallback(ctl), fuse_optim_with_backward=True, save_strategy="no")
    with ctl:
        assert declare_knobs(ctl, trainer, Periods()) == ["max_steps", "log_every"]
        assert declare_knobs(ctl, None, Periods()) == []


def test_periods_wrap_the_loops_method_once(jobs_dir: Path) -> None:
    trainer = FGTrainer(TrainerControlCallback(controller(jobs_dir, "fg-once")))
    periods = Periods()
    assert periods.attach(trainer) and periods.attach(trainer)
    first = trainer._maybe_log_save_evaluate
    assert Periods().attach(trainer) and trainer._maybe_log_save_evaluate.__wrapped__ is first.__wrapped__  # replaced, not stacked
    assert not Periods().attach(object())


# -- real jobs: two ranks, torchrun, gloo ------------------------------------------------------
#: A tiny GPT-2 under HF's Trainer with a linear schedule over ``--max-steps`` (``forgather
#: launch`` injects the control callback). Each rank writes its facts to
#: ``RECORDS/rank-R.jsonl``: at every step's begin the rate the step uses and the factor the
#: script's schedule gives (``lr_lambdas[0]`` at the scheduler's step), ``state.save_steps``
#: and ``state.max_steps``; each save. At each ``--gates`` step both ranks wait (after the
#: step's flow, before the control callback) until the test writes ``RECORDS/go-STEP``.
HF_SCRIPT = """
import argparse, json, os, time
from pathlib import Path
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

p = argparse.ArgumentParser()
p.add_argument("--output-dir"); p.add_argument("--records"); p.add_argument("--gates")
p.add_argument("--max-steps", type=int); p.add_argument("--save-steps", type=int)
a = p.parse_args()
rank, records, gates = int(os.environ.get("RANK", "0")), Path(a.records), {int(g) for g in a.gates.split(",")}


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n):
        self.data = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


class Record(TrainerCallback):
    def __init__(self):
        self.out = open(records / f"rank-{rank}.jsonl", "a", buffering=1)

    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        sched = getattr(lr_scheduler, "scheduler", lr_scheduler)
        row = {"step": state.global_step, "lr": optimizer.param_groups[0]["lr"], "factor": sched.lr_lambdas[0](sched.last_epoch),
               "save_steps": state.save_steps, "max_steps": state.max_steps}
        self.out.write(json.dumps(row) + "\\n")

    def on_save(self, args, state, control, **kw):
        self.out.write(json.dumps({"saved": state.global_step}) + "\\n")

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in gates:
            (records / f"waiting-{state.global_step}-{rank}").touch()
            while not (records / f"go-{state.global_step}").exists():
                time.sleep(0.02)


torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0))
targs = TrainingArguments(
    output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=4, learning_rate=1e-3, lr_scheduler_type="linear",
    save_strategy="steps", save_steps=a.save_steps, logging_steps=1000, report_to="none", use_cpu=True, ddp_backend="gloo",
    dataloader_num_workers=0, disable_tqdm=True, seed=0,
)
trainer = Trainer(model=model, args=targs, train_dataset=Tokens(4096), callbacks=[Record()])
out = trainer.train()
print(f"rank {rank} pid {os.getpid()} ended at step {out.global_step} aborted=False", flush=True)
"""


#: A check about every 0.1 s (not 1 s): a change sent at a gate applies within a few
#: steps of it, well before the run's own end, however fast the steps.
CHECKS = {ENV_CHECK_INTERVAL: "0.1"}


def rows(records: Path, rank: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (records / f"rank-{rank}.jsonl").read_text().splitlines() if line.strip()]


def wait_gate(records: Path, step: int, job: Proc) -> None:
    """Both ranks wait at ``step``'s gate."""

    def there() -> bool:
        if job.popen.poll() is not None:
            raise AssertionError(f"the job ended before step {step} ({job.popen.returncode}):\n{job.output()[-4000:]}")
        return all((records / f"waiting-{step}-{r}").exists() for r in (0, 1))

    wait_for(there, timeout=START_TIMEOUT, interval=0.1, what=f"both ranks at step {step}")


def post_set(jobs_dir: Path, job_id: str, changes: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """``POST /jobs/ID/control`` a set, as any HTTP client would: the status and the body."""
    endpoint = read_record(jobs_dir, job_id, "endpoint.json")
    r = httpx.post(
        f"{endpoint['url']}/jobs/{job_id}/control",
        json={"command": "set", "options": {"changes": changes}},
        headers={"Authorization": f"Bearer {endpoint['token']}"},
        timeout=30,
    )
    return r.status_code, r.json()


def receipt(status: dict[str, Any], command_id: str) -> dict[str, Any]:
    return next(c for c in status.get("commands") or [] if c["id"] == command_id)


def rate_switch(records: Path, at: int, scale: float) -> list[dict[str, Any]]:
    """Each rank's rows: the rate is the schedule's before step ``at`` and ``scale`` times
    it from there (a row's step is the steps done: the rate is the next step's). Returns
    rank 0's rows, which rank 1's equal."""
    mine = rows(records, 0)
    assert [r for r in rows(records, 1) if "step" in r] == [r for r in mine if "step" in r], "the ranks' rates differ"
    steps = [r for r in mine if "step" in r]
    base = steps[0]["lr"] / steps[0]["factor"]
    for r in steps:
        if r["factor"] > 0:
            assert r["lr"] == pytest.approx((scale if r["step"] >= at else 1.0) * base * r["factor"], rel=1e-9), r
    return steps


@pytest.mark.slow  # forgather launch, torchrun, transformers
@pytest.mark.timeout(600)
def test_hf_knobs_on_two_ranks_lr_scale_save_every_and_max_steps_refused_extended_shortened(jobs_dir: Path, procs: Procs, cli: Any, tmp_path: Path) -> None:
    script, records, out, job_id = tmp_path / "knobs_hf.py", tmp_path / "records", tmp_path / "out", "hf-knobs"
    script.write_text(HF_SCRIPT)
    records.mkdir()
    # 4096 samples, 4 a rank: 512 steps an epoch, so a run of 300 steps can reach step 512
    args = ("--output-dir", str(out), "--records", str(records), "--gates", "5,310", "--max-steps", "300", "--save-steps", "1000")
    job = launch(procs, jobs_dir, job_id, script, *args, opts=("--nproc-per-node", "2"), **CHECKS)
    wait_gate(records, 5, job)

    knob = next(k for k in read_record(jobs_dir, job_id, "status.json")["knobs"] if k["name"] == "max_steps")
    assert (knob["value"], knob["min"], knob["max"]) == (300, 1, 512), knob
    refused = cli("control", "set", job_id, "max_steps=100000")
    assert refused.code == EXIT_BAD_KNOB and "max_steps must be at most 512, not 100000" in refused.err, refused
    code, body = post_set(jobs_dir, job_id, [{"name": "max_steps", "value": 100000}])
    assert (code, body.get("refused")) == (422, "knob") and "max_steps must be at most 512" in body["detail"], body
    assert not read_record(jobs_dir, job_id, "status.json").get("commands"), "a refused set queued something"

    sent = cli("control", "set", job_id, "lr_scale=0.5", "save_every=40", "max_steps=400", "--json")
    assert sent.code == EXIT_OK, sent
    first = sent.json()["id"]
    (records / "go-5").touch()
    wait_gate(records, 310, job)  # past the script's 300: the run was extended
    applied = receipt(read_record(jobs_dir, job_id, "status.json"), first)
    at = applied["step"]
    assert applied["state"] == "completed" and at >= 5, applied
    assert applied["result"]["changes"] == [
        {"name": "lr_scale", "value": 0.5, "old": 1.0},
        {"name": "save_every", "value": 40, "old": 1000},
        {"name": "max_steps", "value": 400, "old": 300},
    ], applied

    sent = cli("control", "set", job_id, "max_steps=10", "--json")  # below the step: ends there
    assert sent.code == EXIT_OK, sent
    second = sent.json()["id"]
    (records / "go-310").touch()
    assert job.wait(START_TIMEOUT) == EXIT_OK, job.output()[-4000:]
    final = final_status(jobs_dir, job_id)
    end = receipt(final, second)["step"]
    assert final["state"] == "finished" and final["step"] == end and 310 <= end < 400, final  # before the run's own end
    lines = ended_lines(job)
    assert {r: end_step(line) for r, line in lines.items()} == {0: end, 1: end}, job.output()[-4000:]

    steps = rate_switch(records, at, 0.5)
    assert any(r["step"] == at + 100 and r["factor"] > 0 for r in steps), "a rate 100 steps after the change, still halved"
    assert all((r["save_steps"], r["max_steps"]) == ((1000, 300) if r["step"] < at else (40, 400)) for r in steps)
    saved = [r["saved"] for r in rows(records, 0) if "saved" in r]
    assert saved == [s for s in range(40, end, 40) if s > at] + [end], saved  # the new interval, and the end's save
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == saved


#: The same facts from the Forgather framework's ``AccelTrainer`` on two ranks (Python 3.12;
#: ``forgather launch`` attaches the callback), its default linear schedule over
#: ``--max-steps``. accelerate steps the scheduler once a rank per optimizer step, so the
#: factor reaches 0 at half of ``--max-steps`` here. ``clip`` is ``args.max_grad_norm``.
FG_SCRIPT = (
    """
import argparse, json, os, time
from pathlib import Path
import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--output-dir"); p.add_argument("--records"); p.add_argument("--gates")
p.add_argument("--max-steps", type=int); p.add_argument("--save-steps", type=int)
a = p.parse_args()
rank, records, gates = int(os.environ.get("RANK", "0")), Path(a.records), {int(g) for g in a.gates.split(",")}
dist.init_process_group("gloo")  # on CPU, before the framework's DistributedEnvironment
from accelerate import Accelerator
from forgather.ml.distributed import DistributedEnvironment
from forgather.ml.trainer.accelerate.accel_trainer import AccelTrainer, AccelTrainingArguments


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x)


class Samples(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 16, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True) * 0.1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}
"""
    + HF_SCRIPT[HF_SCRIPT.index("class Record") : HF_SCRIPT.index("torch.manual_seed(0)")]
    .replace('"max_steps": state.max_steps}', '"max_steps": state.max_steps, "clip": args.max_grad_norm}')
    .replace("(TrainerCallback)", "")
    + """
torch.manual_seed(0)
targs = AccelTrainingArguments(
    output_dir=a.output_dir, max_steps=a.max_steps, num_train_epochs=1_000_000, per_device_train_batch_size=8, logging_steps=1000,
    save_strategy="steps", save_steps=a.save_steps, save_total_limit=1000, eval_strategy="no", use_cpu=True, seed=1,
    dataloader_num_workers=0, learning_rate=1e-3, lr_scheduler_type="linear",
)
trainer = AccelTrainer(
    args=targs, accelerator=Accelerator(cpu=True), compute_loss_func=torch.nn.functional.mse_loss, model=Tiny(),
    train_dataset=Samples(4096, 0), eval_dataset=Samples(64, 1), distributed_env=DistributedEnvironment(),
)
trainer.add_callback(Record())
out = trainer.train()
print(f"rank {rank} pid {os.getpid()} ended at step {out.global_step} aborted=False", flush=True)
"""
)


@pytest.mark.slow  # Python 3.12 with the framework, forgather launch, torchrun
@pytest.mark.timeout(900)
def test_the_frameworks_accel_trainer_on_two_ranks_lr_scale_save_every_max_grad_norm_and_max_steps(
    framework_py: Path, jobs_dir: Path, procs: Procs, cli: Any, tmp_path: Path
) -> None:
    script, records, out, job_id = tmp_path / "knobs_fg.py", tmp_path / "records", tmp_path / "out", "fg-knobs"
    script.write_text(FG_SCRIPT)
    records.mkdir()
    argv = [str(framework_py.parent / "forgather"), "launch", "--jobs-dir", str(jobs_dir), "--job-id", job_id, "--nproc-per-node", "2", str(script)]
    argv += ["--output-dir", str(out), "--records", str(records), "--gates", "5,610", "--max-steps", "600", "--save-steps", "1000"]
    job = procs.start(argv, env=framework_env(framework_py, jobs_dir, **CHECKS), name="launch")
    wait_gate(records, 5, job)

    knobs = {k["name"]: k for k in read_record(jobs_dir, job_id, "status.json")["knobs"]}
    assert sorted(knobs) == ["log_every", "lr", "lr_scale", "max_grad_norm", "max_steps", "save_every"], knobs  # eval is "no"
    assert (knobs["max_steps"]["value"], knobs["max_steps"].get("max")) == (600, None), knobs  # its epoch loop has no end of its own
    sent = cli("control", "set", job_id, "lr_scale=0.5", "save_every=100", "max_steps=700", "max_grad_norm=1", "--json")
    assert sent.code == EXIT_OK, sent
    first = sent.json()["id"]
    (records / "go-5").touch()
    wait_gate(records, 610, job)  # past the script's 600 (and past 2 epochs of 256 steps)
    applied = receipt(read_record(jobs_dir, job_id, "status.json"), first)
    at = applied["step"]
    assert applied["state"] == "completed" and at >= 5, applied

    sent = cli("control", "set", job_id, "max_steps=10", "--json")
    assert sent.code == EXIT_OK, sent
    second = sent.json()["id"]
    (records / "go-610").touch()
    assert job.wait(START_TIMEOUT) == EXIT_OK, job.output()[-4000:]
    final = final_status(jobs_dir, job_id)
    end = receipt(final, second)["step"]
    assert final["state"] == "finished" and final["step"] == end and 610 <= end < 700, final  # before the run's own end
    assert {r: end_step(line) for r, line in ended_lines(job).items()} == {0: end, 1: end}, job.output()[-4000:]

    steps = rate_switch(records, at, 0.5)
    assert any(r["step"] == at + 100 and r["factor"] > 0 for r in steps), "a rate 100 steps after the change, still halved"
    assert all((r["save_steps"], r["max_steps"], r["clip"]) == ((1000, 600, None) if r["step"] < at else (100, 700, 1.0)) for r in steps)
    # The framework counts an interval from its last save (none before): the first at
    # step 100, or at once if the change came later; then every 100; the end saves too.
    saved = [r["saved"] for r in rows(records, 0) if "saved" in r]
    assert saved == [r["saved"] for r in rows(records, 1) if "saved" in r]
    periodic = list(range(max(at, 100), end + 1, 100))
    assert saved == periodic + ([end] if periodic[-1] != end else []), saved
    assert sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")) == saved
