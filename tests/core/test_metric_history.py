"""The metric history: bounded however long the job runs, recorded off the training
thread, served by the job (``GET /jobs/{id}/metrics?since=``) and kept in its folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.waiting import wait_for

from forgather_control.callback import Controller
from forgather_control.callback.history import HistoryRecorder
from forgather_control.client import open_job
from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.files import RecordError
from forgather_control.core.metrics import DENSE, FILENAME, History, read_history
from forgather_control.core.records import Series, encode


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
            # The I/O thread records the last steps on its own beat: once it has them all,
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
