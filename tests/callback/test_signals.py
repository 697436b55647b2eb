"""Signal handling in one process: handlers only raise a flag and chain; the Controller
turns the flag into save_and_stop at the next step; a second signal escalates (stop
without saving before the first applied; ends the process during the stop)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from forgather_control.callback import Controller
from forgather_control.callback.signals import SignalFlags
from forgather_control.core import read_json

SIG = signal.SIGUSR1


def make(jobs_dir: Path, **kw) -> Controller:
    return Controller(job_id=kw.pop("job_id", "sig"), jobs_dir=jobs_dir, enable_http=False, signals=(SIG,), poll_interval=0.05, **kw)


@pytest.fixture
def prev_handler():
    """A handler that was there before ours: it must still be called (chained)."""
    calls: list[int] = []
    old = signal.signal(SIG, lambda s, f: calls.append(s))
    yield calls
    signal.signal(SIG, old)


def test_signal_becomes_save_and_stop_chains_and_restores(jobs_dir: Path, prev_handler) -> None:
    mine = signal.getsignal(SIG)
    with make(jobs_dir, signal_repeat_window=0) as ctl:
        assert not ctl.step(1)
        os.kill(os.getpid(), SIG)
        act = ctl.step(2)
        assert act.save and act.stop and not act.abort and act.reason.startswith("signal")
        (jobs_dir / "ckpt-2").write_text("saved")
        ctl.checkpoint_saved(jobs_dir / "ckpt-2")
        assert prev_handler == [SIG]  # chained
    assert signal.getsignal(SIG) is mine  # restored at close
    st = read_json(jobs_dir / "sig" / "status.json")
    assert st["state"] == "stopped" and st["stop_reason"].startswith("signal")
    entry = st["commands"][-1]
    assert entry["source"] == "signal" and entry["state"] == "completed" and entry["result"]["checkpoint"].endswith("ckpt-2")


def test_two_signals_before_the_check_mean_stop_without_saving(jobs_dir: Path) -> None:
    with make(jobs_dir, signal_repeat_window=0) as ctl:
        ctl.step(1)
        os.kill(os.getpid(), SIG)
        ctl.raise_signal_flag()  # a second delivery (as a launcher would raise it)
        act = ctl.step(2)
        assert act.abort and act.stop and not act.save
    assert read_json(jobs_dir / "sig" / "status.json")["state"] == "aborted"


def test_repeat_within_the_window_counts_once(jobs_dir: Path) -> None:
    with make(jobs_dir, signal_repeat_window=60) as ctl:
        ctl.step(1)
        os.kill(os.getpid(), SIG)
        os.kill(os.getpid(), SIG)  # the scheduler and torchrun both signalled
        act = ctl.step(2)
        assert act.save and act.stop and not act.abort
        (jobs_dir / "c").write_text("saved")
        ctl.checkpoint_saved(jobs_dir / "c")


def test_second_signal_during_the_stop_ends_the_process_as_aborted(jobs_dir: Path) -> None:
    ctl = make(jobs_dir, signal_repeat_window=0)
    with pytest.raises(SystemExit) as exc:
        with ctl:
            ctl.step(1)
            os.kill(os.getpid(), SIG)
            assert ctl.step(2).save
            os.kill(os.getpid(), SIG)  # during the (long) save
            raise AssertionError("not reached: the handler raises SystemExit")
    assert exc.value.code == 128 + SIG
    assert ctl.aborted and read_json(jobs_dir / "sig" / "status.json")["state"] == "aborted"


def test_handler_only_sets_flags() -> None:
    raised: list[int] = []
    flags = SignalFlags((SIG,), on_raise=lambda: raised.append(1), stopping=lambda: False, repeat_window=0)
    flags.install()
    try:
        os.kill(os.getpid(), SIG)
        assert flags.level == 1 and raised == [1]
    finally:
        flags.restore()


def test_escalation_is_not_swallowed_by_a_counting_previous_handler(jobs_dir: Path, prev_handler) -> None:
    """The launcher's bootstrap handler only counts: the second signal must still end
    the process (after chaining to it)."""
    ctl = make(jobs_dir, job_id="sig-prev", signal_repeat_window=0)
    with pytest.raises(SystemExit):
        with ctl:
            ctl.step(1)
            os.kill(os.getpid(), SIG)
            assert ctl.step(2).stop
            os.kill(os.getpid(), SIG)
    assert prev_handler == [SIG, SIG] and ctl.aborted
