"""Jobs of the Forgather framework's own control callback, in our jobs directory: listed for
what they are and commanded through its HTTP API (issue 17, "One CLI for old and new jobs").

The quick tests run against a stand-in for the callback's endpoint format and API
(tests/support/framework_callback.py), served from this test process on loopback, so its
pid is alive on this host. The slow test at the end trains with the real framework's
``Trainer`` and its own callback (Python 3.12).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.cli import CliResult, run_cli_here
from support.framework import framework_env
from support.framework_callback import StandIn, job_id_for, write_endpoint
from support.paths import REPO
from support.ports import free_port
from support.waiting import wait_for

from forgather_control.client.lookup import list_jobs, open_job
from forgather_control.core import write_json_atomic
from forgather_control.core.errors import CommandRefused, UsageError
from forgather_control.core.records import MetricHistory, Receipt

NO_RECEIPT = "keeps no receipt and takes no idempotency key"
SUPPORT = REPO / "tests" / "support"


@pytest.fixture
def cli(cli: Callable[..., CliResult], request: pytest.FixtureRequest) -> Callable[..., CliResult]:
    """The command line in this process (support.cli.run_cli_here): the quick tests are
    about what it finds, prints, returns and sends the callback, some forty runs of it.
    The slow test of the real framework runs it as a user does, a subprocess."""
    if request.node.get_closest_marker("slow"):
        return cli

    def here(*args: str, timeout: float = 120.0, extra_env: dict[str, str] | None = None) -> CliResult:
        return run_cli_here(*args, env=extra_env)

    return here


@pytest.fixture
def standin(jobs_dir: Path) -> Iterator[StandIn]:
    job = StandIn(jobs_dir).start()
    yield job
    job.stop()


def rows(cli, *args: str) -> dict[str, dict[str, Any]]:
    r = cli("control", "list", "--json", *args)
    assert r.code == 0, r
    return {row["job_id"]: row for row in r.json()}


# -- listing ------------------------------------------------------------------------------
def test_a_live_job_of_the_callback_is_listed_running_with_its_step_and_loss(cli, standin: StandIn) -> None:
    row = rows(cli)[standin.job_id]
    assert row["framework_callback"] is True
    assert row["state"] == "running" and row["liveness"] == "alive"
    assert (row["step"], row["max_steps"], row["loss"]) == (42, 1000, 1.5)
    assert (row["pid"], row["port"], row["host"]) == (os.getpid(), standin.port, socket.gethostname())
    assert [(s.method, s.path) for s in standin.seen] == [("GET", f"/jobs/{standin.job_id}/status")]
    assert all("authorization" not in s.headers for s in standin.seen)


def test_the_table_marks_the_callbacks_jobs_and_says_what_the_mark_means(cli, standin: StandIn, jobs_dir: Path) -> None:
    ours = "ours-1"
    (jobs_dir / ours).mkdir()
    write_json_atomic(jobs_dir / ours / "status.json", {"job_id": ours, "state": "finished", "step": 3})
    r = cli("control", "list", "--all")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert any(line.startswith(f"{standin.job_id}*  running") for line in lines), r.out
    assert any(line.startswith(f"{ours}  ") or line.startswith(f"{ours} ") for line in lines), r.out
    assert "* the Forgather framework's own control callback" in r.out
    assert rows(cli, "--all")[ours]["framework_callback"] is False


def test_a_job_whose_pid_has_gone_is_dead_and_never_contacted(cli, jobs_dir: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(gone.stdout)
    job = job_id_for(pid)
    port = free_port()
    with socket.socket() as listener:  # something listens on the port: it must not be asked
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listener.settimeout(0)
        write_endpoint(jobs_dir, job, pid=pid, port=port, started_at=time.time() - 5)
        row = rows(cli)[job]
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert (row["state"], row["framework_callback"]) == ("dead", True)
    assert f"process {pid} no longer runs on this host" in row["evidence"]
    r = cli("control", "save", job)
    assert r.code == 5, r
    assert "is dead" in r.err


def test_a_recycled_pid_does_not_make_a_dead_job_look_alive(cli, standin: StandIn) -> None:
    """Our own live pid, but the endpoint was written before this process started: the
    process that wrote it is gone and its pid now belongs to us."""
    started = psutil.Process().create_time()
    standin.endpoint.write_text(
        json.dumps({"job_id": standin.job_id, "host": socket.gethostname(), "port": standin.port, "pid": os.getpid(), "started_at": started - 60})
    )
    row = rows(cli)[standin.job_id]
    assert row["state"] == "dead"
    assert "now belongs to a process started after the job's endpoint was written" in row["evidence"]
    assert standin.seen == []


def test_another_hosts_job_is_unknown_never_contacted_and_commands_say_where_to_run_them(cli, standin: StandIn) -> None:
    standin.endpoint.write_text(
        json.dumps({"job_id": standin.job_id, "host": "gpu-node-7", "port": standin.port, "pid": os.getpid(), "started_at": time.time()})
    )
    row = rows(cli)[standin.job_id]
    assert (row["state"], row["framework_callback"], row["step"]) == ("unknown", True, None)
    assert "on host gpu-node-7" in row["evidence"]
    r = cli("control", "stop", standin.job_id)
    assert r.code == 4, r
    assert "Run the command on gpu-node-7" in r.err
    assert standin.seen == []


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ({"port": "8900"}, "field 'port' must be an integer, not str"),
        ({"pid": None}, "has no 'pid'"),
        ({"port": 0}, "field 'port' is 0, outside 1..65535"),
        ({"job_id": "job_1_elsewhere_1"}, "names job 'job_1_elsewhere_1', not its folder's"),
        ({"host": ["vm"]}, "field 'host' must be a string, not list"),
        ({"started_at": "yesterday"}, "field 'started_at' must be a number, not str"),
    ],
    ids=["port-a-string", "no-pid", "port-zero", "another-jobs-id", "host-a-list", "started-at-a-string"],
)
def test_a_hostile_endpoint_makes_its_job_corrupt_and_nothing_is_contacted(cli, standin: StandIn, endpoint: dict[str, Any], why: str) -> None:
    write_endpoint(standin.jobs_dir, standin.job_id, **{"port": standin.port, **endpoint})  # a None field is left out
    row = rows(cli)[standin.job_id]
    assert row["state"] == "corrupt"
    assert why in row["evidence"]
    r = cli("control", "save", standin.job_id)
    assert r.code == 4, r
    assert "corrupt" in r.err
    assert standin.seen == []


def test_an_endpoint_that_is_a_link_or_huge_is_refused_unread(cli, standin: StandIn, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(standin.endpoint.read_text())
    standin.endpoint.unlink()
    standin.endpoint.symlink_to(elsewhere)
    row = rows(cli)[standin.job_id]
    assert row["state"] == "corrupt" and "symlinks and folders are never followed" in row["evidence"]
    standin.endpoint.unlink()
    standin.endpoint.write_text(json.dumps({**json.loads(elsewhere.read_text()), "pad": "x" * (2 << 20)}))
    row = rows(cli)[standin.job_id]
    assert row["state"] == "corrupt" and "larger than a record can be" in row["evidence"]
    assert standin.seen == []


def test_a_folder_with_a_record_of_ours_is_ours_even_with_the_callbacks_endpoint(cli, standin: StandIn) -> None:
    write_json_atomic(standin.endpoint.parent / "status.json", {"job_id": standin.job_id, "state": "running", "step": 7})
    row = rows(cli)[standin.job_id]
    assert row["framework_callback"] is False
    assert row["step"] == 7
    assert standin.seen == []


# -- a status answer that lies ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"job_id": "job_9_vm_9", "status": "running", "global_step": 5}, "answers for job 'job_9_vm_9', not for job"),
        (b"<html>hello</html>", "is not JSON"),
        (b'{"job_id": "' + b"x" * (70 * 1024) + b'"}', "is larger than 65536 bytes"),
        ({"status": "running", "global_step": -3}, "answers for no job id"),
        (["not", "an", "object"], "is not a JSON object"),
    ],
    ids=["another-job", "not-json", "huge", "no-job-id", "a-list"],
)
def test_a_status_answer_that_lies_shows_no_step_says_why_and_gets_no_command(cli, standin: StandIn, answer: Any, why: str) -> None:
    standin.status = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    row = rows(cli)[standin.job_id]
    assert (row["state"], row["step"], row["loss"]) == ("running", None, None)
    assert why in row["evidence"], row["evidence"]
    r = cli("control", "save", standin.job_id)
    assert r.code == 4, r
    assert why in r.err
    assert standin.commands() == []


def test_a_status_answer_without_a_step_is_not_the_callbacks(cli, standin: StandIn) -> None:
    standin.status = json.dumps({"job_id": standin.job_id, "status": "running", "global_step": "many"}).encode()
    row = rows(cli)[standin.job_id]
    assert row["step"] is None and "has no global_step" in row["evidence"]


def test_a_server_that_never_answers_does_not_hold_the_listing(cli, standin: StandIn) -> None:
    standin.hang = threading.Event()
    t0 = time.monotonic()
    row = rows(cli)[standin.job_id]
    assert time.monotonic() - t0 < 20  # the listing's own ask gives up after 0.5 s
    assert row["state"] == "running" and row["step"] is None
    assert "did not answer" in row["evidence"]


def test_a_process_that_does_not_listen_on_the_port_is_not_asked(cli, jobs_dir: Path) -> None:
    job = job_id_for()
    write_endpoint(jobs_dir, job, port=free_port())
    row = rows(cli)[job]
    assert (row["state"], row["step"]) == ("running", None)
    assert "does not listen on port" in row["evidence"]
    r = cli("control", "stop", job)
    assert r.code == 4 and "its control server has stopped" in r.err, r


# -- status ---------------------------------------------------------------------------------
def test_status_shows_its_state_and_what_its_api_says(cli, standin: StandIn) -> None:
    r = cli("control", "status", standin.job_id, "--json")
    assert r.code == 0, r
    d = r.json()
    assert (d["state"], d["live"], d["framework_callback"], d["step"], d["max_steps"], d["epoch"]) == ("running", True, True, 42, 1000, 0.25)
    assert d["metrics"] == {"loss": 1.5, "grad_norm": 0.75, "learning_rate": 5e-05}
    r = cli("control", "status", standin.job_id)
    assert r.code == 0, r
    assert "42/1000" in r.out and "loss=1.5" in r.out
    assert "the Forgather framework's own control callback" in r.out and f"port {standin.port}" in r.out


# -- commands ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("verb", "name"),
    [(["save"], "save_checkpoint"), (["stop"], "graceful_stop"), (["save-stop"], "save_and_stop"), (["abort", "--yes"], "abort")],
    ids=["save", "stop", "save-stop", "abort"],
)
def test_each_command_reaches_the_callback_under_its_own_name_without_a_token(cli, standin: StandIn, verb: list[str], name: str) -> None:
    r = cli("control", *verb, standin.job_id, extra_env={"FORGATHER_TOKEN": "secret-token-never-sent"})
    assert r.code == 0, r
    assert f"{verb[0]} acknowledged by job {standin.job_id}" in r.out  # the verb typed; the callback got its own name
    assert NO_RECEIPT in r.out
    assert standin.commands() == [{"command": name}]
    assert all("authorization" not in s.headers and "secret-token-never-sent" not in json.dumps(s.headers) for s in standin.seen)
    assert [s.method for s in standin.seen][-2:] == ["GET", "POST"]  # its status names the job right before a command goes


def test_send_json_is_the_acknowledgement_and_says_there_is_no_receipt(cli, standin: StandIn) -> None:
    r = cli("control", "save", standin.job_id, "--json")
    assert r.code == 0, r
    ack = r.json()
    assert {k: ack[k] for k in ("id", "key", "command", "state", "source", "receipt", "step", "job_id")} == {
        "id": None,
        "key": None,
        "command": "save_checkpoint",
        "state": "acknowledged",
        "source": "framework",
        "receipt": False,
        "step": 42,
        "job_id": standin.job_id,
    }
    assert isinstance(ack["acknowledged_at"], float) and NO_RECEIPT in ack["note"]


def test_eval_is_refused_naming_why_and_nothing_is_sent(cli, standin: StandIn) -> None:
    r = cli("control", "eval", standin.job_id)
    assert r.code == 1, r
    assert "has no evaluate command" in r.err and "nothing was sent" in r.err
    assert standin.commands() == []


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["save", "--wait"], "--wait cannot follow a save_checkpoint"),
        (["save", "--no-eval"], "cannot skip the evaluation"),
        (["stop", "--key", "k-1"], "takes no idempotency key"),
        (["stop", "--channel", "file"], "has no file channel"),
    ],
    ids=["save-wait", "save-no-eval", "a-key", "file-channel"],
)
def test_what_the_callback_cannot_do_is_a_usage_error_before_anything_is_sent(cli, standin: StandIn, args: list[str], why: str) -> None:
    r = cli("control", args[0], standin.job_id, *args[1:])
    assert r.code == 2, r
    assert why in r.err
    assert standin.commands() == []


def test_a_command_the_callback_refuses_exits_1_with_its_reason(cli, standin: StandIn) -> None:
    standin.on_command = lambda command: (400, {"error": f"Unknown command: {command}"})
    r = cli("control", "stop", standin.job_id)
    assert r.code == 1, r
    assert "refused graceful_stop (HTTP 400): Unknown command: graceful_stop" in r.err


def test_a_command_sent_without_an_answer_exits_6_and_does_not_promise_a_safe_retry(cli, standin: StandIn) -> None:
    release = threading.Event()
    standin.on_command = lambda command: release.wait(30) and None
    try:
        r = cli("control", "stop", standin.job_id, extra_env={"FORGATHER_HTTP_TIMEOUT": "1"})  # no answer: 1 s, not 5
    finally:
        release.set()
    assert r.code == 6, r
    assert "no usable answer came back" in r.err and "takes no idempotency key" in r.err
    assert "never queues twice" not in r.err


@pytest.mark.parametrize(
    ("verb", "name"), [(["stop"], "graceful_stop"), (["save-stop"], "save_and_stop"), (["abort", "--yes"], "abort")], ids=["stop", "save-stop", "abort"]
)
def test_wait_follows_a_stop_until_the_training_ends_and_says_what_it_saw(cli, standin: StandIn, verb: list[str], name: str) -> None:
    def end_training(command: str) -> None:
        threading.Timer(0.3, standin.endpoint.unlink).start()  # at its next on_log, then on_train_end

    standin.on_command = end_training
    r = cli("control", *verb, standin.job_id, "--wait", "--json")
    assert r.code == 0, r
    final = r.json()
    assert (final["command"], final["state"], final["result"], final["id"]) == (name, "ended", {"final_state": "ended"}, None)
    assert "removed its endpoint" in final["reason"] and "keeps no receipt" in final["reason"]
    assert ("the save is not confirmed" in final["reason"]) == (name == "save_and_stop")


def test_wait_ends_when_the_process_is_gone(procs, jobs_dir: Path) -> None:
    """The job's process is killed before it removes its endpoint: the wait, through the
    library as the CLI's, ends saying so."""
    proc = procs.start([sys.executable, str(SUPPORT / "framework_callback.py"), str(jobs_dir)], name="standin")
    job = wait_for(lambda: proc.output().strip(), timeout=60, what="the stand-in job to start")
    with open_job(job, jobs_dir=jobs_dir) as handle:
        assert handle.send("abort").state == "acknowledged"
        seen: list[Receipt | None] = []

        def kill_once(entry: Receipt | None) -> None:
            seen.append(entry)
            if len(seen) == 1:
                proc.popen.kill()

        final = handle.wait("", command="abort", timeout=60, on_poll=kill_once)
    assert final.state == "ended" and "its process has exited" in final.reason, final
    assert seen[0] is not None and seen[0].state == "acknowledged"
    assert (jobs_dir / job / "endpoint.json").exists()  # it died without a word; listed as dead
    assert open_job(job, jobs_dir=jobs_dir).state.value == "dead"


