"""Alerts of real launched jobs (issue 21): a real ``forgather launch`` of the plain loop,
a real webhook on loopback reached through apprise's ``json://``, a real notify command.
One message per event; a failing sink costs the job nothing; a notify URL is a secret
(0600 notify.json, in no argv, log, job.json or plan). A dead job (its launcher gone too)
alerted by a listing: tests/client/test_notify.py."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path

import psutil
import pytest
from support.launcher import launch, wait_running
from support.paths import EXAMPLES
from support.ports import free_port
from support.processes import Procs
from support.records import read_record as read
from support.scripts import GUARDED_LOOP
from support.waiting import wait_for
from support.webhook import Webhook

from forgather_control.core.outcome import EXIT_ABORTED, EXIT_STOPPED

PLAIN = EXAMPLES / "plain_loop.py"
TIMEOUT = 240.0
FIELDS = ("job_id", "event", "state", "host", "step", "reason", "command", "key", "run")


def _argvs(pids: list[int]) -> dict[int, str]:
    out = {}
    for pid in pids:
        try:
            out[pid] = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            pass
    return out


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stopped_job_sends_one_message_and_its_url_is_kept_secret(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    with Webhook() as hook:
        url = hook.url("T0/B0/s3cr3t-hook")
        job = launch(procs, jobs_dir, "told", PLAIN, "--step-time", "0.02", "--output-dir", str(tmp_path / "out"), opts=("--notify", url))
        wait_running(jobs_dir, "told", job)

        # the secret: 0600 in the job's folder; in the argv of no process below the launcher (whose own has a
        # literal --notify, warned of: the documented --notify-file keeps it out of every argv, test_notify_secret.py)
        notify = jobs_dir / "told" / "notify.json"
        assert stat.S_IMODE(os.lstat(notify).st_mode) == 0o600 and json.loads(notify.read_text())["urls"] == [url]
        below = [p.pid for p in job.tree.track() if p.pid != job.pid]  # torchrun and the worker
        assert len(below) >= 2 and not [a for a in _argvs(below).values() if url in a]
        assert not [pid for pid in below if url.encode() in _environ(pid)]

        res = cli("control", "stop", "told", "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT)
        assert res.code == 0, res.out + res.err
        assert job.wait(TIMEOUT) == EXIT_STOPPED, job.output()[-3000:]
        [alert] = hook.wait(1)  # the launcher sent it before it exited
        assert len(hook.posts) == 1, hook.posts
    assert set(FIELDS) <= set(alert), alert
    assert (alert["job_id"], alert["event"], alert["state"], alert["key"], alert["run"]) == ("told", "stopped", "stopped", "r0-end", 0)
    assert alert["host"] == read(jobs_dir, "told", "job.json")["host"] and alert["step"] >= 3
    assert alert["reason"] and alert["command"] == f"forgather control status told --jobs-dir {jobs_dir}"
    assert hook.posts[0]["title"].startswith("forgather: job told stopped at step ")
    claim = json.loads((jobs_dir / "told" / "alerts" / "r0-end").read_text())
    assert claim["sent_at"] and stat.S_IMODE(os.lstat(jobs_dir / "told" / "alerts" / "r0-end").st_mode) == 0o600
    # nowhere else: job.json (its argv too), the launcher's log, the dry run
    record = (jobs_dir / "told" / "job.json").read_text()
    assert url not in record and "<hidden>" in json.loads(record)["argv"]
    assert url not in job.output() and "s3cr3t" not in job.output()
    plan = cli("launch", "--dry-run", "--notify", url, "--notify", "ntfy://topic", str(PLAIN))
    assert plan.code == 0 and "notify:         2 sinks (json://, ntfy://)" in plan.out, plan.out
    assert url not in plan.out + plan.err and "topic" not in plan.out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rank_0_killed_sends_one_failed_message(jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    with Webhook() as hook:
        job = launch(procs, jobs_dir, "shot", PLAIN, "--step-time", "0.02", "--output-dir", str(tmp_path / "out"), opts=("--notify", hook.url()))
        wait_running(jobs_dir, "shot", job)
        rank0 = read(jobs_dir, "shot", "endpoint.json")["pid"]
        os.kill(rank0, signal.SIGKILL)
        code = job.wait(TIMEOUT)
        assert code not in (0, 75, 76, 77), job.output()[-3000:]
        [alert] = hook.wait(1)
        assert len(hook.alerts()) == 1
    assert (alert["job_id"], alert["event"], alert["state"], alert["key"]) == ("shot", "failed", "failed", "r0-end")
    assert alert["reason"] and alert["reason"] == read(jobs_dir, "shot", "job.json")["reason"], alert  # the root cause the launcher recorded
    assert alert["step"] is not None and alert["step"] >= 3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_notify_command_gets_the_message_as_json_on_stdin(jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    got = tmp_path / "alerts.jsonl"
    sink = tmp_path / "sink.py"
    sink.write_text("import sys\nwith open(sys.argv[1], 'ab') as f:\n    f.write(sys.stdin.buffer.read() + b'\\n')\n")
    with Webhook() as hook:
        url = hook.url("from-env")
        job = launch(
            procs,
            jobs_dir,
            "piped",
            PLAIN,
            "--step-time",
            "0.01",
            "--max-steps",
            "40",
            "--output-dir",
            str(tmp_path / "out"),
            opts=("--notify-cmd", f"{sys.executable} {sink} {got}"),
            FORGATHER_NOTIFY=url,  # the way to keep a URL out of every argv, the launcher's too
        )
        seen = wait_for(lambda: [p.pid for p in job.tree.track()] if job.popen.poll() is None and len(job.tree.track()) >= 3 else None, timeout=TIMEOUT)
        assert not [a for a in _argvs(seen).values() if url in a]
        assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
        [by_hook] = hook.wait(1)
    [line] = got.read_text().splitlines()
    alert = json.loads(line)
    assert alert == by_hook  # one record, two sinks
    assert (alert["job_id"], alert["event"], alert["state"], alert["step"], alert["key"]) == ("piped", "finished", "finished", 40, "r0-end")
    assert url not in (jobs_dir / "piped" / "job.json").read_text() and url not in job.output()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_failing_sink_is_retried_logged_once_and_the_job_finishes(jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    job = launch(
        procs,
        jobs_dir,
        "unheard",
        PLAIN,
        "--step-time",
        "0.01",
        "--max-steps",
        "30",
        "--output-dir",
        str(tmp_path / "out"),
        opts=("--notify", f"json://127.0.0.1:{port}/hooks/s3cr3t"),
    )
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
    out = job.output()
    said = [line for line in out.splitlines() if "did not take it" in line]
    assert len(said) == 1 and "json:// (sink 1 of 1) did not take it after 4 tries" in said[0], out[-3000:]
    assert "s3cr3t" not in out and str(port) not in out
    assert read(jobs_dir, "unheard", "job.json")["state"] == "finished"
    claim = read(jobs_dir, "unheard", "alerts/r0-end")
    assert claim["failed_at"] and "after 4 tries" in claim["failure"] and not claim.get("sent_at")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_guard_that_fires_is_one_message_and_the_end_it_caused_another(jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED_LOOP)
    with Webhook() as hook:
        job = launch(
            procs,
            jobs_dir,
            "nan",
            script,
            "--nan-at",
            "20",
            "--nan-rank",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
            opts=("--nproc-per-node", "2", "--guard", "nan:abort", "--notify", hook.url()),
        )
        assert job.wait(TIMEOUT) == EXIT_ABORTED, job.output()[-3000:]
        guard, end = hook.wait(2)
        assert len(hook.alerts()) == 2, hook.alerts()
    assert (guard["event"], guard["guard"], guard["rank"]) == ("guard", "nan:abort,metric=loss", 1), guard
    assert guard["key"].startswith("r0-guard-") and guard["step"] >= 20 and "rank 1" in guard["reason"], guard
    assert (end["event"], end["state"], end["key"]) == ("aborted", "aborted", "r0-end")


def test_the_python_api_takes_notify_and_never_shows_it(tmp_path: Path) -> None:
    from forgather_control.launcher import LaunchConfig, LaunchError, make_plan, render_plan

    url = "slack://T000/B000/s3cr3t"
    config = LaunchConfig(script=str(PLAIN), notify=[url], notify_cmd=[["notify-me", "--key", "k3y"]])
    plan = make_plan(config, {"FORGATHER_NOTIFY": "ntfy://topic-s3cr3t"}, python=sys.executable, jobs_dir=str(tmp_path))
    assert plan.sinks is not None and plan.sinks.urls == [url, "ntfy://topic-s3cr3t"] and plan.sinks.cmds == [["notify-me", "--key", "k3y"]]
    for shown in (repr(config), repr(plan), render_plan(plan), json.dumps(plan.describe())):
        assert "s3cr3t" not in shown and "k3y" not in shown, shown
    assert "3 sinks (slack://, ntfy://, command notify-me)" in render_plan(plan)
    assert "FORGATHER_NOTIFY" not in plan.env
    with pytest.raises(LaunchError, match="a list of URLs"):
        LaunchConfig(script=str(PLAIN), notify=url)  # type: ignore[arg-type]


def test_a_sink_apprise_cannot_send_to_is_refused_at_launch_by_its_scheme(cli) -> None:
    res = cli("launch", "--dry-run", "--notify", "nosuchservice://user:s3cr3t@host/x", str(PLAIN))
    assert res.code == 2 and "nosuchservice://" in res.err and "s3cr3t" not in res.out + res.err, res.err
    res = cli("launch", "--dry-run", "--notify-cmd", "notify 'unclosed", str(PLAIN))
    assert res.code == 2 and "--notify-cmd 1 is not a command line" in res.err, res.err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stall_is_alerted_within_the_threshold_and_5_s_and_its_guard_aborts_the_hung_job(jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    """Rank 1 hangs at step 8 (examples/launch/hang_train.py), rank 0 waits for it in the
    gradient all-reduce: one ``stalled`` message within the stall threshold (3 s) plus 5 s
    of the step's last move, the stall guard's own message, and its abort carried out by
    the launcher (the ranks cannot agree on it): one ``aborted`` end."""
    hang = EXAMPLES.parent / "launch" / "hang_train.py"
    with Webhook() as hook:
        job = launch(
            procs,
            jobs_dir,
            "hung",
            hang,
            "--hang-at",
            "8",
            opts=("--nproc-per-node", "2", "--stall-after", "3", "--guard", "stall:abort", "--notify", hook.url()),
        )
        assert job.wait(TIMEOUT) == EXIT_ABORTED, job.output()[-3000:]
        alerts = {a["event"]: a for a in hook.wait(3) and hook.alerts()}
        assert sorted(a["event"] for a in hook.alerts()) == ["aborted", "guard", "stalled"], hook.alerts()
    status = read(jobs_dir, "hung", "status.json")
    stalled = alerts["stalled"]
    assert stalled["step"] == 7 and stalled["at"] - status["progress_at"] <= 3 + 5, (stalled, status["progress_at"])
    assert alerts["guard"]["guard"] == "stall:abort" and "no step for" in alerts["guard"]["reason"]
    [receipt] = [c for c in status["commands"] if c.get("source") == "guard"]
    assert receipt["command"] == "abort" and receipt["state"] == "completed" and receipt["guard"]["kind"] == "stall", receipt


def test_a_literal_notify_url_is_warned_of_and_a_private_notify_file_is_the_quiet_way(cli, tmp_path: Path) -> None:
    url = "json://127.0.0.1:9/hook/s3cr3t"
    res = cli("launch", "--dry-run", "--notify", url, str(PLAIN))
    assert res.code == 0 and "notify:         1 sink (json://)" in res.out, res.out + res.err
    assert "warning: --notify puts its URL on this launcher's command line" in res.err and "--notify-file FILE" in res.err, res.err
    assert "s3cr3t" not in res.out + res.err

    sinks = tmp_path / "sinks"
    sinks.write_text(f"# alerts\n{url}\n| page-me --key k3y\n")
    sinks.chmod(0o600)
    res = cli("launch", "--dry-run", "--notify-file", str(sinks), str(PLAIN))
    assert res.code == 0 and "notify:         2 sinks (json://, command page-me)" in res.out, res.out + res.err
    assert "warning" not in res.err and "s3cr3t" not in res.out + res.err and "k3y" not in res.out + res.err

    sinks.chmod(0o644)
    res = cli("launch", "--dry-run", "--notify-file", str(sinks), str(PLAIN))
    assert res.code == 2 and f"chmod 600 {sinks}" in res.err and "s3cr3t" not in res.out + res.err, res.err
