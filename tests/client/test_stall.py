"""Stalled is a state: the threshold (adaptive, floored, set by env or launch option), a
commanded save or eval is not a stall, rank 0's own word or its silence, and how list,
status and the CLI say it. The real hung jobs are in test_hang.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from msgspec import structs
from support.records import identity, typed
from support.waiting import wait_for

from forgather_control.callback import Controller
from forgather_control.callback.config import ControllerConfig
from forgather_control.callback.stall import FLOOR, LONG_PHASE, MULTIPLE, Phase, StallWatch
from forgather_control.client.jobinfo import SILENT_AFTER, JobInfo, stall_of
from forgather_control.core import JobPaths, read_json
from forgather_control.core.env import ENV_STALL_AFTER
from forgather_control.core.errors import UsageError
from forgather_control.core.liveness import Liveness
from forgather_control.core.records import Status, encode
from forgather_control.core.states import JobState
from forgather_control.launcher.config import LaunchConfig, LaunchError
from forgather_control.launcher.plan import make_plan


# -- the threshold ------------------------------------------------------------------------
def test_threshold_adapts_to_the_step_time_above_a_floor() -> None:
    watch = StallWatch()
    assert watch.threshold(None) == FLOOR  # no rate yet
    assert watch.threshold(100.0) == FLOOR  # fast steps: the floor, so a slow eval is not a stall
    assert watch.threshold(0.01) == MULTIPLE / 0.01  # 100 s a step: 20 steps' time
    assert StallWatch(stall_after=7.0).threshold(0.001) == 7.0  # set: as set


def test_a_stall_is_the_step_standing_still_longer_than_the_threshold() -> None:
    watch = StallWatch(stall_after=10.0)
    assert watch.observe(5, 100.0, steps_per_second=1.0, phase=Phase.TRAINING).stall is None
    assert watch.observe(5, 110.0, steps_per_second=1.0, phase=Phase.TRAINING).stall is None
    seen = watch.observe(5, 111.0, steps_per_second=1.0, phase=Phase.AGREEMENT)
    assert seen.stall is not None and encode(seen.stall) == {"for": 11.0, "after": 10.0, "step": 5, "phase": "agreement"}
    assert seen.progress_at == 100.0
    moved = watch.observe(6, 112.0, steps_per_second=1.0, phase=Phase.TRAINING)
    assert moved.stall is None and moved.progress_at == 112.0


@pytest.mark.parametrize("phase", [Phase.SAVE, Phase.EVAL])
def test_a_commanded_save_or_eval_is_a_known_long_phase(phase: Phase) -> None:
    watch = StallWatch(stall_after=10.0)
    watch.observe(5, 0.0, steps_per_second=1.0, phase=phase)
    assert watch.observe(5, LONG_PHASE - 1, steps_per_second=1.0, phase=phase).stall is None
    stall = watch.observe(5, LONG_PHASE + 1, steps_per_second=1.0, phase=phase).stall
    assert stall is not None and stall.phase == phase.value


# -- set by env or launch option ----------------------------------------------------------
def test_stall_after_from_the_environment(tmp_path: Path) -> None:
    env = {"FORGATHER_JOB_ID": "j", "FORGATHER_JOBS_DIR": str(tmp_path), ENV_STALL_AFTER: "42"}
    assert ControllerConfig.from_env(env=env).stall_after == 42.0
    with pytest.raises(UsageError, match=ENV_STALL_AFTER):
        ControllerConfig.from_env(env={**env, ENV_STALL_AFTER: "soon"})
    with pytest.raises(UsageError, match="stall_after"):
        ControllerConfig.from_env(env, stall_after=0)


def test_launch_option_reaches_the_workers_only_when_given(tmp_path: Path) -> None:
    def plan(**kw):
        cfg = LaunchConfig(script="train.py", job_id="j", **kw)
        return make_plan(cfg, {}, python="python", jobs_dir=str(tmp_path))

    assert plan(stall_after=90.0).env[ENV_STALL_AFTER] == "90"
    assert ENV_STALL_AFTER not in plan().env
    with pytest.raises(LaunchError, match="--stall-after"):
        LaunchConfig(script="train.py", stall_after=-1.0)


# -- rank 0's word, or its silence ----------------------------------------------------------
def _status(**kw) -> Status:
    return typed(Status, {"state": "running", "step": 41, **identity(), "heartbeat_at": 1000.0, **kw})


def test_stall_of_reads_rank_0s_word() -> None:
    st = _status(stall={"for": 400.0, "after": 300.0, "step": 41, "phase": "agreement"})
    got = stall_of(st, 1001.0)
    assert got is not None and got.for_ == 400.0 and got.step == 41 and "another rank has not arrived" in str(got.why)
    assert stall_of(_status(), 1001.0) is None
    assert stall_of(structs.replace(st, state=JobState.STOPPING), 1001.0) is None  # winding down is not a stall


def test_a_silent_rank_0_on_this_host_is_a_stall_but_not_one_on_another() -> None:
    st = _status(progress_at=900.0)
    got = stall_of(st, 1000.0 + SILENT_AFTER + 1)
    assert got is not None and got.phase == "silent" and "not answering" in str(got.why) and got.for_ == pytest.approx(SILENT_AFTER + 101)
    assert stall_of(st, 1000.0 + SILENT_AFTER - 1) is None
    elsewhere = structs.replace(st, host="another-host")  # its clock is not ours: never judged silent from here
    assert stall_of(elsewhere, 1000.0 + 10 * SILENT_AFTER) is None


def test_listing_calls_a_live_job_with_a_stall_stalled(tmp_path: Path) -> None:
    now = time.time()
    info = JobInfo("j", JobPaths(tmp_path, "j"), status=_status(heartbeat_at=now, stall={"for": 400.0, "after": 300.0, "step": 41, "phase": "training"}))
    info.liveness, info.judged_at = Liveness.ALIVE, now
    assert info.state == JobState.STALLED and JobState.STALLED.live and not JobState.STALLED.final
    row = info.summary()
    assert row.state == "stalled" and row.stall is not None and row.stall.phase == "training"
    info.liveness = Liveness.DEAD
    assert info.state == JobState.DEAD and info.stall is None  # a dead job is dead, not stalled


# -- a real Controller ----------------------------------------------------------------------
def test_controller_reports_a_stall_and_recovers(jobs_dir: Path) -> None:
    ctl = Controller(job_id="st", jobs_dir=jobs_dir, enable_http=False, signals=(), stall_after=0.5, heartbeat_interval=0.1, poll_interval=0.05)
    with ctl:
        ctl.step(1)
        st = wait_for(lambda: (s := read_json(ctl.paths.status, quiet=True) or {}).get("stall") and s, what="a stall in status.json")
        assert st["stall"]["step"] == 1 and st["stall"]["phase"] == "training" and st.get("eta_seconds") is None  # unset: not written
        ctl.step(2)
        wait_for(lambda: "stall" not in (read_json(ctl.paths.status, quiet=True) or {"stall": 1}), what="the stall gone after a step")


def test_cli_status_and_list_say_stalled(jobs_dir: Path, cli) -> None:
    ctl = Controller(job_id="st", jobs_dir=jobs_dir, enable_http=False, signals=(), stall_after=0.3, heartbeat_interval=0.1, poll_interval=0.05)
    with ctl:
        ctl.step(7)
        wait_for(lambda: (read_json(ctl.paths.status, quiet=True) or {}).get("stall"), what="a stall")
        rows = cli("control", "list", "--json").json()
        assert rows[0]["state"] == "stalled" and rows[0]["stall"]["step"] == 7
        st = cli("control", "status", "st", "--json").json()
        assert st["state"] == "stalled" and "training code" in st["stall"]["why"]
        human = cli("control", "status", "st")
        assert "stalled" in human.out and "no step for" in human.out and "forgather control stacks st" in human.out
        assert "eta" not in human.out  # no speed and no ETA for a job that does not move
        sent = cli("control", "save", "st")
        assert sent.code == 0 and "is stalled" in sent.err and "applies only if the job recovers" in sent.err, sent.err
        assert json.loads(cli("control", "eval", "st", "--json").out)["state"] == "sent"  # --json stays clean JSON