def test_wait_that_runs_out_says_the_command_was_acknowledged(cli, standin: StandIn) -> None:
    r = cli("control", "stop", standin.job_id, "--wait", "--timeout", "0.5")
    assert r.code == 1, r
    assert "still runs after 0.5s; the graceful_stop was acknowledged" in r.err


# -- the library: what the CLI does, a Python caller does ----------------------------------------
def test_a_python_caller_gets_what_the_cli_gives(standin: StandIn, jobs_dir: Path) -> None:
    listing = list_jobs(jobs_dir=jobs_dir)
    (row,) = [r for r in listing.rows if r.job_id == standin.job_id]
    assert (row.framework_callback, row.state, row.step) == (True, "running", 42)
    with open_job(standin.job_id[:12], jobs_dir=jobs_dir) as handle:
        assert handle.channel == "framework"
        assert handle.details().live is True
        assert handle.status().step == 42
        assert handle.metrics() == MetricHistory(version=1, job_id=standin.job_id, series={})
        assert handle.entry("anything") is None
        with pytest.raises(CommandRefused, match="has no evaluate command"):
            handle.send("eval")
        with pytest.raises(UsageError, match="cannot follow a save_checkpoint"):
            handle.check_followable("save")
        ack = handle.send("save")
    assert (ack.state, ack.command) == ("acknowledged", "save_checkpoint")
    assert standin.commands() == [{"command": "save_checkpoint"}]
    assert sorted(p.name for p in standin.endpoint.parent.iterdir()) == ["endpoint.json"]


