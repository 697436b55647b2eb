"""Steps per second and the step a run starts at: only steps this run made count.

After a resume the loop's first report is the checkpoint's step plus one, while the
status said 0 (or the checkpoint's step) a moment before: counted as progress, that jump
read 3773 steps/s, then 993, then 298, for a real 75. The real relaunch:
tests/launcher/test_launch_run.py."""

from __future__ import annotations

import pytest

from forgather_control.callback import Controller
from forgather_control.callback.progress import StepRate
from forgather_control.core.env import ENV_RESUME_FROM, ENV_RESUME_STEP


def test_a_resumed_loops_first_report_is_a_starting_point_not_progress() -> None:
    rate = StepRate(start=900)
    assert rate.update(900, 0.0) is None  # the run starts at the checkpoint's step
    assert rate.update(900, 5.0) is None  # still loading: nothing measured
    assert rate.update(908, 20.0) is None  # its first report: where measuring starts
    assert rate.update(928, 21.0) == pytest.approx(20.0)
    assert rate.update(938, 22.0) == pytest.approx(15.0)  # smoothed: half the last, half this window


def test_a_fresh_run_that_reports_step_one_first_is_measured_from_it() -> None:
    rate = StepRate()
    assert rate.update(0, 0.0) is None
    assert rate.update(1, 30.0) is None  # model build and warm-up are not a rate of 1/30
    assert rate.update(21, 31.0) == pytest.approx(20.0)


def test_a_resumed_controller_shows_the_checkpoints_step_at_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ckpt = out / "checkpoint-1392.pt"
    ckpt.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORGATHER_OUTPUT_DIR", str(out))
    monkeypatch.setenv(ENV_RESUME_FROM, str(ckpt))
    monkeypatch.setenv(ENV_RESUME_STEP, "1392")
    ctl = Controller(job_id="resumed", jobs_dir=str(tmp_path / "jobs"), enable_http=False, signals=())
    status = ctl.status()
    assert (status.step, status.steps_per_second, status.resumed_from) == (1392, None, str(ckpt))
    monkeypatch.setenv(ENV_RESUME_STEP, "not a step")
    assert Controller(job_id="resumed2", jobs_dir=str(tmp_path / "jobs"), enable_http=False, signals=()).status().step == 0
