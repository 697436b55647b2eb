"""The Controller's job state is a JobState; records keep the same strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.waiting import wait_for

from forgather_control.callback import Controller
from forgather_control.core import read_json
from forgather_control.core.states import JobState


def make(jobs_dir: Path, **kw) -> Controller:
    kw.setdefault("signals", ())
    kw.setdefault("enable_http", False)
    return Controller(job_id=kw.pop("job_id", "st"), jobs_dir=jobs_dir, **kw)


def test_states_through_a_stop(jobs_dir: Path) -> None:
    ctl = make(jobs_dir)
    assert ctl.state is JobState.STARTING
    ctl.start()
    assert ctl.state is JobState.RUNNING
    wait_for(lambda: (read_json(ctl.paths.status, quiet=True) or {}).get("state") == "running", what="status.json says running")
    ctl.ledger.submit("stop")
    assert ctl.step(1).stop and ctl.state is JobState.STOPPING and ctl.stopping
    ctl.close()
    assert ctl.state is JobState.STOPPED
    raw = json.loads(ctl.paths.status.read_text())
    assert raw["state"] == "stopped"


@pytest.mark.parametrize("given", [JobState.ABORTED, "aborted"])
def test_close_takes_a_state_or_its_string(jobs_dir: Path, given: JobState | str) -> None:
    ctl = make(jobs_dir).start()
    ctl.close(given, error="a second signal ended the process without saving")
    assert ctl.state is JobState.ABORTED and read_json(ctl.paths.status)["state"] == "aborted"


@pytest.mark.parametrize("bad", ["stoped", "running", JobState.STOPPING, 3])
def test_close_refuses_what_is_not_a_final_state_and_stays_open(jobs_dir: Path, bad: object) -> None:
    ctl = make(jobs_dir).start()
    with pytest.raises(ValueError, match="finished, stopped, aborted, failed"):
        ctl.close(bad)  # type: ignore[arg-type]
    assert not ctl.closed
    ctl.close()
    assert ctl.state is JobState.FINISHED


def test_defaults_from_what_happened(jobs_dir: Path) -> None:
    ctl = make(jobs_dir, job_id="failed").start()
    ctl.close(error="RuntimeError: boom")
    assert ctl.state is JobState.FAILED
    with make(jobs_dir, job_id="aborted") as ctl:
        ctl.ledger.submit("abort")
        assert ctl.step(1).abort
    assert ctl.state is JobState.ABORTED and ctl.aborted


def test_keyboard_interrupt_is_stopped(jobs_dir: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with make(jobs_dir) as ctl:
            raise KeyboardInterrupt
    assert ctl.state is JobState.STOPPED and read_json(ctl.paths.status)["error"] == "interrupted"


def test_not_rank0_serves_nothing(jobs_dir: Path) -> None:
    ctl = make(jobs_dir, rank=1, world_size=2, enable_http=True).start()
    try:
        assert not ctl.serves_http and not ctl.plane.serving and ctl.url is None
        assert not ctl.paths.endpoint.exists()
    finally:
        ctl.close()


def test_rank0_serves_http(jobs_dir: Path) -> None:
    ctl = make(jobs_dir, enable_http=True).start()
    try:
        assert ctl.serves_http and ctl.url and read_json(ctl.paths.endpoint)["url"] == ctl.url
        assert read_json(ctl.paths.status)["http"] == {"url": ctl.url}
    finally:
        ctl.close()
    assert not ctl.serves_http
