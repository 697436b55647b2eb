"""Issue 2, acceptance 1 and 2, as a user does it: the plain-loop example runs as a real
process, and the real ``forgather`` executable finds, watches and commands it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.plain_job import WAIT, check_checkpoint, check_ended, command, record_step, start_loop, status_step, wait_running
from support.waiting import wait_for

from forgather_control.core import JobPaths, read_json


# The quick tier keeps one run of each channel (HTTP here, the file channel in acceptance 2);
# the aborts (saving nothing is also tests/callback's, in process) and the crossings (file
# channel on an HTTP job, --remote and --watch) run in the full suite.
@pytest.mark.parametrize("channel", ["auto", pytest.param("file", marks=pytest.mark.slow)], ids=["http", "file-channel-on-http-job"])
def test_acceptance_1_list_status_save_eval_stop(cli, procs, jobs_dir: Path, tmp_path: Path, channel: str) -> None:
    """Acceptance 1 (and 2, ``--channel file`` against an HTTP job)."""
    job = "accept1-" + channel
    out = tmp_path / "out"
    proc = start_loop(procs, jobs_dir, out, job)
    row = wait_running(cli, jobs_dir, proc, job)
    assert row["url"].startswith("http://127.0.0.1:") and row["port"] and row["pid"] == proc.pid
    assert {"job_id", "state", "host", "port", "pid", "step", "updated_at"} <= set(row)

    first = status_step(cli, "accept1")  # a unique prefix
    wait_for(lambda: status_step(cli, job) > first, timeout=60, interval=0.2, what="the step to move")

    extra = ("--channel", channel)
    saved = command(cli, "save", job, *extra)
    check_checkpoint(saved)
    evaluated = command(cli, "eval", job, *extra)
    assert evaluated["state"] == "completed" and evaluated["command"] == "evaluate"
    assert "eval_loss" in evaluated["result"]["metrics"]
    assert evaluated["step"] >= saved["step"]

    status = cli("control", "status", job, "--json").json()
    assert status["last_checkpoint"] == saved["result"]["checkpoint"]
    assert [c["id"] for c in status["commands"]][-2:] == [saved["id"], evaluated["id"]]

    stopped = command(cli, "stop", job, *extra)
    assert stopped["command"] == "graceful_stop" and stopped["state"] == "completed"
    check_ended(cli, jobs_dir, proc, job, "stopped")


@pytest.mark.slow
def test_acceptance_1_abort_saves_nothing(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out-abort"
    proc = start_loop(procs, jobs_dir, out, "abort-run")
    wait_running(cli, jobs_dir, proc, "abort-run")
    entry = command(cli, "abort", "abort-run", "--yes")
    assert entry["command"] == "abort" and entry["state"] == "completed"
    check_ended(cli, jobs_dir, proc, "abort-run", "aborted")
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    st = read_json(JobPaths(jobs_dir, "abort-run").status)
    assert st["state"] == "aborted" and st.get("last_checkpoint") is None  # unset: not written


def test_acceptance_2_file_channel_only(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    """enable_http=False: list, status, save, eval, stop all through inbox/ and status.json."""
    job = "files-only"
    out = tmp_path / "out"
    proc = start_loop(procs, jobs_dir, out, job, "--no-http")
    row = wait_running(cli, jobs_dir, proc, job)
    assert row["url"] is None and row["port"] is None
    first = status_step(cli, job)
    wait_for(lambda: record_step(jobs_dir, job) > first, timeout=60, what="the step to move in status.json")
    assert status_step(cli, job) > first
    r = cli("control", "save", job, "--channel", "http")
    assert r.code == 4 and "--channel file" in r.err

    saved = command(cli, "save", job)
    check_checkpoint(saved)
    assert saved["source"] == "file"
    evaluated = command(cli, "eval", job)
    assert evaluated["state"] == "completed" and "eval_loss" in evaluated["result"]["metrics"]
    # without --wait: the queued (sent) entry, exit 0, then it completes on its own
    r = cli("control", "save", job, "--json", "--key", "k-1")
    assert r.code == 0 and r.json()["id"]
    cid = r.json()["id"]
    wait_for(
        lambda: any(c.get("id") == cid and c.get("state") == "completed" for c in (read_json(JobPaths(jobs_dir, job).status) or {}).get("commands", [])),
        timeout=60,
        interval=0.2,
        what="the un-waited save to complete",
    )
    stopped = command(cli, "stop", job)
    assert stopped["state"] == "completed"
    check_ended(cli, jobs_dir, proc, job, "stopped")


@pytest.mark.slow
def test_abort_file_channel_only(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_loop(procs, jobs_dir, out, "files-abort", "--no-http")
    wait_running(cli, jobs_dir, proc, "files-abort")
    entry = command(cli, "abort", "files-abort", "--yes")
    assert entry["state"] == "completed"
    check_ended(cli, jobs_dir, proc, "files-abort", "aborted")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_watch_remote_and_idempotency(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    """``status --watch`` follows a job to its end; ``--remote`` drives it by URL with
    the token from FORGATHER_TOKEN (never printed); the same --key queues once."""
    job = "watched"
    proc = start_loop(procs, jobs_dir, tmp_path / "out", job, "--max-steps", "100000")
    row = wait_running(cli, jobs_dir, proc, job)
    token = read_json(JobPaths(jobs_dir, job).endpoint)["token"]
    remote = f"127.0.0.1:{row['port']}"
    env = {"FORGATHER_TOKEN": token}

    r = cli("control", "list", "--remote", remote, "--json", extra_env=env)
    assert r.code == 0, r
    assert [j["job_id"] for j in r.json()] == [job] and r.json()[0]["pid"] == proc.pid
    r = cli("control", "list", "--remote", remote, "--token", "wrong")
    assert r.code == 1 and "token" in r.err
    r = cli("control", "status", "wat", "--remote", remote, "--json", extra_env=env)
    assert r.code == 0 and r.json()["live"] is True and r.json()["step"] > 0

    a = cli("control", "save", job, "--remote", remote, "--key", "same", "--json", extra_env=env).json()
    b = cli("control", "save", job, "--remote", remote, "--key", "same", "--json", extra_env=env).json()
    assert a["id"] == b["id"]
    r = cli("control", "save", job, "--remote", remote, "--wait", "--json", "--timeout", WAIT, extra_env=env)
    assert r.code == 0, r
    check_checkpoint(r.json())

    stopper = cli("control", "stop", job, "--json", extra_env=env)  # queued; the watch sees the end
    assert stopper.code == 0
    w = cli("control", "status", job, "--watch", "--interval", "0.2", timeout=180)
    assert w.code == 0, w
    assert "stopped" in w.out
    proc.wait(120)
    for text in (r.out, r.err, w.out, w.err, a.__repr__()):
        assert token not in text
