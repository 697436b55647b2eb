"""The agreement's cadence and the single-process path, without torch.distributed."""

from __future__ import annotations

from pathlib import Path

import pytest

import forgather_control.callback.controller as controller_mod
from forgather_control.callback import Controller
from forgather_control.callback.agreement import FIELDS, Proposal
from forgather_control.callback.controller import NEVER


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(controller_mod.time, "monotonic", c)
    return c


def ctl_for(jobs_dir: Path, **kw) -> Controller:
    return Controller(job_id="cad", jobs_dir=jobs_dir, signals=(), enable_http=False, rank=0, world_size=2, **kw)


def test_proposal_layout_matches_fields() -> None:
    assert len(Proposal().as_list()) == len(FIELDS) == 5


def test_next_check_about_once_per_interval_at_most_once_per_step(jobs_dir: Path, clock: Clock) -> None:
    ctl = ctl_for(jobs_dir, check_interval=1.0)
    step, gaps = 1, []
    nxt = ctl._pick_next_check(step)
    assert nxt == 2  # no timing yet: the next step
    for _ in range(12):
        clock.t += 0.01 * (nxt - step)  # 10 ms steps
        step, nxt = nxt, ctl._pick_next_check(nxt)
        gaps.append(nxt - step)
    assert all(b <= 4 * a for a, b in zip(gaps, gaps[1:]))  # grows gradually
    assert gaps[-1] == 100  # 1 s / 10 ms
    # Steps get 10x slower: the very next gap follows the measurement.
    clock.t += 0.1 * (nxt - step)
    step, nxt = nxt, ctl._pick_next_check(nxt)
    assert nxt - step == 10
    # Steps slower than the interval: still at most one check per step.
    clock.t += 5.0 * (nxt - step)
    step, nxt = nxt, ctl._pick_next_check(nxt)
    assert nxt - step == 1


def test_last_step_is_always_a_check(jobs_dir: Path, clock: Clock) -> None:
    ctl = ctl_for(jobs_dir, check_interval=1.0, max_steps=250)
    ctl._pick_next_check(1)
    clock.t += 0.001
    assert ctl._pick_next_check(2) == 6  # growth limited to 4x the previous gap
    clock.t += 0.004
    assert ctl._pick_next_check(6) == 22
    clock.t += 0.016
    assert ctl._pick_next_check(22) == 86
    clock.t += 0.064
    assert ctl._pick_next_check(86) == 250  # would be 342: clamped to the last step


def test_one_process_makes_no_collective(jobs_dir: Path) -> None:
    with Controller(job_id="solo", jobs_dir=jobs_dir, signals=(), enable_http=False) as ctl:
        for step in range(1, 1000):
            assert not ctl.step(step)
        assert ctl._agreement is None and ctl._next_check == NEVER
        ctl.ledger.submit("save")
        act = ctl.step(1000)
        assert act.save and ctl._agreement is None
        ctl.checkpoint_saved(jobs_dir / "x")
