"""Receipts on their own: a ledger, commands applied by hand, the loop's reports.

No Controller, no torch, no threads: each test applies commands the way a check does
and asserts what a client waiting on the ledger would read.
"""

from __future__ import annotations

import subprocess
import sys

from forgather_control.callback.receipts import Receipts
from forgather_control.core import Command, Ledger
from forgather_control.core.records import CommandResult
from forgather_control.core.states import JobState


def applied(ledger: Ledger, receipts: Receipts, command: str, step: int) -> str:
    entry, _ = ledger.submit(command)
    ledger.mark_applied(entry.id, step)
    receipts.applied(entry.id, entry.command, step)
    return entry.id


def state(ledger: Ledger, command_id: str) -> str:
    return ledger.get(command_id).state.value


def test_importing_it_imports_no_torch() -> None:
    code = "import sys, forgather_control.callback.receipts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_save_completes_with_its_checkpoint_and_steps() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    cid = applied(ledger, receipts, "save", 7)
    assert [w.command for w in receipts.waiting] == [Command.SAVE_CHECKPOINT]
    receipts.checkpoint_saved("/ck/7", step=8)
    entry = ledger.get(cid)
    assert entry.state.value == "completed"
    assert entry.result == CommandResult(checkpoint="/ck/7", step=7, saved_at_step=8)
    assert receipts.waiting == ()


def test_reports_complete_the_oldest_of_their_kind_only() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    ev1 = applied(ledger, receipts, "eval", 1)
    s1 = applied(ledger, receipts, "save", 2)
    ev2 = applied(ledger, receipts, "eval", 3)
    s2 = applied(ledger, receipts, "save", 4)
    receipts.checkpoint_saved("/a", step=4)
    assert [state(ledger, c) for c in (ev1, s1, ev2, s2)] == ["applied", "completed", "applied", "applied"]
    receipts.evaluation_done({"m": 1.0}, step=4)
    assert [state(ledger, c) for c in (ev1, s1, ev2, s2)] == ["completed", "completed", "applied", "applied"]
    assert ledger.get(ev1).result == CommandResult(metrics={"m": 1.0}, step=1)
    receipts.command_failed("no evaluation set up", Command.EVALUATE)
    assert state(ledger, ev2) == "failed" and ledger.get(ev2).reason == "no evaluation set up"
    assert state(ledger, s2) == "applied"
    receipts.command_failed("the save broke")  # any command: the oldest left
    assert state(ledger, s2) == "failed" and receipts.waiting == ()


def test_a_report_nobody_waits_for_changes_nothing() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    receipts.checkpoint_saved("/periodic", step=100)  # the trainer's own save
    receipts.evaluation_done({"m": 2.0}, step=100)
    receipts.command_failed("nothing applied")
    assert ledger.recent() == [] and receipts.waiting == ()


def test_save_at_the_step_of_an_evaluation_carries_its_metrics() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    cid = applied(ledger, receipts, "save", 5)
    receipts.evaluation_done({"eval_loss": 0.25}, step=5)  # evaluate first, as HF does
    receipts.checkpoint_saved("/ck/5", step=5)
    assert ledger.get(cid).result.metrics == {"eval_loss": 0.25}
    cid = applied(ledger, receipts, "save", 9)
    receipts.checkpoint_saved("/ck/9", step=9)  # the evaluation was at step 5: not this one's
    assert ledger.get(cid).result.metrics is None


def test_unsynced_save_completes_at_the_next_check() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    cid = applied(ledger, receipts, "save", 3)
    receipts.checkpoint_saved("/ck/3", step=3, synced=False)
    assert state(ledger, cid) == "applied" and receipts.unsynced == 1 and receipts.waiting == ()
    receipts.sync()
    assert state(ledger, cid) == "completed" and receipts.unsynced == 0
    assert ledger.get(cid).result.checkpoint == "/ck/3"


