"""The single-process Controller with its real uvicorn server and inbox poller.

The training loop is the test's own thread calling ``step``; commands come through the
real client (HTTP on loopback, or the file channel).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from support.waiting import wait_for

from forgather_control.callback import NO_ACTIONS, Controller
from forgather_control.client import JobHandle, find_job, probe_endpoint
from forgather_control.core import Command, CommandRefused, read_json


def make(jobs_dir: Path, **kw) -> Controller:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("signals", ())
    return Controller(job_id=kw.pop("job_id", "job-1"), jobs_dir=jobs_dir, max_steps=100, **kw)


def client_for(jobs_dir: Path, job_id: str = "job-1", **kw) -> JobHandle:
    return JobHandle.from_info(find_job(jobs_dir, job_id, probe=probe_endpoint), **kw)


def run_until_actions(ctl: Controller, start: int, limit: int = 10_000):
    for step in range(start, start + limit):
        act = ctl.step(step, {"loss": 1.0 / step})
        if act:
            return step, act
    raise AssertionError("no actions")


def test_files_and_modes_under_umask_000(jobs_dir: Path) -> None:
    old = os.umask(0)
    try:
        ctl = make(jobs_dir).start()
    finally:
        os.umask(old)
    try:
        ep = read_json(ctl.paths.endpoint)
        assert ep is not None and ep["url"].startswith("http://127.0.0.1:")
        assert stat.S_IMODE(os.stat(ctl.paths.endpoint).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(ctl.paths.dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(jobs_dir).st_mode) == 0o700
        assert ep["token"] and len(ep["token"]) >= 32
        # the token lives in the endpoint file only
        assert ep["token"] not in ctl.paths.status.read_text()
    finally:
        ctl.close()


def test_a_save_whose_reported_path_is_not_on_disk_fails_and_records_no_resume_point(jobs_dir: Path) -> None:
    ctl = make(jobs_dir).start()
    try:
        with client_for(jobs_dir) as c:
            assert ctl.step(1) is NO_ACTIONS
            save = c.send("save")
            step, act = run_until_actions(ctl, 2)
            assert act.save
            ghost = jobs_dir / "out" / f"checkpoint-{step}"  # what a trainer that guesses its path would report
            ctl.checkpoint_saved(ghost)
            entry = c.entry(save.id)
            assert entry.state == "failed" and str(ghost) in entry.reason and "nothing is on disk" in entry.reason
            st = c.status()
            assert st.resume_point is None and st.last_checkpoint is None  # a field left unset is not written
            # the next save that is really written completes as usual
            again = c.send("save")
            step, act = run_until_actions(ctl, step + 1)
            real = jobs_dir / "real"
            real.mkdir()
            ctl.checkpoint_saved(real)
            assert c.entry(again.id).state == "completed"
            assert c.status().resume_point.path == str(real)
    finally:
        ctl.close()


def test_commands_over_http_end_to_end(jobs_dir: Path) -> None:
    ctl = make(jobs_dir).start()
    with client_for(jobs_dir) as c:
        assert ctl.step(1) is NO_ACTIONS
        save = c.send("save")
        step, act = run_until_actions(ctl, 2)
        assert act.save and not act.stop and act.command == Command.SAVE_CHECKPOINT
        assert c.entry(save.id).state == "applied"
        (jobs_dir / "ckpt").write_text("saved")
        ctl.checkpoint_saved(jobs_dir / "ckpt")
        done = c.entry(save.id)
        assert done.state == "completed" and done.step == step and done.result.checkpoint == str(jobs_dir / "ckpt")

        ev = c.send("eval")
        step, act = run_until_actions(ctl, step + 1)
        assert act.evaluate and not act.save
        ctl.evaluation_done({"eval_loss": 0.5})
        assert c.entry(ev.id).result.metrics == {"eval_loss": 0.5}

        stop = c.send("stop")
        step, act = run_until_actions(ctl, step + 1)
        assert act.stop and not act.save and not act.abort
        ctl.close()
        final = c.wait(stop.id, timeout=10)
    assert final.state == "completed" and final.result.final_state == "stopped"
    assert not ctl.paths.endpoint.exists()
    st = read_json(ctl.paths.status)
    assert st["state"] == "stopped" and st["ended_at"] and st["step"] == step


def test_abort_and_refusals_after_stop(jobs_dir: Path) -> None:
    ctl = make(jobs_dir).start()
    with client_for(jobs_dir) as c:
        ab = c.send("abort")
        with pytest.raises(CommandRefused) as exc:
            c.send("save")
        assert exc.value.http_status == 409
        _, act = run_until_actions(ctl, 1)
        assert act.stop and act.abort and not act.save
        ctl.close()
        assert c.wait(ab.id, timeout=10).state == "completed"
    assert read_json(ctl.paths.status)["state"] == "aborted"


def test_pending_command_at_end_is_dropped_with_reason(jobs_dir: Path) -> None:
    ctl = make(jobs_dir).start()
    with client_for(jobs_dir) as c:
        ev = c.send("eval")
        ctl.close()  # training ended before the next step
        e = c.wait(ev.id, timeout=10)
    assert e.state == "dropped" and "before the command could apply" in e.reason
    assert read_json(ctl.paths.status)["state"] == "finished"


def test_a_failure_while_an_abort_waits_is_the_abort(jobs_dir: Path) -> None:
    """A hung job told to abort: the ranks cannot agree, so launchers end them, and rank
    0 fails in its collective before its own launcher gets to it (a two-node run did
    that). The user asked for the job to end without saving, and it did: aborted, the
    abort completed and saying how, not a failure with the abort dropped."""
    ctl = make(jobs_dir).start()
    with client_for(jobs_dir) as c:
        ab = c.send("abort")
        ctl.close(error="RuntimeError: [gloo] Connection closed by peer")  # no step came after it
        e = c.wait(ab.id, timeout=10)
    assert e.state == "completed" and e.result.final_state == "aborted", e
    assert "before its ranks agreed on the abort" in e.reason and "nothing was saved" in e.reason
    assert read_json(ctl.paths.status)["state"] == "aborted"


def test_unreported_receipt_fails_at_next_step(jobs_dir: Path) -> None:
    ctl = make(jobs_dir).start()
    try:
        with client_for(jobs_dir) as c:
            save = c.send("save")
            step, act = run_until_actions(ctl, 1)
            assert act.save
            ctl.step(step + 1)
            e = c.entry(save.id)
            assert e.state == "failed" and "checkpoint_saved" in e.reason
    finally:
        ctl.close()


def test_file_channel_only(jobs_dir: Path) -> None:
    ctl = make(jobs_dir, enable_http=False).start()
    try:
        info = find_job(jobs_dir, "job")
        assert info.endpoint is not None and info.endpoint.url is None
        c = JobHandle.from_info(info)
        assert c.channel == "file"
        sent = c.send("save")
        act = wait_for(lambda: ctl.step(1), timeout=30, what="the inbox command")
        assert act.save
        (jobs_dir / "x").write_text("saved")
        ctl.checkpoint_saved(jobs_dir / "x")
        e = wait_for(lambda: (r := c.entry(sent.id)) is not None and r.state == "completed" and r, what="receipt in status.json")
        assert e.result.checkpoint == str(jobs_dir / "x")
        # garbage and hostile files in the inbox are skipped, never crash the poller; the
        # grace a file that does not parse gets is short here (the grace itself:
        # test_publisher_inbox.py), long enough for a tiny write_text to finish
        ctl.plane.publisher.inbox_grace = 0.2
        (ctl.paths.inbox / "garbage.json").write_text("{nope")
        (ctl.paths.inbox / "list.json").write_text("[1]")
        (ctl.paths.inbox / "unknown.json").write_text(json.dumps({"id": "c-abc", "command": "explode"}))
        outside = jobs_dir.parent / "outside.json"
        outside.write_text(json.dumps({"command": "abort"}))
        (ctl.paths.inbox / "link.json").symlink_to(outside)
        wait_for(lambda: not list(ctl.paths.inbox.iterdir()), what="inbox drained")
        assert outside.exists(), "the poller removes the link, never its target"
        rej = wait_for(lambda: c.entry("c-abc"), what="rejection receipt")
        assert rej.state == "rejected" and "valid commands" in rej.reason
        assert ctl.step(2) is NO_ACTIONS, "the symlinked abort must not be obeyed"
    finally:
        ctl.close()


def test_server_that_cannot_start_does_not_stop_training(jobs_dir: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        ctl = make(jobs_dir, port=busy.getsockname()[1]).start()
        try:
            assert ctl.state == "running"
            st = read_json(ctl.paths.status)
            assert "HTTP server did not start" in st["control_error"]
            # the file channel still works
            info = find_job(jobs_dir, "job-1")
            JobHandle.from_info(info).send("eval")
            act = wait_for(lambda: ctl.step(3), timeout=30, what="file command")
            assert act.evaluate
        finally:
            ctl.close()
    finally:
        busy.close()


def test_jobs_dir_that_cannot_be_created_does_not_stop_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ctl = make(blocker / "jobs").start()
    try:
        assert ctl.control_error and "could not start" in ctl.control_error
        for s in range(1, 50):
            assert ctl.step(s) is NO_ACTIONS
    finally:
        ctl.close()


def test_handler_and_poller_crashes_do_not_stop_training(jobs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = make(jobs_dir).start()
    try:

        def boom(*a, **k):
            raise RuntimeError("ledger exploded")

        monkeypatch.setattr(ctl.ledger, "submit", boom)
        with client_for(jobs_dir) as c:
            with pytest.raises(CommandRefused) as exc:
                c.send("save")
            assert exc.value.http_status == 500
        assert ctl.step(1) is NO_ACTIONS
        # the inbox poller raising: logged and counted, the loop goes on
        publisher = ctl.plane.publisher
        assert publisher is not None
        monkeypatch.setattr(publisher, "poll_inbox", boom)
        errors = publisher.errors
        wait_for(lambda: publisher.errors > errors, what="poller error counted")
        for s in range(2, 100):
            assert ctl.step(s) is NO_ACTIONS
        assert publisher.alive
    finally:
        ctl.close()


def test_bad_input_keeps_loop_going(jobs_dir: Path) -> None:
    import http.client

    ctl = make(jobs_dir).start()
    try:
        ep = read_json(ctl.paths.endpoint)
        conn = http.client.HTTPConnection("127.0.0.1", ep["port"], timeout=10)
        auth = {"Authorization": f"Bearer {ep['token']}", "Content-Type": "application/json"}
        for body, path in [
            (b"{bad", "/jobs/job-1/control"),
            (b'{"command":"x"}', "/jobs/job-1/control"),
            (b'{"command":"abort"}', "/jobs/..%2Fx/control"),
            (b"x" * 10000, "/jobs/job-1/control"),
        ]:
            conn.request("POST", path, body=body, headers=auth)
            r = conn.getresponse()
            r.read()
            assert 400 <= r.status < 500
            conn.close()
        for s in range(1, 200):
            assert ctl.step(s) is NO_ACTIONS
        assert ctl.ledger.pending_count() == 0
    finally:
        ctl.close()


def test_non_loopback_without_auth_is_refused(jobs_dir: Path) -> None:
    with pytest.raises(ValueError, match="without a token"):
        make(jobs_dir, host="0.0.0.0", auth=False).start()
