"""A stop in every phase of a run, in one process (no torch): before the first step it
ends the process at once, nothing to save yet; between evaluation batches it cuts the
evaluation short at the step it belongs to; asked during a save, that save answers it.
And the one save rule: ``save`` evaluates first when evaluation is configured, unless
``--no-eval``. The same phases on real HF and Lightning jobs under ``forgather launch``
are tests/launcher/test_signal_phases.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from forgather_control.callback import Controller
from forgather_control.callback.signals import StoppedEarly
from forgather_control.core import Command, read_json
from forgather_control.core.attachment import nothing_to_save_reason
from forgather_control.core.records import CommandOptions

SIG = signal.SIGUSR1


def make(jobs_dir: Path, **kw) -> Controller:
    return Controller(job_id="ph", jobs_dir=jobs_dir, enable_http=False, signals=(SIG,), signal_repeat_window=0, **kw)


def status(jobs_dir: Path) -> dict:
    return read_json(jobs_dir / "ph" / "status.json")


def saved(ctl: Controller, jobs_dir: Path, name: str) -> str:
    path = jobs_dir / name
    path.write_text("saved")
    ctl.checkpoint_saved(path)
    return str(path)


def test_a_signal_before_the_first_step_ends_the_process_stopped_with_nothing_to_save(jobs_dir: Path) -> None:
    ctl = make(jobs_dir)
    with pytest.raises(StoppedEarly) as exc:
        with ctl:
            os.kill(os.getpid(), SIG)  # the model still builds: no step has finished
            raise AssertionError("not reached: the handler ends the process")
    assert exc.value.code == 128 + SIG
    st = status(jobs_dir)
    assert (st["state"], st["stop_reason"], st["stopped_by_signal"]) == ("stopped", nothing_to_save_reason("SIGUSR1"), True)
    assert st.get("first_step_at") is None and st.get("error") is None


def test_a_stop_between_evaluation_batches_cuts_the_evaluation_at_its_step(jobs_dir: Path) -> None:
    with make(jobs_dir) as ctl:
        assert not ctl.step(1)
        ev, _ = ctl.ledger.submit(Command.EVALUATE)
        assert ctl.step(2).evaluate  # a commanded evaluation starts
        ctl.evaluation_started()
        assert not ctl.evaluation_batch(1)
        os.kill(os.getpid(), SIG)  # preempted mid-evaluation
        act = ctl.evaluation_batch(2)
        assert act.save and act.stop and not act.abort and not act.evaluate
        assert not ctl.evaluation_batch(3)  # nothing more in this evaluation
        path = saved(ctl, jobs_dir, "ck-2")
    st = status(jobs_dir)
    assert st["state"] == "stopped" and st["step"] == 2 and st["first_step_at"] > 0
    assert st["stop_reason"] == "signal received: saving and stopping (the evaluation at step 2 was cut short at batch 2)"
    entries = {e["id"]: e for e in st["commands"]}
    assert entries[ev.id]["state"] == "failed" and entries[ev.id]["reason"] == "the evaluation was cut short: save_and_stop applied at step 2"
    stop = next(e for e in st["commands"] if e["source"] == "signal")
    assert stop["state"] == "completed" and stop["result"] == {"checkpoint": path, "step": 2, "saved_at_step": 2}


def test_a_stop_asked_during_a_save_is_answered_by_that_save(jobs_dir: Path) -> None:
    """The save under way when the signal came is the first safe point: the job stops at
    the next step without writing a second checkpoint (which could outlast the grace)."""
    with make(jobs_dir) as ctl:
        ctl.step(1)
        ctl.ledger.submit(Command.SAVE_CHECKPOINT)
        assert ctl.step(2).save
        os.kill(os.getpid(), SIG)  # during the (long) save
        path = saved(ctl, jobs_dir, "ck-2")
        act = ctl.step(3)
        assert act.stop and not act.save and not act.abort
    st = status(jobs_dir)
    assert st["state"] == "stopped" and st["last_checkpoint"] == path and st["resume_point"]["step"] == 2
    assert st["stop_reason"] == "signal received: saving and stopping (the checkpoint of step 2, finished after the stop was asked, is its checkpoint)"
    stop = next(e for e in st["commands"] if e["source"] == "signal")
    assert stop["state"] == "completed" and stop["result"] == {"checkpoint": path, "step": 3, "saved_at_step": 2}


def test_a_stop_asked_before_the_last_save_still_saves_when_no_save_came_after(jobs_dir: Path) -> None:
    with make(jobs_dir) as ctl:
        ctl.step(1)
        saved(ctl, jobs_dir, "ck-1")  # the trainer's own save, before the stop was asked
        os.kill(os.getpid(), SIG)
        act = ctl.step(2)
        assert act.save and act.stop
        saved(ctl, jobs_dir, "ck-2")
    assert status(jobs_dir)["resume_point"]["step"] == 2


@pytest.mark.parametrize(
    ("evaluates", "command", "options", "evaluate"),
    [
        (True, Command.SAVE_CHECKPOINT, None, True),
        (True, Command.SAVE_CHECKPOINT, CommandOptions(evaluate=False), False),
        (False, Command.SAVE_CHECKPOINT, None, False),
        (True, Command.SAVE_AND_STOP, None, False),
    ],
    ids=["save", "save --no-eval", "save, no evaluation configured", "save-stop"],
)
def test_a_save_evaluates_first_only_when_evaluation_is_configured(jobs_dir: Path, evaluates: bool, command: Command, options, evaluate: bool) -> None:
    with make(jobs_dir, evaluates=evaluates) as ctl:
        ctl.step(1)
        ctl.ledger.submit(command, options=options)
        act = ctl.step(2)
        assert (act.save, act.evaluate) == (True, evaluate)
        if act.evaluate:
            ctl.evaluation_done({"eval_loss": 0.5})
        saved(ctl, jobs_dir, "ck")
    entry = status(jobs_dir)["commands"][-1]
    assert entry["state"] == "completed" and (entry["result"].get("metrics") == {"eval_loss": 0.5}) is evaluate
