"""Guards in one process (the Controller, no HTTP): a non-finite loss, a spike and a
slowdown each do their action at a check, with a receipt that names the guard and its
evidence; an alert does nothing in the loop and is recorded; a stall guard fires once per
stall. The multi-rank vote is tests/callback/test_guards_multirank.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from forgather_control.callback import Controller
from forgather_control.callback.config import ConfigError
from forgather_control.core import Command
from forgather_control.core.records import Stall
from forgather_control.core.states import JobState


def make(jobs_dir: Path, **kw) -> Controller:
    kw.setdefault("signals", ())
    kw.setdefault("check_interval", 0)  # every step is a check: the test steps by hand
    return Controller(job_id=kw.pop("job_id", "g-1"), jobs_dir=jobs_dir, enable_http=False, max_steps=1000, **kw)


def test_a_nan_loss_aborts_at_the_check_with_a_receipt_naming_the_guard(jobs_dir: Path) -> None:
    with make(jobs_dir, guards=["nan:abort"]) as ctl:
        for step in range(1, 6):
            assert not ctl.step(step, {"loss": 1.0})
        act = ctl.step(6, {"loss": math.nan})
        assert act.stop and act.abort and not act.save and act.command == Command.ABORT
        assert "guard nan:abort,metric=loss: the loss is nan on rank 0 at step 6" in (act.reason or "")
        status = ctl.status()
        [fired] = status.guard_events or []
        assert (fired.kind, fired.action, fired.step, fired.rank) == ("nan", "abort", 6, 0)
        [receipt] = [r for r in status.commands or [] if r.source == "guard"]
        assert receipt.command == "abort" and receipt.step == 6 and receipt.guard is not None
        assert receipt.guard.id == fired.id and fired.command_id == receipt.id
        assert [g.text for g in status.guards or []] == ["nan:abort,metric=loss"]
    assert ctl.state == JobState.ABORTED


def test_an_infinite_loss_is_said_as_such_and_an_alert_leaves_the_loop_alone(jobs_dir: Path) -> None:
    with make(jobs_dir, guards="nan:alert") as ctl:
        assert not ctl.step(1, {"loss": 1.0})
        assert not ctl.step(2, {"loss": -math.inf})
        assert not ctl.step(3, {"loss": math.inf})  # the same episode: once
        [fired] = ctl.status().guard_events or []
        assert fired.evidence == "the loss is -inf on rank 0 at step 2" and fired.command_id is None
        assert not ctl.step(4, {"loss": 1.0})  # finite again: re-armed
        assert not ctl.step(5, {"loss": math.nan})
        assert [f.step for f in ctl.status().guard_events or []] == [2, 5]
        assert not [r for r in ctl.status().commands or [] if r.source == "guard"]


def test_a_spike_queues_a_save_the_loop_does_at_that_check(jobs_dir: Path, tmp_path: Path) -> None:
    with make(jobs_dir, guards=["spike:save,factor=3,window=4,times=2"]) as ctl:
        for step in range(1, 6):
            assert not ctl.step(step, {"loss": 1.0})
        assert not ctl.step(6, {"loss": 50.0})
        act = ctl.step(7, {"loss": 60.0})
        assert act.save and not act.stop and act.command == Command.SAVE_CHECKPOINT
        path = tmp_path / "ckpt-7"
        path.write_text("x")
        ctl.checkpoint_saved(path)
        [receipt] = [r for r in ctl.status().commands or [] if r.source == "guard"]
        assert receipt.state == "completed" and receipt.guard is not None and receipt.guard.values == {"loss": 60.0, "average": 1.0, "ratio": 60.0}
        assert not ctl.step(8, {"loss": 70.0})  # one save per episode


def test_a_logged_loss_is_judged_once_however_many_checks_see_it(jobs_dir: Path) -> None:
    """A trainer logs every N steps; a check each step sees the same value N times."""
    with make(jobs_dir, guards=["spike:save,factor=3,window=2,times=2"]) as ctl:
        ctl.update_metrics({"loss": 1.0})
        ctl.step(1)
        ctl.update_metrics({"loss": 1.0})
        ctl.step(2)
        ctl.update_metrics({"loss": 9.0})
        assert not any(ctl.step(s) for s in range(3, 10))  # once above, however many checks


def test_a_slowdown_alert_is_recorded_with_the_rate(jobs_dir: Path) -> None:
    now = [1000.0]
    with make(jobs_dir, guards=["slowdown:stop,fraction=0.5,for=0"]) as ctl:
        ctl._rate.update = lambda step, t: 100.0 if step < 10 else 10.0  # type: ignore[method-assign]  # the pace, injected
        act = None
        for step in range(1, 12):
            now[0] += 1
            act = ctl.step(step, {"loss": 1.0})
            if act:
                break
        assert act and act.stop and not act.save and act.command == Command.GRACEFUL_STOP
        [fired] = ctl.status().guard_events or []
        assert fired.kind == "slowdown" and "10 steps/s is 10% of the run's median 100" in (fired.evidence or "")


def test_a_stall_guard_fires_once_per_stall_and_its_abort_is_queued_for_the_launcher(jobs_dir: Path) -> None:
    with make(jobs_dir, guards=["stall:abort"]) as ctl:
        ctl.step(1, {"loss": 1.0})
        stall = Stall(for_=400.0, after=300.0, step=1, phase="training")
        assert ctl._guard_events(stall) is not None
        assert ctl._guard_events(stall) is not None
        events = ctl.status().guard_events or []
        assert [e.kind for e in events] == ["stall"] and "no step for 400 s (the threshold is 300 s), in training" in (events[0].evidence or "")
        [receipt] = [r for r in ctl.status().commands or [] if r.source == "guard"]
        assert receipt.command == "abort" and receipt.state == "queued"
        ctl._guard_events(None)  # the step moved: re-armed
        assert ctl._guard_events(stall) is not None and len(ctl.status().guard_events or []) == 2


def test_no_guard_keeps_a_process_alone_checking_only_when_poked(jobs_dir: Path) -> None:
    with make(jobs_dir) as ctl:
        ctl.step(1)
        assert ctl.next_check is None or ctl.next_check > 10**12
    with make(jobs_dir, job_id="g-2", guards=["nan:abort"]) as ctl:
        ctl.step(1)
        assert ctl.next_check == 2


@pytest.mark.parametrize("bad", ["nan:boom", ["spike:save,factor=0.5"], [3]])
def test_a_bad_guard_stops_the_controller_at_construction_naming_it(jobs_dir: Path, bad) -> None:
    with pytest.raises(ConfigError, match="guard"):
        make(jobs_dir, guards=bad)


def test_a_bad_guard_in_the_environment_names_the_variable(jobs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGATHER_GUARDS", "spike:explode")
    with pytest.raises(ConfigError, match=r"^FORGATHER_GUARDS: guard 'spike:explode': unknown action"):
        make(jobs_dir)
