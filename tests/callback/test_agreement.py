"""The agreement's cadence and the single-process path, without torch.distributed.

The schedule is driven with a clock the test moves by hand, so no assertion depends on
real time passing and nothing patches the process's clock.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from forgather_control.callback import Controller
from forgather_control.callback.agreement import FIELDS, Proposal
from forgather_control.callback.schedule import GAP_GROWTH, MAX_GAP, CheckSchedule


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_proposal_layout_matches_fields() -> None:
    assert len(Proposal().as_list()) == len(FIELDS) == 8


def test_next_check_about_once_per_interval_at_most_once_per_step() -> None:
    clock = Clock()
    sched = CheckSchedule(1.0, clock=clock)
    step, gaps = 1, []
    nxt = sched.next_check(step)
    assert nxt == 2  # no timing yet: the next step
    for _ in range(12):
        clock.t += 0.01 * (nxt - step)  # 10 ms steps
        step, nxt = nxt, sched.next_check(nxt)
        gaps.append(nxt - step)
    assert all(b <= 4 * a for a, b in itertools.pairwise(gaps))  # grows gradually
    assert gaps[-1] == 100  # 1 s / 10 ms
    # Steps get 10x slower: the very next gap follows the measurement.
    clock.t += 0.1 * (nxt - step)
    step, nxt = nxt, sched.next_check(nxt)
    assert nxt - step == 10
    # Steps slower than the interval: still at most one check per step.
    clock.t += 5.0 * (nxt - step)
    step, nxt = nxt, sched.next_check(nxt)
    assert nxt - step == 1


def test_last_step_is_always_a_check() -> None:
    clock = Clock()
    sched = CheckSchedule(1.0, clock=clock)
    sched.next_check(1, max_steps=250)
    clock.t += 0.001
    assert sched.next_check(2, max_steps=250) == 6  # growth limited to 4x the previous gap
    clock.t += 0.004
    assert sched.next_check(6, max_steps=250) == 22
    clock.t += 0.016
    assert sched.next_check(22, max_steps=250) == 86
    clock.t += 0.064
    assert sched.next_check(86, max_steps=250) == 250  # would be 342: clamped to the last step
    clock.t += 0.164
    assert sched.next_check(250, max_steps=250) > 250  # at the end: never clamped backwards


def test_a_clock_that_starts_at_zero_is_timed_from_the_first_check() -> None:
    clock = Clock(0.0)
    sched = CheckSchedule(1.0, clock=clock)
    assert sched.next_check(1) == 2
    clock.t += 0.5  # one 0.5 s step
    assert sched.next_check(2) == 4  # 2 steps a second, not "no timing yet"


def test_gap_is_bounded_and_a_frozen_clock_grows_it_gradually() -> None:
    clock = Clock()  # never moves: steps look infinitely fast
    sched = CheckSchedule(1.0, clock=clock)
    step, nxt = 1, sched.next_check(1)
    gaps = []
    for _ in range(12):
        step, nxt = nxt, sched.next_check(nxt)
        gaps.append(nxt - step)
    assert gaps[0] == GAP_GROWTH
    assert all(b == min(a * GAP_GROWTH, MAX_GAP) for a, b in itertools.pairwise(gaps))
    assert gaps[-1] == MAX_GAP


def test_a_repeated_or_earlier_step_checks_at_the_next_step() -> None:
    clock = Clock()
    sched = CheckSchedule(1.0, clock=clock)
    sched.next_check(10)
    clock.t += 1.0
    assert sched.next_check(10) == 11
    clock.t += 1.0
    assert sched.next_check(5) == 6  # a restarted count: start timing again


def test_one_process_makes_no_collective(jobs_dir: Path) -> None:
    with Controller(job_id="solo", jobs_dir=jobs_dir, signals=(), enable_http=False) as ctl:
        for step in range(1, 1000):
            assert not ctl.step(step)
        assert not ctl.agrees and ctl.next_check is None and ctl.agreement_trace == ()
        ctl.ledger.submit("save")
        act = ctl.step(1000)
        assert act.save and not ctl.agrees
        (jobs_dir / "x").write_text("saved")
        ctl.checkpoint_saved(jobs_dir / "x")
