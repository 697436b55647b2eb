"""A launched job with no control attached, without processes: the launcher's decision
(attached / not yet / warn once / cleared, on an injected clock), what a stop signal
does before and after control is attached, the outcome and exit code, the records, and
what ``list``, ``status`` and a command say about it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from rich.console import Console
from support.records import identity, typed

from forgather_control.cli import render
from forgather_control.client import JobHandle, open_job
from forgather_control.client.jobinfo import JobInfo
from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.attachment import ADD_CONTROL, nothing_to_save_reason, published
from forgather_control.core.errors import Unreachable, WaitTimeout
from forgather_control.core.liveness import Liveness
from forgather_control.core.outcome import EXIT_ABORTED, EXIT_PREEMPTED, launch_exit_code
from forgather_control.core.records import Job, RecordError, Status, encode
from forgather_control.core.states import JobState
from forgather_control.launcher import LaunchConfig, LaunchError, make_plan
from forgather_control.launcher.attach import AttachWatch, Change, ControlAttach, passed_on_reason
from forgather_control.launcher.config import DEFAULT_NO_CONTROL_AFTER, no_control_after
from forgather_control.launcher.records import JobRecords, read_previous
from forgather_control.launcher.run import Supervisor


# -- the decision ------------------------------------------------------------------------
def test_a_status_published_before_the_threshold_is_attached_and_nothing_is_said() -> None:
    watch = AttachWatch(after=10.0, started=100.0)
    assert watch.look(False, 105.0) is None and not watch.attached
    assert watch.look(True, 106.0) is Change.ATTACHED and watch.attached and not watch.missing
    assert watch.look(False, 500.0) is None  # once attached, always: a later look changes nothing


def test_no_status_past_the_threshold_warns_once_then_clears_when_rank0_publishes() -> None:
    watch = AttachWatch(after=10.0, started=100.0)
    assert watch.look(False, 109.9) is None
    assert watch.look(False, 110.0) is Change.MISSING and watch.missing
    assert [watch.look(False, t) for t in (111.0, 200.0, 10_000.0)] == [None, None, None]  # said once
    assert watch.look(True, 10_001.0) is Change.CLEARED and watch.attached and not watch.missing
    assert watch.look(True, 10_002.0) is None


def test_only_this_runs_status_counts_as_published() -> None:
    assert published(typed(Status, {"state": "running", "restarts": 2}), 2)
    assert not published(typed(Status, {"state": "stopped", "restarts": 1}), 2)  # the previous run's
    assert not published(typed(Status, {"state": "running"}), 0)  # no run count: not this launcher's run
    with pytest.raises(RecordError, match="restarts"):  # a run count that is no count: no status (corrupt), never published
        typed(Status, {"state": "running", "restarts": True})
    assert not published(None, 0) and not published(typed(Status, {}), 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_launchers_watch_records_the_warning_once_and_clears_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = JobPaths(tmp_path, "nc").create()
    clock, recorded = Clock(), []
    attach = ControlAttach(paths, run=1, after=30.0, record=lambda **f: recorded.append(f), clock=clock, interval=1.0)
    write_json_atomic(paths.status, {"job_id": "nc", "state": "stopped", "restarts": 0})  # the run before
    clock.now += 29.0
    attach.tick()
    assert recorded == [] and attach.may_save_now()  # not judged yet: a model may still be loading
    for _ in range(5):
        clock.now += 2.0
        attach.tick()
    assert not attach.may_save_now()  # judged uncontrolled: a signal goes to the workers at once
    assert len(recorded) == 1 and isinstance(recorded[0]["no_control_since"], float), recorded
    warnings = [r.getMessage() for r in caplog.records if "no control attached yet" in r.getMessage()]
    assert len(warnings) == 1 and "after 30s" in warnings[0] and ADD_CONTROL in warnings[0] and "nc" in warnings[0]

    write_json_atomic(paths.status, {"job_id": "nc", "state": "running", "restarts": 1})
    assert attach.may_save_now()  # read at once, as a signal asks it
    clock.now += 2.0
    attach.tick()
    assert recorded[-1] == {"no_control_since": None} and len(recorded) == 2


def test_the_record_is_written_before_each_message_and_a_failed_record_still_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Whoever reads the launcher's message (a person, a test) finds job.json already says it."""
    paths = JobPaths(tmp_path, "nc").create()
    clock, order = Clock(), []

    def record(**fields: object) -> None:
        order.append(("record", fields["no_control_since"] is None, len(caplog.records)))

    attach = ControlAttach(paths, run=0, after=2.0, record=record, clock=clock, interval=1.0)
    clock.now += 3.0
    attach.tick()
    write_json_atomic(paths.status, {"job_id": "nc", "state": "running", "restarts": 0})
    clock.now += 2.0
    attach.tick()
    said = [r.getMessage() for r in caplog.records]
    assert [(o[0], o[1]) for o in order] == [("record", False), ("record", True)], order
    assert "no control attached yet" in said[order[0][2]] and "control attached after all" in said[order[1][2]], said

    def broken(**fields: object) -> None:
        raise OSError("disk full")

    caplog.clear()
    failing = ControlAttach(JobPaths(tmp_path, "nc2").create(), run=0, after=2.0, record=broken, clock=clock, interval=1.0)
    clock.now += 3.0
    failing.tick()
    said = [r.getMessage() for r in caplog.records]
    assert any("could not record" in m for m in said) and any("no control attached yet" in m for m in said), said


