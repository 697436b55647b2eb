"""JobHandle, the library every command goes through: resolution (local, --remote), the
channel rules, the reasons a job cannot take commands, waiting (including the rules
that used to live only in the CLI) and watching, against a real uvicorn job server on
loopback with a real Ledger behind it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.records import identity

from forgather_control.callback.server import create_app
from forgather_control.client import FileTransport, HttpTransport, JobHandle, list_jobs, open_job
from forgather_control.core import (
    AmbiguousJob,
    Command,
    CommandFailed,
    JobEnded,
    JobNotFound,
    JobPaths,
    JobState,
    Ledger,
    Unreachable,
    UsageError,
    WaitTimeout,
    write_json_atomic,
)
from forgather_control.core.errors import ControlError
from forgather_control.core.records import Status, encode
from forgather_control.serving.thread import ServerThread

TOKEN = "handle-test-token-0123456789abcdef"


class LiveJob:
    """A job server as rank 0 runs it: uvicorn on an ephemeral loopback port, a Ledger,
    a status the test can move, and (optionally) the job's records in a jobs dir."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.ledger = Ledger()
        self.state = "running"
        self.step = 3
        app = create_app(job_id=job_id, ledger=self.ledger, status=self.status, token=TOKEN)
        self.server = ServerThread(app)
        self.server.start()
        self.url = self.server.url

    def status(self) -> Status:
        return Status(job_id=self.job_id, state=self.state, step=self.step, commands=self.ledger.recent(), **identity())

    def publish(self, root: Path) -> JobPaths:
        paths = JobPaths(root, self.job_id).create()
        write_json_atomic(paths.endpoint, {"job_id": self.job_id, "url": self.url, "token": TOKEN, "protocol": 1, **identity()})
        write_json_atomic(paths.status, {**encode(self.status()), "heartbeat_at": time.time()})
        return paths

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def live() -> Iterator[Any]:
    made: list[LiveJob] = []

    def make(job_id: str) -> LiveJob:
        job = LiveJob(job_id)
        made.append(job)
        return job

    yield make
    for job in made:
        job.stop()


def test_every_error_carries_its_exit_code() -> None:
    for exc, code in (
        (UsageError("x"), 2),
        (AmbiguousJob("x"), 2),
        (JobNotFound("x"), 3),
        (Unreachable("x"), 4),
        (WaitTimeout("x"), 1),
        (CommandFailed("x"), 1),
    ):
        assert isinstance(exc, ControlError) and exc.exit_code == code