def test_watch_follows_its_step_and_ends_when_its_training_ends(standin: StandIn, jobs_dir: Path) -> None:
    with open_job(standin.job_id, jobs_dir=jobs_dir) as handle:
        seen = []
        for snap in handle.watch(interval=0.05, rejudge_every=0.1):
            seen.append(snap)
            if len(seen) == 1:
                standin.endpoint.unlink()  # its on_train_end
    assert seen[0].status is not None and seen[0].status.step == 42
    assert seen[-1].ended == f"job {standin.job_id}'s training has ended (the framework's callback removed its endpoint)"


def test_the_web_page_lists_and_commands_it_through_the_same_calls(standin: StandIn, jobs_dir: Path) -> None:
    from forgather_control.ui.config import UiConfig
    from forgather_control.ui.feed import JobsFeed
    from forgather_control.ui.jobview import JobView

    (row,) = JobsFeed(UiConfig(jobs_dir=jobs_dir).source(), max_age=0.0).snapshot().rows
    assert (row.job_id, row.framework_callback, row.state, row.step, row.live) == (standin.job_id, True, "running", 42, True)
    assert row.loss == 1.5  # from its API: the job has no status.json for the page to read it from
    d0 = JobView(UiConfig(jobs_dir=jobs_dir)).details(standin.job_id)
    assert d0.framework_callback is True  # the page disables Eval and follows no receipt for it (job.js)
    view = JobView(UiConfig(jobs_dir=jobs_dir))
    d = view.details(standin.job_id)
    assert (d.channel, d.controllable, d.live, d.step) == ("framework", True, True, 42)
    assert view.send(standin.job_id, "save-stop")["state"] == "acknowledged"
    with pytest.raises(CommandRefused, match="has no evaluate command"):
        view.send(standin.job_id, "eval")
    assert view.entry(standin.job_id, "anything", None) is None
    assert standin.commands() == [{"command": "save_and_stop"}]