# -- a stop signal ----------------------------------------------------------------------
def supervisor(may_save, nothing_yet=None) -> tuple[Supervisor, list[int]]:
    asked: list[int] = []
    return Supervisor(["true"], {}, grace=600.0, on_stop=asked.append, may_save=may_save, nothing_yet=nothing_yet), asked


def test_a_signal_while_the_script_is_still_loading_stops_it_at_once_with_nothing_to_save(tmp_path: Path) -> None:
    """A SLURM preemption while the model loads (no status of this run, or one without a
    first step): nothing can be lost, so torchrun is stopped now, not after the grace;
    once rank 0 reports its first step, a signal asks for a save."""
    paths = JobPaths(tmp_path, "loading").create()
    clock = Clock()
    attach = ControlAttach(paths, run=0, after=300.0, record=lambda **f: None, clock=clock)
    clock.now += 60.0  # a minute into loading, nothing published yet
    sup, asked = supervisor(attach.may_save_now, attach.nothing_to_save_now)
    sup._handle(signal.SIGUSR1)
    assert asked == [] and sup.before_first_step == signal.SIGUSR1 and sup.passed_on is None
    assert sup._term_at is None and sup._termed  # torchrun was sent SIGTERM now, not after the grace

    write_json_atomic(paths.status, {"job_id": "loading", "state": "running", "restarts": 0, "step": 0})
    assert attach.nothing_to_save_now()  # a Controller runs, its first step does not
    write_json_atomic(paths.status, {"job_id": "loading", "state": "running", "restarts": 0, "step": 1, "first_step_at": time.time()})
    sup, asked = supervisor(attach.may_save_now, attach.nothing_to_save_now)
    sup._handle(signal.SIGUSR1)
    assert asked == [signal.SIGUSR1] and sup.before_first_step is None and sup._term_at is not None and not sup._termed
    paths.status.unlink()  # the job's folder removed while it trains: this run had published
    assert not attach.nothing_to_save_now()
    gone = ControlAttach(JobPaths(tmp_path, "gone"), run=0, after=300.0, record=lambda **f: None, clock=clock)
    assert not gone.nothing_to_save_now()  # removed before the launcher saw it publish: cannot tell, so save
    write_json_atomic(paths.status, {"job_id": "loading", "state": "running", "restarts": 1, "step": 3, "first_step_at": 1.0})
    assert attach.nothing_to_save_now()  # another run's first step is not this run's


def test_a_signal_to_a_job_judged_uncontrolled_goes_to_torchrun_at_once() -> None:
    sup, asked = supervisor(lambda: False)
    sup._handle(signal.SIGTERM)
    assert asked == [] and sup.passed_on == signal.SIGTERM  # no save_and_stop in the inbox
    assert sup._term_at is None and sup._termed  # torchrun was sent SIGTERM now, not after the grace


def test_a_signal_once_control_is_attached_asks_for_a_save_within_the_grace() -> None:
    sup, asked = supervisor(lambda: True)
    sup._handle(signal.SIGUSR1)
    assert asked == [signal.SIGUSR1] and sup.passed_on is None and sup._term_at is not None and not sup._termed


def test_a_signal_when_attachment_cannot_be_read_takes_the_save_path() -> None:
    def broken() -> bool:
        raise OSError("status.json unreadable")

    sup, asked = supervisor(broken)
    sup._handle(signal.SIGTERM)
    assert asked == [signal.SIGTERM] and sup.passed_on is None


