"""The metric history: bounded however long the job runs, recorded off the training
thread, served by the job (``GET /jobs/{id}/metrics?since=``) and kept in its folder."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from support.waiting import wait_for

from forgather_control.callback import Controller
from forgather_control.callback.history import HistoryRecorder
from forgather_control.client import open_job
from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.files import RecordError
from forgather_control.core.metrics import DENSE, FILENAME, MAX_BYTES, VIEW_POINTS, History, downsample, read_history, view
from forgather_control.core.records import MetricHistory, Series, encode


def test_a_million_steps_stay_a_few_thousand_points_dense_at_the_end() -> None:
    history = History("long", dense=256)
    for step in range(1, 1_000_001):
        history.record(step, float(step), {"loss": 1.0 / step})
    loss = encode(history.as_record().series["loss"])
    assert len(loss["step"]) < 2 * 256
    assert loss["step"][-256:] == list(range(1_000_000 - 255, 1_000_001))  # the newest, dense
    assert loss["step"][0] == 1 and loss["step"] == sorted(loss["step"]) and len(set(loss["step"])) == len(loss["step"])
    gaps = [b - a for a, b in zip(loss["step"], loss["step"][1:], strict=False)]
    assert max(gaps) <= 4 * 1_000_000 // 256  # the older part spread evenly over the run, not cut off


def test_values_and_steps_a_curve_can_use() -> None:
    history = History("j")
    history.record(1, 1.0, {"loss": 2.0, "note": "text", "flag": True, "lr": float("nan")})
    history.record(2, 2.0, {"loss": 1.5})
    history.record(2, 2.5, {"loss": 1.4})  # the same step again: replaced, not doubled
    history.record(1, 3.0, {"loss": 9.9})  # a step from the past: ignored
    series = encode(history.as_record())["series"]
    assert series["loss"] == {"step": [1, 2], "time": [1.0, 2.5], "value": [2.0, 1.4]}
    assert series["lr"]["value"] == [None] and "note" not in series and "flag" not in series
    assert history.as_record(since=1).series["loss"].step == [2]


def test_the_recorder_samples_each_tick_and_writes_every_few_seconds(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "rec").create()
    now = [100.0]
    state = {"step": 0}
    recorder = HistoryRecorder(paths, History("rec"), lambda: (state["step"], {"loss": 1.0}), write_every=5.0, clock=lambda: now[0])
    for step in range(1, 4):
        state["step"] = step
        recorder.tick()
        now[0] += 1.0
    assert read_history(paths).series["loss"].step == [1]  # written once, at the first tick
    recorder.tick()  # the same step: nothing new
    now[0] += 5.0
    recorder.tick()
    assert read_history(paths).series["loss"].step == [1, 2, 3]


def test_a_bad_history_is_refused_with_the_reason(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "bad").create()
    write_json_atomic(paths.dir / FILENAME, {"series": {"loss": {"step": [2, 1], "time": [0, 0], "value": [1, 1]}}})
    with pytest.raises(RecordError, match="out of order"):
        read_history(paths)
    write_json_atomic(paths.dir / FILENAME, {"series": {"loss": {"step": [1], "time": [0], "value": ["x"]}}})
    with pytest.raises(RecordError, match=r"field 'series' \[\.\.\.\]\.value\[0\] must be a number, not str"):
        read_history(paths)


def test_a_job_records_its_curves_serves_them_and_keeps_them(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    ctl = Controller(job_id="curves", jobs_dir=jobs, signals=(), max_steps=200, poll_interval=0.02)
    with ctl:
        for step in range(1, 201):
            ctl.step(step, {"loss": 1.0 / step, "learning_rate": 0.1})
            if step == 100:
                ctl.evaluation_done({"eval_loss": 0.25})
            time.sleep(0.008)  # 1.6 s in all: a steps-per-second sample needs a second
        with open_job("curves", jobs_dir=jobs) as job:
            assert job.channel == "http"
            # The I/O round records the last steps on its own beat: once it has them all,
            # ``since`` has one answer.
            served = wait_for(lambda: (m := job.metrics()).series["loss"].step[-1] == 200 and m, what="the history up to step 200")
            assert served.series["eval_loss"] == Series(step=[100], time=served.series["eval_loss"].time, value=[0.25])
            assert len(served.series["loss"].step) >= 2 and "learning_rate" in served.series
            later = job.metrics(since=served.series["loss"].step[-2])
            assert later.series["loss"].step == [200] and later.series["eval_loss"].step == []
    kept = encode(read_history(JobPaths(jobs, "curves")))  # the finished job keeps its history
    assert kept["series"]["loss"]["step"][-1] == 200 and kept["series"]["eval_loss"]["value"] == [0.25]
    assert "steps_per_second" in kept["series"]
    with open_job("curves", jobs_dir=jobs) as job:  # ended: from the folder
        assert encode(job.metrics().series["loss"]) == kept["series"]["loss"]
    assert json.loads((jobs / "curves" / FILENAME).read_text())["version"] == 1
    assert len(kept["series"]["loss"]["step"]) <= 2 * DENSE


# -- the view a reader shows: at most VIEW_POINTS a series, its extremes kept (issue 20) ----
def _series(values: list[float | None], first: int = 1) -> Series:
    steps = list(range(first, first + len(values)))
    return Series(step=steps, time=[float(s) for s in steps], value=values)


def test_a_series_within_the_bound_is_shown_as_it_is() -> None:
    s = _series([3.0, None, 1.0, 2.0])
    assert downsample(s, 4) is s
    assert encode(view(MetricHistory(job_id="j", series={"loss": s}), points=4).series["loss"]) == encode(s)


def test_a_longer_series_keeps_its_ends_and_each_runs_lowest_and_highest_point() -> None:
    # 6 points: the first, the last, and 2 runs of the 8 between (4 each), each its low and its high
    s = _series([5.0, 3.0, 9.0, 1.0, 4.0, 7.0, 2.0, 8.0, 6.0, 0.0])
    assert encode(downsample(s, 6)) == {"step": [1, 3, 4, 7, 8, 10], "time": [1.0, 3.0, 4.0, 7.0, 8.0, 10.0], "value": [5.0, 9.0, 1.0, 2.0, 8.0, 0.0]}
    # a run with no number keeps its first point (a gap stays a gap); a run with numbers drops its gaps
    s = _series([1.0, None, 3.0, None, 5.0, None, None, None, None, 0.0])
    assert encode(downsample(s, 6)) == {"step": [1, 3, 5, 6, 10], "time": [1.0, 3.0, 5.0, 6.0, 10.0], "value": [1.0, 3.0, 5.0, None, 0.0]}
    # a flat run keeps one point; the bound is never less than one run
    assert downsample(_series([2.0] * 10), 6).step == [1, 2, 6, 10]
    with pytest.raises(ValueError, match="at least 4"):
        downsample(s, 3)


@pytest.mark.parametrize("points", [4, 5, 7, 100, VIEW_POINTS])
def test_the_bound_holds_for_any_length(points: int) -> None:
    rng = random.Random(points)
    for n in (points + 1, points + 2, 2 * points - 1, 3 * points + 7, 20_011):
        s = _series([rng.gauss(0, 1) if rng.random() > 0.01 else None for _ in range(n)])
        out = downsample(s, points)
        assert len(out.step) <= points and out.step[0] == 1 and out.step[-1] == n, (points, n)
        assert set(out.step) <= set(s.step) and out.step == sorted(out.step)
        assert [s.value[i - 1] for i in out.step] == out.value and [float(i) for i in out.step] == out.time


def test_a_hundred_thousand_points_are_served_as_the_bound_with_the_extremes() -> None:
    rng = random.Random(7)
    values = [rng.uniform(0.1, 2.0) for _ in range(100_000)]
    values[31_337], values[77_777] = 15.0, 0.01  # a spike and a dip, between any two kept points
    history = MetricHistory(job_id="j", series={"loss": _series(values)})
    loss = view(history).series["loss"]
    assert len(loss.step) == VIEW_POINTS  # 2 ends and 2 points in each of (VIEW_POINTS - 2) / 2 runs
    assert loss.step[0] == 1 and loss.step[-1] == 100_000
    assert 31_338 in loss.step and 77_778 in loss.step and max(loss.value) == 15.0 and min(loss.value) == 0.01


def test_since_gives_the_view_of_what_came_after() -> None:
    history = MetricHistory(job_id="j", series={"loss": _series([1.0 / i for i in range(1, 100_001)]), "eval_loss": _series([0.5, 0.4], first=99_999)})
    tail = view(history, since=99_000)
    assert tail.series["loss"].step == list(range(99_001, 100_001))  # under the bound: every point
    assert tail.series["eval_loss"].step == [99_999, 100_000]
    half = view(history, since=50_000).series["loss"]
    assert len(half.step) == VIEW_POINTS and half.step[0] == 50_001 and half.step[-1] == 100_000
    assert encode(half) == encode(downsample(history.since(50_000).series["loss"]))
    # what a page asks next (from its last step, one back) is only the last point
    assert view(history, since=view(history).series["loss"].step[-1] - 1).series["loss"].step == [100_000]


def test_a_hostile_history_costs_a_bounded_read(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path, "hostile").create()
    (paths.dir / FILENAME).write_bytes(b'{"series": {"loss": {"step": [1], "time": [0], "value": [1]}}, "pad": "' + b"x" * MAX_BYTES + b'"}')
    with pytest.raises(RecordError, match=f"larger than a record can be \\({MAX_BYTES}\\)"):
        read_history(paths)
    many = {f"s{i}": {"step": [1], "time": [0.0], "value": [1.0]} for i in range(65)}
    write_json_atomic(paths.dir / FILENAME, {"series": many})
    with pytest.raises(RecordError, match="series"):
        read_history(paths)
    huge = {"loss": {"step": [1, 2, 3], "time": [0.0, 1.0, 2.0], "value": [1e308, -1e308, 5e-324]}}
    write_json_atomic(paths.dir / FILENAME, {"series": huge})
    assert encode(view(read_history(paths), points=4).series["loss"]) == huge["loss"]