def test_open_local_by_prefix_send_and_wait(live, tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    job = live("train-alpha")
    job.publish(root)
    with open_job("train-a", jobs_dir=root) as h:
        assert h.job_id == "train-alpha" and h.channel == "http" and h.state == JobState.RUNNING
        receipt = h.send("save", key="k-1")
        assert receipt.state == "queued" and receipt.command == "save_checkpoint"
        assert h.details().live is True
        entry = job.ledger.next_pending()
        job.ledger.mark_applied(entry.id, 4)
        job.ledger.complete(entry.id, {"checkpoint": "/ckpt/4"})
        done = h.wait(receipt.id, timeout=30, interval=0.01)
    assert done.state == "completed" and done.result.checkpoint == "/ckpt/4"


def test_one_prefix_rule_everywhere(live, tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    for jid in ("run-a1", "run-a2"):
        JobPaths(root, jid).create()
        write_json_atomic(JobPaths(root, jid).status, {"job_id": jid, "state": "running", **identity()})
    with pytest.raises(AmbiguousJob, match="run-a1, run-a2"):
        open_job("run-a", jobs_dir=root)
    with pytest.raises(JobNotFound, match="no job 'zzz'"):
        open_job("zzz", jobs_dir=root)
    job = live("remote-job")
    remote = job.url.removeprefix("http://")
    with open_job("remote", remote=remote, token=TOKEN) as h:  # the same rule at a server
        assert h.job_id == "remote-job" and h.info is None and h.summary is not None and h.summary.state == "running"
    with pytest.raises(JobNotFound, match="it serves: remote-job"):
        open_job("other", remote=remote, token=TOKEN)
    with pytest.raises(UsageError, match="either --remote or --ray"):
        open_job("x", remote=remote, ray="auto")


def test_remote_wait_after_stop_the_server_going_away_is_the_stop_working(live) -> None:
    job = live("remote-stop")
    with JobHandle(job.job_id, HttpTransport(job.url, TOKEN, job.job_id)) as h:
        receipt = h.send(Command.GRACEFUL_STOP)
        job.ledger.mark_applied(receipt.id, 9)
        polls: list[Any] = []

        def stop_server(entry: Any) -> None:
            polls.append(entry)
            if entry is not None and entry.state == "applied":
                job.stop()

        done = h.wait(receipt.id, timeout=30, interval=0.01, on_poll=stop_server)
    assert polls and done.state == "completed" and done.result.final_state == "ended (server gone)"
    assert done.step == 9


def test_remote_server_gone_before_a_stop_applied_is_unreachable(live) -> None:
    job = live("remote-save")
    with JobHandle(job.job_id, HttpTransport(job.url, TOKEN, job.job_id)) as h:
        receipt = h.send("save")
        job.stop()
        with pytest.raises(Unreachable):
            h.wait(receipt.id, timeout=30, interval=0.01)


def test_wait_gives_up_when_a_starting_job_ends_without_taking_the_command(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    paths = JobPaths(root, "starting-1").create()
    launcher = identity()  # this test process plays the live launcher
    paths.nodes.mkdir()
    write_json_atomic(paths.job, {"job_id": "starting-1", "state": "running", "control": True, **launcher})
    write_json_atomic(paths.node(0), {"job_id": "starting-1", "state": "running", "heartbeat_at": time.time(), **launcher})
    with open_job("starting-1", jobs_dir=root) as h:
        assert h.state == JobState.STARTING and h.channel == "file"
        with pytest.raises(Unreachable, match="is starting"):
            JobHandle.from_info(h.info, channel="http")
        receipt = h.send("eval")
        assert receipt.state == "sent" and len(os.listdir(paths.inbox)) == 1
        write_json_atomic(paths.job, {"job_id": "starting-1", "state": "failed", "exit_code": 1, "control": True, **launcher})
        with pytest.raises(CommandFailed, match="ended \\(failed, exit code 1\\) before it took command"):
            h.wait(receipt.id, timeout=30, interval=0.01)


def test_wait_times_out_with_what_to_do(live, tmp_path: Path) -> None:
    job = live("slow-1")
    job.publish(tmp_path / "jobs")
    with open_job("slow-1", jobs_dir=tmp_path / "jobs") as h:
        receipt = h.send("save")
        with pytest.raises(WaitTimeout, match=r"still queued after .* stays queued"):
            h.wait(receipt.id, timeout=0.05, interval=0.01)


def test_commands_refused_before_sending_with_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    ended = JobPaths(root, "ended-1").create()
    write_json_atomic(ended.status, {"job_id": "ended-1", "state": "stopped", **identity(999_999_999)})
    dead = JobPaths(root, "dead-1").create()
    ident = {**identity(), "pid_start_time": 1.0}  # our pid, another start time: recycled
    write_json_atomic(dead.endpoint, {"job_id": "dead-1", "url": None, "token": "t", **ident})
    write_json_atomic(dead.status, {"job_id": "dead-1", "state": "running", **ident})
    with pytest.raises(JobEnded, match="has ended \\(stopped\\)"):
        open_job("ended-1", jobs_dir=root).send("save")
    with pytest.raises(JobEnded, match=r"is dead .* cleanup"):
        open_job("dead-1", jobs_dir=root).send("save")
    assert os.listdir(dead.inbox) == [] and os.listdir(ended.inbox) == []
    with pytest.raises(UsageError, match="unknown command"):
        open_job("ended-1", jobs_dir=root).send("explode")


def test_another_hosts_loopback_is_reached_through_files_only(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    paths = JobPaths(root, "far-1").create()
    far = {"host": "another-node", "boot_id": "b", "pid": 4242, "pid_start_time": 1.0}
    write_json_atomic(paths.endpoint, {"job_id": "far-1", "url": "http://127.0.0.1:1", "token": "secret", **far})
    write_json_atomic(paths.status, {"job_id": "far-1", "state": "running", "step": 2, "heartbeat_at": time.time(), **far})
    with open_job("far-1", jobs_dir=root) as h:
        assert isinstance(h.transport, FileTransport)
        assert h.status().step == 2
        assert h.send("save").state == "sent"
    with pytest.raises(Unreachable, match="loopback of another-node"):
        open_job("far-1", jobs_dir=root, channel="http")


def test_wait_ends_when_the_job_dies_with_the_command_open(live, tmp_path: Path) -> None:
    """Rank 0 killed with nobody left to write its end (its endpoint stays): waiting
    stops at the next judgement instead of running out its timeout."""
    root = tmp_path / "jobs"
    job = live("killed")
    paths = job.publish(root)
    with open_job("killed", jobs_dir=root) as h:
        receipt = h.send("save")
        job.stop()
        gone = {**identity(), "pid_start_time": 1.0}  # the pid runs, but not the process the records name
        write_json_atomic(paths.endpoint, {"job_id": "killed", "url": job.url, "token": TOKEN, "protocol": 1, **gone})
        write_json_atomic(paths.status, {**encode(job.status()), **gone, "heartbeat_at": time.time()})
        with pytest.raises(CommandFailed, match=r"has ended .*never reached a final state .*queued"):  # not WaitTimeout
            h.wait(receipt.id, timeout=120, interval=0.05, rejudge_every=0.1)


def test_watch_ends_on_a_final_state_and_on_a_dead_verdict(live, tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    job = live("watched")
    job.publish(root)
    with open_job("watched", jobs_dir=root) as h:
        snaps = h.watch(interval=0.01)
        assert next(snaps).status.step == 3
        job.state, job.step = "stopped", 7
        last = [s for s in snaps][-1]
    assert last.ended == "job watched stopped at step 7"

    dead = JobPaths(root, "vanished").create()
    ident = {**identity(), "pid_start_time": 1.0}
    write_json_atomic(dead.status, {"job_id": "vanished", "state": "running", "step": 1, **ident})
    handle = JobHandle.from_info(open_job("vanished", jobs_dir=root).info)
    ended = [s.ended for s in handle.watch(interval=0.01, rejudge_every=0.1) if s.ended]
    assert ended and "is dead" in ended[0]


def test_list_jobs_says_where_and_whether_the_folder_exists(live, tmp_path: Path) -> None:
    missing = list_jobs(jobs_dir=tmp_path / "nothing-here")
    assert missing.rows == [] and missing.exists is False and missing.source == "local"
    job = live("listed-1")
    job.publish(tmp_path / "jobs")
    listing = list_jobs(jobs_dir=tmp_path / "jobs")
    assert [r.job_id for r in listing.rows] == ["listed-1"] and listing.rows[0].state == "running"
    remote = list_jobs(remote=job.url.removeprefix("http://"), token=TOKEN)
    assert remote.source == "remote" and remote.rows[0].job_id == "listed-1" and "token" not in encode(remote.rows[0])


def test_a_live_jobs_details_keep_its_checkpoint_history_not_rank_0s_list(live, tmp_path: Path) -> None:
    """Rank 0 knows its own run's checkpoints, without where each is; the details of a job
    whose server answers keep the history from its records: every checkpoint, whether it
    is on disk, which one a resume takes."""
    from forgather_control.core.records import CheckpointRecord

    older, newer = tmp_path / "out" / "checkpoint-100", tmp_path / "out" / "checkpoint-200"
    newer.parent.mkdir()
    newer.write_text("weights")  # the older one is gone

    class RunsOn(LiveJob):
        def status(self) -> Status:  # rank 0's answer: its run's one checkpoint
            return Status(job_id=self.job_id, state="running", step=250, checkpoints=[CheckpointRecord(path=str(newer), step=200)], **identity())

    job = RunsOn("ckpts-1")
    paths = job.publish(tmp_path / "jobs")
    records = {**encode(job.status()), "checkpoints": [{"path": str(older), "step": 100}, {"path": str(newer), "step": 200}], "heartbeat_at": time.time()}
    write_json_atomic(paths.status, records)
    try:
        with open_job("ckpts-1", jobs_dir=tmp_path / "jobs") as handle:
            details = handle.details()
    finally:
        job.server.stop()
    assert details.live
    listed = [(c.step, c.on_disk, c.resume_point) for c in details.checkpoints or []]
    assert listed == [(100, False, None), (200, True, True)], listed