# -- the outcome --------------------------------------------------------------------------
def test_exit_code_of_a_signal_passed_on_is_128_plus_the_signal() -> None:
    assert launch_exit_code(JobState.FAILED, by_signal=True, worker_code=1, passed_on=signal.SIGTERM) == 143
    assert launch_exit_code(JobState.FAILED, by_signal=True, worker_code=1, passed_on=signal.SIGINT) == 130
    # a second signal escalates to an abort; a stop rank 0 applied in time keeps its own code
    assert launch_exit_code(JobState.ABORTED, by_signal=True, worker_code=1, passed_on=signal.SIGTERM) == EXIT_ABORTED
    assert launch_exit_code(JobState.STOPPED, by_signal=True, worker_code=1, passed_on=signal.SIGTERM) == EXIT_PREEMPTED
    assert launch_exit_code(JobState.FAILED, by_signal=False, worker_code=1) == 1


def records(jobs: Path, job_id: str, **options) -> JobRecords:
    p = make_plan(LaunchConfig(script="train.py", job_id=job_id, **options), {}, python="python3", jobs_dir=str(jobs))
    paths = JobPaths(jobs, job_id)
    prev = read_previous(paths, p.placement)
    rec = JobRecords(paths, p)
    rec.claim(prev)
    rec.start(prev, argv=["forgather", "launch", "train.py"], cwd="/work", no_control_after=45.0 if p.config.control else None)
    return rec


