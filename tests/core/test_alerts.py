"""Alerts without a process (core.alerts): which transitions of status.json are events, each
once; the claim that lets one sender of several send an event; the sinks file; and the
message, which holds no token and no raw control character."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from support.processes import dead_pid
from support.records import identity

from forgather_control.core import alerts
from forgather_control.core.alerts import (
    CLAIM_STALE_AFTER,
    claim,
    end_alert,
    events,
    hide_notify,
    message,
    read_sinks,
    read_sinks_file,
    release,
    sinks_from,
    taken_over,
    write_sinks,
)
from forgather_control.core.files import write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import Alert, AlertClaim, AlertSinks, GuardFiring, RecordError, Stall, Status, decode, encode

NOW = 1_900_000_000.0


def status(**fields) -> Status:
    base = {"job_id": "j1", "state": "running", "step": 10, "restarts": 0, "host": "node-a"}
    base.update(fields)
    return decode(base, Status, name="status")


def firing(fid: str, kind: str = "nan", **fields) -> GuardFiring:
    fields = {"step": 12, "rank": 1, "evidence": f"{kind} seen", **fields}
    return GuardFiring(id=fid, guard=f"{kind}:abort", kind=kind, action="abort", **fields)


def derive(previous: Status | None, current: Status, **kw) -> list[Alert]:
    return events(previous, current, job_id="j1", run=0, command="forgather control status j1", now=NOW, **kw)


# -- events ------------------------------------------------------------------------------
def test_a_stall_is_an_event_once_and_again_only_at_another_step() -> None:
    running = status()
    stalled = status(stall=Stall(for_=400.0, after=300.0, step=10, phase="train"))
    [alert] = derive(running, stalled)
    assert (alert.event, alert.key, alert.step, alert.host) == ("stalled", "r0-stalled-10", 10, "node-a")
    assert "400" in (alert.reason or "") and alert.command == "forgather control status j1"
    assert derive(stalled, stalled) == []  # the same stall, read again
    assert derive(stalled, running) == []  # it moved on: no event
    again = status(step=50, stall=Stall(for_=301.0, after=300.0, step=50))
    assert [a.key for a in derive(running, again)] == ["r0-stalled-50"]


def test_each_guard_firing_is_an_event_once_and_a_straggler_is_named_as_such() -> None:
    one = status(guard_events=[firing("g1")])
    two = status(guard_events=[firing("g1"), firing("g2", "straggler", values={"rank": 3.0, "factor": 1.6})])
    [first] = derive(status(), one)
    assert (first.event, first.key, first.guard, first.step, first.reason) == ("guard", "r0-guard-g1", "nan:abort", 12, "nan seen")
    [second] = derive(one, two)
    assert (second.event, second.key) == ("straggler", "r0-straggler-g2")
    assert derive(two, two) == []
    # the status keeps only the recent firings: one that fell off the front is no new event
    assert [a.key for a in derive(two, status(guard_events=[firing("g2", "straggler"), firing("g3")]))] == ["r0-guard-g3"]
    # the first status the launcher reads: every firing in it is new
    assert [a.key for a in derive(None, two)] == ["r0-guard-g1", "r0-straggler-g2"]


@pytest.mark.parametrize("state", ["finished", "stopped", "aborted", "failed"])
def test_an_end_is_one_event_per_run_under_one_key(state: str) -> None:
    ended = status(state=state, stop_reason="asked" if state in ("stopped", "aborted") else None, error="boom" if state == "failed" else None)
    [alert] = derive(status(), ended)
    assert (alert.event, alert.state, alert.key) == (state, state, "r0-end")
    assert alert.reason == {"stopped": "asked", "aborted": "asked", "failed": "boom"}.get(state)
    assert derive(ended, ended) == []
    assert derive(status(), ended, ends=False) == []  # the launcher says the end itself, from the outcome


def test_a_status_of_another_run_says_nothing_of_this_one() -> None:
    old = status(restarts=1, state="failed", guard_events=[firing("g1")])
    assert events(None, old, job_id="j1", run=2, command="c", now=NOW) == []


def test_the_end_a_reader_judges_shares_the_launchers_key() -> None:
    dead = end_alert(event="dead", job_id="j1", run=3, state="dead", step=7, reason="launcher pid gone", host="h", command="c", now=NOW)
    failed = end_alert(event="failed", job_id="j1", run=3, state="failed", step=7, reason="rank 1", host="h", command="c", now=NOW)
    assert dead.key == failed.key == "r3-end"  # one end per run, whoever tells it
    assert end_alert(event="dead", job_id="j1", run=4, state="dead", step=None, reason=None, host=None, command="c", now=NOW).key == "r4-end"


# -- the message ---------------------------------------------------------------------------
def test_the_message_holds_no_token_and_no_raw_control_character() -> None:
    token = "s3cr3t-token-0123456789abcdef"
    nasty = "\x1b]0;owned\x07evil\u202eline\nforged: yes"
    st = status(host="h\x1b[2J", guard_events=[firing("g1", evidence=nasty)], stop_reason=f"token={token}")
    [alert] = derive(None, st)
    title, body = message(alert)
    for text in (title, body):
        assert not any(ord(c) < 0x20 and c != "\n" for c in text), repr(text)
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "\\x1b" in body and "forged: yes" not in body.splitlines()  # the forged line stays inside its own
    assert "forgather control status j1" in body
    # no field of any record carries the endpoint's token: it is not in the alert at all
    payload = json.dumps(encode(alert))
    assert "token" not in {k.lower() for k in encode(alert)}
    assert json.loads(payload)["job_id"] == "j1"


def test_the_alert_round_trips_as_a_record() -> None:
    [alert] = derive(None, status(guard_events=[firing("g1")]))
    assert decode(json.loads(alerts.alert_json(alert)), Alert, name="alert") == alert


# -- sinks -----------------------------------------------------------------------------------
def test_sinks_come_from_options_and_environment(tmp_path: Path) -> None:
    env = {"FORGATHER_NOTIFY": " json://127.0.0.1:1/a \n ntfy://topic ", "FORGATHER_NOTIFY_CMD": "python3 -c 'import sys' --flag"}
    sinks = sinks_from(("slack://T/B/C",), (("notify-me", "--x"),), env)
    assert sinks is not None
    assert sinks.urls == ["slack://T/B/C", "json://127.0.0.1:1/a", "ntfy://topic"]
    assert sinks.cmds == [["notify-me", "--x"], ["python3", "-c", "import sys", "--flag"]]
    assert sinks_from((), (), {}) is None


@pytest.mark.parametrize(
    ("urls", "cmds", "env", "said"),
    [
        (("not a url",), (), {}, "is not a notification URL"),
        ((), ((),), {}, "an empty command"),
        ((), (), {"FORGATHER_NOTIFY_CMD": "python3 'unclosed"}, "FORGATHER_NOTIFY_CMD"),
        (("json://x/" + "a" * 3000,), (), {}, "longer than"),
    ],
)
def test_a_bad_sink_is_refused_without_printing_it(urls, cmds, env, said) -> None:
    with pytest.raises(ValueError, match=None) as info:
        sinks_from(urls, cmds, env)
    assert said in str(info.value)
    for url in urls:
        assert url not in str(info.value)  # a URL is a secret, even a bad one


def test_notify_values_are_hidden_in_a_recorded_command_line() -> None:
    argv = ("forgather", "launch", "--notify", "slack://T/B/C", "--notify=json://h/x", "--notify-cmd", "me --key k", "train.py", "--notify", "x")
    assert hide_notify(argv) == (
        "forgather",
        "launch",
        "--notify",
        "<hidden>",
        "--notify=<hidden>",
        "--notify-cmd",
        "<hidden>",
        "train.py",
        "--notify",
        "<hidden>",  # a script's own --notify is hidden too: better one word too many than a secret
    )


def test_the_sinks_file_is_0600_owner_checked_and_never_read_through_a_link(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j1").create()
    sinks = AlertSinks(urls=["json://127.0.0.1:9/x"], cmds=[["true"]])
    write_sinks(paths, sinks)
    assert stat.S_IMODE(os.lstat(paths.notify).st_mode) == 0o600
    assert read_sinks(paths) == sinks
    os.replace(paths.notify, tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", paths.notify)
    with pytest.raises(RecordError, match="not a regular file"):
        read_sinks(paths)
    os.unlink(paths.notify)
    assert read_sinks(paths) is None


def _sinks_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "sinks"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_sinks_file_names_urls_and_commands_one_a_line(tmp_path: Path) -> None:
    text = "# team alerts\n\n  slack://T/B/s3cr3t  \nntfy://topic\n| python3 /home/me/page-me.py --team 'ml ops'\n#| not-this\n"
    urls, cmds = read_sinks_file(_sinks_file(tmp_path, text))
    assert urls == ["slack://T/B/s3cr3t", "ntfy://topic"]
    assert cmds == [["python3", "/home/me/page-me.py", "--team", "ml ops"]]
    assert read_sinks_file(_sinks_file(tmp_path, "json://h:1/x\n", 0o400)) == (["json://h:1/x"], [])  # read-only is private too


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("slack://T/B/s3cr3t\nhttps//s3cr3t-typo\n", "line 2: not a notification URL"),
        ("| python3 's3cr3t\n", "line 1: not a command line"),
        ("|   \n", "line 1: `|` names no command"),
        ("# nothing yet\n\n", "names no sink"),
        ("json://h/" + "s3cr3t" * 400 + "\n", "line 1: not a notification URL"),
    ],
)
def test_a_bad_line_of_a_sinks_file_is_refused_by_its_number_never_its_text(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ValueError) as info:
        read_sinks_file(_sinks_file(tmp_path, text))
    assert said in str(info.value) and "s3cr3t" not in str(info.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o660])
def test_a_sinks_file_others_may_read_or_change_is_refused_saying_chmod_600(tmp_path: Path, mode: int) -> None:
    path = _sinks_file(tmp_path, "slack://T/B/s3cr3t\n", mode)
    with pytest.raises(ValueError) as info:
        read_sinks_file(path)
    said = str(info.value)
    assert f"mode {mode:04o}" in said and f"chmod 600 {path}" in said and "s3cr3t" not in said


def test_a_sinks_file_of_another_user_a_folder_or_none_is_refused(tmp_path: Path) -> None:
    path = _sinks_file(tmp_path, "slack://T/B/s3cr3t\n")
    with pytest.raises(ValueError, match=r"cannot read the notify file .*No such file"):
        read_sinks_file(tmp_path / "missing")
    with pytest.raises(ValueError, match="is not a regular file"):
        read_sinks_file(tmp_path)
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, 54321, -1)
    with pytest.raises(ValueError, match=r"is not yours \(owner uid 54321\)"):
        read_sinks_file(path)


# -- the claim ----------------------------------------------------------------------------------
def _alert(key_run: int = 0) -> Alert:
    return end_alert(event="failed", job_id="j1", run=key_run, state="failed", step=3, reason="x", host="h", command="c", now=NOW)


def test_of_two_claimants_of_one_event_one_wins(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j1").create()
    alert = _alert()
    won: list[bool] = []
    barrier = threading.Barrier(8)

    def contend() -> None:
        barrier.wait()
        won.append(claim(paths, alert, now=time.time()))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]
    path = paths.alerts / alert.key
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert claim(paths, _alert(1), now=time.time())  # a relaunch's end is another event


def test_a_sent_claim_is_never_taken_over_and_a_stale_unsent_one_is(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j1").create()
    alert = _alert()
    now = time.time()
    assert claim(paths, alert, now=now)
    assert taken_over(paths, now=now) == []  # its claimant (this process) lives, and it is fresh
    release(paths, alert.key, sent=True, now=now)
    assert taken_over(paths, now=now + 10 * CLAIM_STALE_AFTER) == []  # sent: done
    record = decode(json.loads((paths.alerts / alert.key).read_text()), AlertClaim, name="claim")
    assert record.sent_at == now and record.alert == alert

    other = _alert(1)
    assert claim(paths, other, now=now)
    assert taken_over(paths, now=now + CLAIM_STALE_AFTER / 2) == []
    [mine] = taken_over(paths, now=now + CLAIM_STALE_AFTER + 1)  # its claimant never said 'sent'
    assert mine == other
    assert taken_over(paths, now=now + CLAIM_STALE_AFTER + 1) == []  # now it is the taker's, fresh


def test_a_claim_whose_claimant_is_gone_is_taken_over_at_once_and_a_failed_one_never(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j1").create()
    alert = _alert()
    gone = {**identity(), "pid": dead_pid()}
    record = AlertClaim(**{**gone, "key": alert.key, "claimed_at": NOW, "alert": alert})
    paths.alerts.mkdir(mode=0o700, exist_ok=True)
    write_json_atomic(paths.alerts / alert.key, encode(record))
    assert taken_over(paths, now=time.time()) == [alert]
    release(paths, alert.key, sent=False, why="every try failed", now=time.time())
    assert taken_over(paths, now=time.time() + 10 * CLAIM_STALE_AFTER) == []  # tried and failed: logged, not retried forever


def test_a_claim_of_another_user_or_a_link_is_never_taken(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "jobs", "j1").create()
    paths.alerts.mkdir(mode=0o700, exist_ok=True)
    target = tmp_path / "target"
    target.write_text("{}")
    os.symlink(target, paths.alerts / "r0-end")
    assert not claim(paths, _alert(), now=NOW)  # the name is taken (by a link): not ours to send, nor followed
    assert taken_over(paths, now=NOW + 10 * CLAIM_STALE_AFTER) == []
    assert target.read_text() == "{}"