def test_unreported_results_fail_at_a_later_check_naming_the_call() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    save = applied(ledger, receipts, "save", 10)
    ev = applied(ledger, receipts, "eval", 10)
    stop = applied(ledger, receipts, "save-stop", 10)
    receipts.expire(10)  # the same step: the loop may still report
    assert [state(ledger, c) for c in (save, ev, stop)] == ["applied"] * 3
    receipts.expire(11)
    assert state(ledger, save) == "failed" and "checkpoint_saved(path)" in ledger.get(save).reason
    assert "after step 10" in ledger.get(save).reason
    assert state(ledger, ev) == "failed" and "evaluation_done(metrics)" in ledger.get(ev).reason
    assert state(ledger, stop) == "applied", "a save-and-stop is settled by the end of the job"
    assert [w.command_id for w in receipts.waiting] == [stop]


def test_expire_forgets_receipts_finished_elsewhere() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    cid = applied(ledger, receipts, "save", 1)
    ledger.fail(cid, "failed by someone else")
    receipts.expire(5)
    assert receipts.waiting == () and ledger.get(cid).reason == "failed by someone else"


def test_settle_after_a_stop() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    unsynced = applied(ledger, receipts, "save", 4)
    receipts.checkpoint_saved("/ck/4", step=4, synced=False)
    ev = applied(ledger, receipts, "eval", 5)
    stop = applied(ledger, receipts, "stop", 6)
    queued, _ = ledger.submit("abort")  # escalation: accepted while a stop is pending
    receipts.settle(JobState.STOPPED, step=6, stop_reason="graceful_stop", stopped=True)
    assert state(ledger, unsynced) == "completed", "the job's end proves every rank finished"
    assert ledger.get(stop).result == CommandResult(step=6, final_state="stopped", final_step=6)
    assert type(ledger.get(stop).result.final_state) is str  # plain JSON data in the ledger
    assert state(ledger, ev) == "failed" and "before the training loop reported the evaluate result" in ledger.get(ev).reason
    q = ledger.get(queued.id)
    assert q.state.value == "dropped" and q.reason == "the job stopped (graceful_stop) at step 6 before the command could apply"
    assert ledger.stopping  # intake closed: nothing more is accepted


def test_settle_at_a_normal_end_and_after_a_failure() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    queued, _ = ledger.submit("eval")
    receipts.settle(JobState.FINISHED, step=100)
    q = ledger.get(queued.id)
    assert q.state.value == "dropped"
    assert q.reason == "training ended (finished) at step 100 before the command could apply (no training step came after it)"

    ledger = Ledger()
    receipts = Receipts(ledger)
    save = applied(ledger, receipts, "save", 3)
    receipts.settle(JobState.FAILED, step=3, error="RuntimeError: boom")
    assert ledger.get(save).reason == "the job failed before the command completed: RuntimeError: boom"


def test_an_aborted_job_completes_its_abort() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    ab = applied(ledger, receipts, "abort", 2)
    assert receipts.waiting == (), "an abort reports nothing: no receipt waits for the loop"
    receipts.settle(JobState.ABORTED, step=2, stop_reason="abort", stopped=True)
    assert ledger.get(ab).result == CommandResult(step=2, final_state="aborted", final_step=2)


def test_an_abort_the_ranks_never_agreed_on_completes_when_the_job_ends_aborted() -> None:
    ledger = Ledger()
    receipts = Receipts(ledger)
    ab, _ = ledger.submit("abort")
    receipts.settle(JobState.ABORTED, step=7, error="RuntimeError: peer gone")
    e = ledger.get(ab.id)
    assert e.state.value == "completed" and e.result == CommandResult(final_state="aborted", final_step=7)
    assert e.reason == "the job ended at step 7 before its ranks agreed on the abort (RuntimeError: peer gone); nothing was saved"
    ledger = Ledger()
    ab, _ = ledger.submit("abort")
    Receipts(ledger).settle(JobState.FAILED, step=7, error="boom")  # not an aborted end: dropped, as before
    assert ledger.get(ab.id).state.value == "dropped"
