"""The agreement's cadence and the single-process path, without torch.distributed.

The schedule is driven with a clock the test moves by hand, so no assertion depends on
real time passing and nothing patches the process's clock.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from forgather_control.callback import Controller
from forgather_control.callback.agreement import FIELDS, Proposal
from forgather_control.callback.schedule import (
    CHECK_SHARE,
    COST_CAP,
    COST_WINDOW,
    FASTEST,
    GAP_GROWTH,
    LAG_TIME,
    LAG_WAIT,
    LATENCY_INTERVAL,
    MAX_GAP,
    MAX_LAG,
    MAX_SHARE,
    SLOWEST,
    CheckSchedule,
    interval_for,
    next_lag,
)


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_proposal_layout_matches_fields() -> None:
    assert len(Proposal().as_list()) == len(FIELDS) == 9


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


def test_the_interval_is_the_checks_cost_over_its_share_within_fastest_and_slowest() -> None:
    assert interval_for(0.00005) == FASTEST  # 50 us a check: 50 ms would do; latency needs no less than FASTEST
    assert interval_for(0.0002) == pytest.approx(0.0002 / CHECK_SHARE) == 0.2  # at its share, and soon enough
    assert interval_for(0.0002) < LATENCY_INTERVAL
    assert interval_for(1.0) == SLOWEST  # a very slow check still comes within SLOWEST


def test_a_check_dearer_than_its_share_comes_within_the_latency_interval_while_the_budget_allows() -> None:
    """Issue 24: a command waits up to an interval for its check; the interval stays
    within LATENCY_INTERVAL (apply within half a second) while the checks then cost at
    most MAX_SHARE, and only a dearer check is spaced out further."""
    assert 0.0004 / CHECK_SHARE == 0.4 and interval_for(0.0004) == LATENCY_INTERVAL  # 0.4 ms: 0.16% at 0.25 s
    assert interval_for(LATENCY_INTERVAL * MAX_SHARE) == pytest.approx(LATENCY_INTERVAL)  # the dearest that still fits
    assert interval_for(0.001) == pytest.approx(0.001 / MAX_SHARE) == 0.5  # dearer: spaced out, at the budget's share
    assert interval_for(0.001) < 0.001 / CHECK_SHARE


def test_a_rank_sends_the_mean_of_its_recent_checks_and_rank_0_spaces_them_by_the_slowest_ranks() -> None:
    auto, fixed = CheckSchedule(None), CheckSchedule(1.0)
    assert auto.interval == FASTEST and not auto.fixed  # until a cost is measured
    sent = [auto.own(0.0002) for _ in range(COST_WINDOW)]
    assert sent[-1] == pytest.approx(0.0002)
    for sched in (auto, fixed):
        sched.cost(sent[-1])
    assert (round(auto.interval, 9), fixed.interval) == (0.2, 1.0)
    # one anomaly (a debugger) counts as COST_CAP only: it does not space out the next minute
    assert auto.own(5.0) == pytest.approx((31 * 0.0002 + COST_CAP) / 32) and interval_for(auto.own(0.0002)) < SLOWEST
    # a stall that recurs on this rank (one check in eight) is paid for: a share is a mean
    for i in range(COST_WINDOW):
        mean = auto.own(0.0002 if i % 8 else 0.004)
    assert mean == pytest.approx((28 * 0.0002 + 4 * 0.004) / 32)
    # rank 0 takes what MAX hands it, the slowest rank's mean, as it is
    auto.cost(0.00005)
    assert auto.interval == FASTEST
    clock = Clock()
    auto = CheckSchedule(None, clock=clock)
    step, nxt = 1, auto.next_check(1)
    for _ in range(4):
        clock.t += 0.01 * (nxt - step)  # 10 ms steps
        step, nxt = nxt, auto.next_check(nxt)
    assert abs((nxt - step) - FASTEST / 0.01) <= 1  # checks FASTEST apart (to a step: float rounding)


def test_a_wait_asks_for_a_step_more_of_lag_but_never_more_than_lag_time_of_steps() -> None:
    waited, early = 2 * LAG_WAIT, LAG_WAIT / 20
    assert next_lag(1, waited, 0.001) == 2 and next_lag(2, early, 0.001) == 1 and next_lag(1, early, 0.001) == 1
    assert next_lag(3, LAG_WAIT / 2, 0.001) == 3  # in, but only just: kept
    lag = 1
    for _ in range(40):  # under load every resolution waits
        lag = next_lag(lag, waited, 0.001)
    assert lag == min(MAX_LAG, int(LAG_TIME / 0.001))  # 1 ms steps: up to MAX_LAG
    assert next_lag(MAX_LAG, waited, 0.03) == int(LAG_TIME / 0.03) == 1  # 30 ms steps: a command is not delayed 16 of them
    assert next_lag(4, waited, 2.0) == 1 and next_lag(1, waited, None) == 2  # slow steps: one; not measured yet: by the wait
    lag = 1
    for _ in range(40):  # thousands of ranks: the collective takes 0.3 s, at 10 ms steps
        lag = next_lag(lag, waited, 0.01, took=0.3)
    assert lag == MAX_LAG  # the lag grows to hide it (a wait at every check would cost more)


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