def test_the_outcome_says_no_save_was_possible(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    rec = records(jobs, "nc")
    job = json.loads((jobs / "nc" / "job.json").read_text())
    assert job["no_control_after"] == 45.0 and job.get("no_control_since") is None  # unset: not written
    why = passed_on_reason(signal.SIGTERM, control=True)
    assert "SIGTERM" in why and "no control attached" in why and "no save was possible" in why and ADD_CONTROL in why
    out = rec.outcome(1, signalled=True, passed_on=why)
    assert (out.state, out.reason, out.by_signal) == (JobState.FAILED, why, True)
    rec.finish(out.state, launch_exit_code(out.state, by_signal=True, worker_code=1, passed_on=signal.SIGTERM), reason=out.reason)
    job = json.loads((jobs / "nc" / "job.json").read_text())
    status = json.loads((jobs / "nc" / "status.json").read_text())  # the launcher closes rank 0's books
    assert (job["state"], job["exit_code"], job["reason"]) == ("failed", 143, why)
    assert (status["state"], status["error"], status["closed_by"]) == ("failed", why, "launcher")


def test_a_stop_before_the_first_step_is_a_stop_that_lost_nothing(tmp_path: Path) -> None:
    """torchrun ends non-zero (its SignalException, the workers' SIGTERM), yet the outcome
    is stopped by a signal, exit 75, with the reason in job.json and status.json."""
    jobs = tmp_path / "jobs"
    rec = records(jobs, "early")
    why = nothing_to_save_reason("SIGUSR1")
    out = rec.outcome(1, signalled=True, nothing_saved=why)
    assert (out.state, out.reason, out.by_signal) == (JobState.STOPPED, why, True)
    code = launch_exit_code(out.state, by_signal=out.by_signal, worker_code=1)
    rec.finish(out.state, code, reason=out.reason, torchrun_exit_code=1)
    job = json.loads((jobs / "early" / "job.json").read_text())
    status = json.loads((jobs / "early" / "status.json").read_text())
    assert (job["state"], job["exit_code"], job["reason"]) == ("stopped", EXIT_PREEMPTED, why)
    assert (status["state"], status["stop_reason"], status["closed_by"]) == ("stopped", why, "launcher")
    assert "nothing to save yet" in why and why.startswith("SIGUSR1 came before this run's first training step")


def test_a_stop_rank0_recorded_in_time_is_the_outcome(tmp_path: Path) -> None:
    """Rank 0 came up just after the launcher looked: its Controller took torchrun's SIGTERM
    and saved; torchrun's own exit code (1, its SignalException) is no failure then."""
    jobs = tmp_path / "jobs"
    rec = records(jobs, "late")
    write_json_atomic(JobPaths(jobs, "late").status, {"job_id": "late", "state": "stopped", "restarts": 0, "stop_reason": "signal"})
    out = rec.outcome(1, signalled=True, passed_on=passed_on_reason(signal.SIGTERM, control=True))
    assert (out.state, out.by_signal) == (JobState.STOPPED, True)
    rec.finish(out.state, 75)


def test_no_control_words_for_a_job_started_with_no_control() -> None:
    why = passed_on_reason(signal.SIGINT, control=False)
    assert why.startswith("SIGINT stopped the workers at once") and "--no-control" in why and "no save was possible" in why


# -- the option ---------------------------------------------------------------------------
def test_the_threshold_comes_from_the_option_then_the_environment_then_the_default() -> None:
    config = LaunchConfig(script="train.py")
    assert no_control_after(config, {}) == DEFAULT_NO_CONTROL_AFTER == 300.0
    assert no_control_after(config, {"FORGATHER_NO_CONTROL_AFTER": "12.5"}) == 12.5
    assert no_control_after(LaunchConfig(script="train.py", no_control_after=7.0), {"FORGATHER_NO_CONTROL_AFTER": "12.5"}) == 7.0


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_threshold_in_the_environment_is_refused_with_what_to_do(raw: str) -> None:
    with pytest.raises(LaunchError, match=f"FORGATHER_NO_CONTROL_AFTER='{raw}' is not a positive number of seconds"):
        no_control_after(LaunchConfig(script="train.py"), {"FORGATHER_NO_CONTROL_AFTER": raw})


def test_bad_threshold_options_are_refused() -> None:
    with pytest.raises(LaunchError, match=r"--no-control-after 0\.0 must be a positive number"):
        LaunchConfig(script="train.py", no_control_after=0.0)
    with pytest.raises(LaunchError, match="no effect with --no-control"):
        LaunchConfig(script="train.py", no_control_after=10.0, control=False)


# -- what readers show --------------------------------------------------------------------
RUNNING = {"state": "running", "restarts": 0, "control": True, "no_control_after": 45.0}


def info(status: dict | None, job: dict) -> JobInfo:
    typed_status = typed(Status, status) if status is not None else None
    return JobInfo(job_id="j", paths=JobPaths(Path("/nonexistent"), "j"), status=typed_status, job=typed(Job, job), liveness=Liveness.ALIVE)


def test_the_state_is_uncontrolled_once_the_launcher_recorded_it_and_running_once_rank0_publishes() -> None:
    assert info(None, RUNNING).state == JobState.STARTING and info(None, RUNNING).summary().no_control is None
    flagged = {**RUNNING, "no_control_since": 1234.0}
    row = info(None, flagged).summary()
    assert row.state == "uncontrolled" and JobState.UNCONTROLLED.live
    why = "no control attached yet after 45s: rank 0 has not started a Controller in this run"
    assert encode(row)["no_control"] == {"after": 45.0, "since": 1234.0, "why": why, "add": ADD_CONTROL}  # every field, null included
    # rank 0 published before the launcher took its record back: the job's own word wins
    assert info({"state": "running", "restarts": 0}, flagged).state == JobState.RUNNING
    assert info({"state": "running", "restarts": 0}, flagged).summary().no_control is None


def live_uncontrolled_job(root: Path, job_id: str) -> JobPaths:
    """Records of a live launcher (this test process plays it) that recorded no control."""
    paths = JobPaths(root, job_id).create()
    launcher = identity()
    paths.nodes.mkdir()
    write_json_atomic(paths.job, {"job_id": job_id, **RUNNING, "no_control_since": time.time(), **launcher})
    write_json_atomic(paths.node(0), {"job_id": job_id, "state": "running", "heartbeat_at": time.time(), **launcher})
    return paths


def test_a_command_to_an_uncontrolled_job_says_nothing_takes_it(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    paths = live_uncontrolled_job(root, "nc-1")
    with open_job("nc-1", jobs_dir=root) as h:
        assert h.state == JobState.UNCONTROLLED and h.channel == "file"
        notice = h.no_control_notice()
        assert notice is not None and "no control attached yet after 45s" in notice and ADD_CONTROL in notice
        receipt = h.send("save")
        assert receipt.state == "sent" and len(os.listdir(paths.inbox)) == 1  # waits, in case one starts
        with pytest.raises(WaitTimeout) as caught:
            h.wait(receipt.id, timeout=0.05, interval=0.01)
    assert "was not picked up after 0.05s" in str(caught.value) and "no control attached yet" in str(caught.value)
    assert "not yet picked up" not in str(caught.value)
    with open_job("nc-1", jobs_dir=root) as h, pytest.raises(Unreachable, match="is uncontrolled: rank 0 does not serve HTTP"):
        JobHandle.from_info(h.info, channel="http")


def rendered(renderable) -> str:
    con = Console(width=400, record=True)
    con.print(renderable)
    return con.export_text()


def test_status_and_list_show_it_and_what_to_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "jobs"
    live_uncontrolled_job(root, "nc-2")
    with open_job("nc-2", jobs_dir=root) as h:
        details = h.details()
    assert details.state == "uncontrolled" and details.no_control is not None and details.no_control.add == ADD_CONTROL
    panel = rendered(render.status_panel(details))
    assert "uncontrolled" in panel and "no control attached yet after 45s" in panel and "to attach control:" in panel
    assert "speed" not in panel and "eta" not in panel
    render.print_jobs([details])
    shown = capsys.readouterr().out
    assert "uncontrolled" in shown and "nc-2: no control attached yet after 45s" in shown and f"to attach control: {ADD_CONTROL}" in shown