# -- the real callback -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_job_of_the_real_callback_is_listed_saved_and_stopped(cli, procs, framework_py: Path, tmp_path: Path) -> None:
    """The framework's ``Trainer`` with its own ``TrainerControlCallback`` (Python 3.12, HOME
    in tmp, so its jobs directory is tmp/home/.forgather/jobs); our CLI (3.11) with --jobs-dir
    there: listed alive with a step and a loss, ``save`` makes the framework write a checkpoint,
    ``eval`` is refused, ``stop --wait`` ends it and its process exits."""
    home, out = tmp_path / "home", tmp_path / "out"
    jobs = home / ".forgather" / "jobs"
    env = framework_env(framework_py, None, HOME=str(home))
    env.pop("FORGATHER_JOBS_DIR", None)
    proc = procs.start(
        [str(framework_py), str(SUPPORT / "framework_callback_job.py"), "--output-dir", str(out), "--port", str(free_port())], env=env, name="fw"
    )

    def listed() -> dict[str, Any] | None:
        assert proc.popen.poll() is None, f"the framework job exited early:\n{proc.output()[-4000:]}"
        found = [r for r in rows(cli, "--jobs-dir", str(jobs)).values() if r["pid"] == proc.pid]
        return found[0] if found and found[0]["state"] == "running" and (found[0]["step"] or 0) >= 5 and found[0]["loss"] is not None else None

    row = wait_for(listed, timeout=300, interval=0.5, what="the framework's job listed running with a step and a loss")
    job = row["job_id"]
    assert (row["framework_callback"], row["liveness"], row["host"]) == (True, "alive", socket.gethostname())
    assert job.startswith("job_") and job.endswith(f"_{proc.pid}")

    status = cli("control", "status", job, "--json", "--jobs-dir", str(jobs))
    assert status.code == 0 and status.json()["live"] is True and status.json()["step"] >= row["step"], status

    assert cli("control", "eval", job, "--jobs-dir", str(jobs)).code == 1
    before = checkpoints(out)
    saved = cli("control", "save", job, "--jobs-dir", str(jobs))
    assert saved.code == 0 and "save acknowledged" in saved.out, saved
    new = wait_for(lambda: [c for c in checkpoints(out) if c not in before], timeout=120, what="the framework to write the checkpoint")
    assert int(new[0].split("-")[1]) >= row["step"]

    stopped = cli("control", "stop", job, "--wait", "--json", "--timeout", "300", "--jobs-dir", str(jobs), timeout=400)
    assert stopped.code == 0, stopped
    assert stopped.json()["state"] == "ended" and "removed its endpoint" in stopped.json()["reason"]
    assert proc.wait(120) == 0
    assert "train() returned at step" in proc.output()
    assert not (jobs / job / "endpoint.json").exists()
    assert job not in rows(cli, "--jobs-dir", str(jobs), "--all")


def checkpoints(out: Path) -> list[str]:
    folder = out / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
