"""``pause`` in one process (issue 23): a save-stop whose job ends ``paused``, and whose
receipt completes when the job has ended, with its checkpoint and that final state.

Two real ranks under ``forgather launch`` (list, cleanup, job.json, the exit code):
tests/launcher/test_launch_pause.py; under SLURM (not requeued, its allocation ends):
tests/launcher/test_slurm.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgather_control.callback import Controller
from forgather_control.callback.receipts import Receipts
from forgather_control.core import Command, Ledger, parse_command
from forgather_control.core.guards import action_command, parse_guard
from forgather_control.core.outcome import EXIT_STOPPED, launch_exit_code
from forgather_control.core.records import CommandResult
from forgather_control.core.states import JobState


def make(jobs_dir: Path, job_id: str = "p") -> Controller:
    return Controller(job_id=job_id, jobs_dir=jobs_dir, signals=(), enable_http=False)


def receipt(ctl: Controller, command_id: str) -> dict:
    """The command's receipt as status.json says it."""
    status = json.loads(ctl.paths.status.read_text())
    return next(c for c in status["commands"] if c["id"] == command_id)


def test_the_vocabulary_and_the_state() -> None:
    assert parse_command("pause") is Command.PAUSE and Command.PAUSE.value == "pause"
    assert Command.PAUSE.saves and Command.PAUSE.stops and Command.PAUSE.saves_and_stops
    assert Command.SAVE_AND_STOP.saves_and_stops and not Command.SAVE_CHECKPOINT.saves_and_stops and not Command.GRACEFUL_STOP.saves_and_stops
    assert JobState.parse("paused") is JobState.PAUSED and JobState.PAUSED.final and not JobState.PAUSED.live
    # a paused job is not finished: `forgather launch ... && export.py` exports nothing; it was stopped by a command
    assert launch_exit_code(JobState.PAUSED, by_signal=False, worker_code=0) == EXIT_STOPPED
    assert launch_exit_code(JobState.PAUSED, by_signal=True, worker_code=0) == EXIT_STOPPED
    # a guard may pause the job, as a person may
    assert parse_guard("spike:pause").action == "pause" and action_command("pause") is Command.PAUSE


def test_a_pause_saves_stops_and_ends_the_job_paused_its_receipt_completed_at_the_end(jobs_dir: Path, tmp_path: Path) -> None:
    ctl = make(jobs_dir).start()
    entry, _ = ctl.ledger.submit("pause")
    act = ctl.step(5)
    assert act.save and act.stop and not act.evaluate and not act.abort and act.command is Command.PAUSE
    assert ctl.state is JobState.STOPPING
    ckpt = tmp_path / "ckpt-5"
    ckpt.mkdir()
    ctl.checkpoint_saved(ckpt)
    # saved, but the job has not ended yet: the receipt holds the checkpoint and stays open
    open_ = ctl.ledger.get(entry.id)
    assert open_.state.value == "applied" and open_.result == CommandResult(checkpoint=str(ckpt), step=5, saved_at_step=5)
    ctl.close()
    assert ctl.state is JobState.PAUSED
    status = json.loads(ctl.paths.status.read_text())
    assert status["state"] == "paused" and status["resume_point"]["path"] == str(ckpt) and status["resume_point"]["step"] == 5
    done = receipt(ctl, entry.id)
    assert done["state"] == "completed" and done["command"] == "pause"
    assert done["result"] == {"checkpoint": str(ckpt), "step": 5, "saved_at_step": 5, "final_state": "paused", "final_step": 5}


def test_a_pause_asked_during_a_save_takes_that_checkpoint(jobs_dir: Path, tmp_path: Path) -> None:
    """As a save-stop does (FLAG_SAVED): a checkpoint finished after the pause was asked
    is its checkpoint; the loop saves nothing again, and the job ends paused."""
    ctl = make(jobs_dir).start()
    entry, _ = ctl.ledger.submit("pause")
    ckpt = tmp_path / "own-save"
    ckpt.mkdir()
    ctl.current_step = 3
    ctl.checkpoint_saved(ckpt)  # the trainer's own save, finished after the pause was asked
    act = ctl.step(4)
    assert act.stop and not act.save
    ctl.close()
    assert ctl.state is JobState.PAUSED
    done = receipt(ctl, entry.id)
    assert done["state"] == "completed" and done["result"]["checkpoint"] == str(ckpt) and done["result"]["final_state"] == "paused"


def test_a_pause_whose_loop_saves_nothing_fails_and_the_job_still_ends_paused(jobs_dir: Path) -> None:
    ctl = make(jobs_dir).start()
    entry, _ = ctl.ledger.submit("pause")
    assert ctl.step(2).stop
    ctl.step(3)  # a later check does not fail it: a pause is followed to the job's end
    assert ctl.ledger.get(entry.id).state.value == "applied"
    ctl.close()
    assert ctl.state is JobState.PAUSED
    done = receipt(ctl, entry.id)
    assert done["state"] == "failed" and done["reason"] == "the job ended (paused) before the training loop reported the pause result"


def test_a_pause_after_a_stop_is_refused_and_a_stop_ends_stopped_not_paused(jobs_dir: Path) -> None:
    with make(jobs_dir) as ctl:
        ctl.ledger.submit("save-stop")
        with pytest.raises(Exception, match="already stopping"):
            ctl.ledger.submit("pause")
        assert ctl.step(1).stop
    assert ctl.state is JobState.STOPPED


@pytest.mark.parametrize("synced", [True, False])
def test_receipts_hold_a_pause_open_with_its_checkpoint_until_the_end(synced: bool) -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    entry, _ = ledger.submit("pause")
    ledger.mark_applied(entry.id, 7)
    receipts.applied(entry.id, Command.PAUSE, 7)
    receipts.checkpoint_saved("/ck/7", step=7, synced=synced)  # HF's saves are unsynced: complete at the next check
    receipts.sync()
    receipts.expire(9)
    assert ledger.get(entry.id).state.value == "applied" and ledger.get(entry.id).result.checkpoint == "/ck/7"
    receipts.settle(JobState.PAUSED, step=7, stop_reason="pause", stopped=True)
    assert ledger.get(entry.id).state.value == "completed"
    assert ledger.get(entry.id).result == CommandResult(checkpoint="/ck/7", step=7, saved_at_step=7, final_state="paused", final_step=7)
