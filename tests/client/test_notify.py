"""Sending alerts (client.notify) to a real webhook on loopback through apprise's ``json://``,
and to a real command; what a listing owes when it finds a job dead; and that a listing
that owes nothing never loads apprise. (Alerts of real launched jobs:
tests/launcher/test_launch_alerts.py.)"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.ports import free_port
from support.processes import dead_pid
from support.records import identity
from support.ui import write_job
from support.webhook import Webhook

from forgather_control.client import notify, scan
from forgather_control.client.notify import Notifier, Sender
from forgather_control.core.alerts import claim, end_alert, write_sinks
from forgather_control.core.files import write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import AlertClaim, AlertSinks, decode, encode

NOW = time.time()


def _alert(key_run: int = 0, job: str = "j1", event: str = "failed"):
    told = {"job_id": job, "run": key_run, "state": event, "step": 41, "host": "node-a", "command": f"forgather control status {job}"}
    return end_alert(event=event, reason="rank 1: \x1b[31mboom", now=NOW, **told)


def test_a_webhook_gets_the_alert_record_and_nothing_else() -> None:
    with Webhook() as hook:
        sender = Sender(AlertSinks(urls=[hook.url("team/alerts")]))
        assert sender.send(_alert()) == (True, None)
        [post] = hook.posts
        [got] = hook.alerts()
    assert hook.paths == ["/team/alerts"]
    assert post["title"] == "forgather: job j1 failed at step 41"
    assert (got["job_id"], got["event"], got["state"], got["step"], got["host"], got["key"]) == ("j1", "failed", "failed", 41, "node-a", "r0-end")
    assert got["reason"] == "rank 1: \x1b[31mboom"  # exact in the record (a program reads it); a person's text is printable
    assert got["command"] == "forgather control status j1"
    assert "token" not in json.dumps(post).lower()


def test_a_command_gets_the_alert_as_json_on_stdin_and_no_shell(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    script = tmp_path / "sink.py"
    script.write_text(
        "import pathlib, sys\n"
        "pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())\n"
        "pathlib.Path(sys.argv[1] + '.args').write_text(repr(sys.argv[2:]))\n"
    )
    argv = [sys.executable, str(script), str(out), "$(touch pwned)", ";", "x"]
    sender = Sender(AlertSinks(cmds=[argv]), env={"FORGATHER_NOTIFY": "secret://x", "PATH": "/usr/bin"})
    assert sender.send(_alert()) == (True, None)
    got = json.loads(out.read_text())
    assert (got["job_id"], got["event"], got["key"]) == ("j1", "failed", "r0-end")
    assert (tmp_path / "got.json.args").read_text() == "['$(touch pwned)', ';', 'x']"  # words, not a shell's
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert "FORGATHER_NOTIFY" not in sender.env  # the sinks are not the command's to read


def test_a_failing_sink_is_retried_with_backoff_and_logged_once_by_its_scheme(caplog: pytest.LogCaptureFixture) -> None:
    closed = f"json://127.0.0.1:{free_port()}/hooks/SECRET-PATH"
    waits: list[float] = []
    with Webhook() as hook:
        sender = Sender(AlertSinks(urls=[closed, hook.url()]), sleep=waits.append)
        with caplog.at_level(logging.DEBUG):
            took, why = sender.send(_alert(0))
            sender.send(_alert(1))
        assert len(hook.alerts()) == 2  # the good sink took each once, and was not tried again
    assert took and "json:// (sink 1 of 2)" in (why or "")
    assert waits == [0.5, 1.0, 2.0] * 2  # four tries of the closed one, twice as long apart each time
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "json:// (sink 1 of 2) did not take it after 4 tries" in said[0], said
    assert not any("SECRET" in r.getMessage() or str(closed.split(":")[2].split("/")[0]) in r.getMessage() for r in caplog.records)


def test_a_sink_that_never_answers_costs_its_budget_not_more(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text("import sys\nsys.stdin.read()\nimport threading\nthreading.Event().wait()\n")
    sender = Sender(AlertSinks(cmds=[[sys.executable, str(script)]]), budget=1.5, first_wait=0.1)
    t0 = time.monotonic()
    took, _ = sender.send(_alert())
    assert not took and time.monotonic() - t0 < 5


def test_the_notifier_queues_and_never_blocks_its_caller(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j1").create()
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\nsys.stdin.read()\ntime.sleep(1)\n")  # a slow sink (not a synchronisation)
    notifier = Notifier(paths, Sender(AlertSinks(cmds=[[sys.executable, str(script)]])))
    t0 = time.monotonic()
    assert notifier.submit(_alert(0)) and notifier.submit(_alert(1))
    assert not notifier.submit(_alert(0))  # claimed already: once
    assert time.monotonic() - t0 < 0.5
    assert notifier.close(timeout=30)
    for run in (0, 1):
        record = decode(json.loads((paths.alerts / f"r{run}-end").read_text()), AlertClaim, name="claim")
        assert record.sent_at is not None and record.failed_at is None


def test_a_listing_alerts_a_dead_job_once_and_never_one_the_launcher_claimed(jobs_dir: Path, cli) -> None:
    with Webhook() as hook:
        sinks = AlertSinks(urls=[hook.url()])
        dead = write_job(jobs_dir, "gone", state="running", step=17, restarts=2)  # its processes ended without a word
        write_sinks(dead, sinks)
        told = write_job(jobs_dir, "told", state="running", step=3)
        write_sinks(told, sinks)
        assert claim(told, _alert(0, "told"), now=time.time())  # its launcher (this process, alive) has the end
        for _ in range(2):
            rows = {r["job_id"]: r for r in cli("control", "list", "--json").json()}
            assert rows["gone"]["state"] == "dead" and rows["told"]["state"] == "dead"
        [got] = hook.wait(1)
        assert (got["job_id"], got["event"], got["state"], got["key"], got["step"], got["run"]) == ("gone", "dead", "dead", "r2-end", 17, 2)
        assert got["reason"] and got["command"].startswith("forgather control status gone --jobs-dir ")
        assert len(hook.alerts()) == 1

        # the launcher died before it said 'sent': the next listing sends its alert, once
        record = AlertClaim(**{**identity(), "pid": dead_pid(), "key": "r0-end", "claimed_at": time.time(), "alert": _alert(0, "told")})
        write_json_atomic(told.alerts / "r0-end", encode(record))
        cli("control", "list", "--json")
        cli("control", "list", "--json")
        alerts = hook.wait(2)
        assert [(a["job_id"], a["event"]) for a in alerts] == [("gone", "dead"), ("told", "failed")]
        assert len(hook.alerts()) == 2


def test_a_listing_that_owes_nothing_never_loads_apprise(jobs_dir: Path) -> None:
    write_job(jobs_dir, "gone", state="running", step=17)  # dead, but without sinks
    probe = f"from forgather_control.client import list_jobs\nlist_jobs(jobs_dir={str(jobs_dir)!r})\nimport sys\nprint('apprise' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "False"
    assert notify.owed  # (the module is there; it is simply not needed)


def test_a_sinks_file_that_is_a_link_is_refused_and_nothing_sent(jobs_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = write_job(jobs_dir, "gone", state="running", step=17)
    elsewhere = tmp_path / "sinks.json"
    elsewhere.write_text(json.dumps({"urls": [f"json://127.0.0.1:{free_port()}/x"]}))
    dead.notify.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING):
        scan(jobs_dir)
    assert not dead.alerts.exists()
