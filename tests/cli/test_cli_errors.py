"""The CLI's error boundary, exit codes and start-up discipline, through the real
``forgather`` executable. Records are written by hand: no training process needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.env import base_env
from support.paths import FORGATHER, REPO
from support.ports import free_port
from support.records import identity

from forgather_control.core import JobPaths, local_host, write_json_atomic


def finished_job(root: Path, job_id: str, state: str = "finished", step: int = 10) -> JobPaths:
    paths = JobPaths(root, job_id).create()
    write_json_atomic(paths.status, {"job_id": job_id, "state": state, "step": step, "max_steps": step, "heartbeat_at": time.time(), **identity(999_999_999)})
    return paths


def unreachable_job(root: Path, job_id: str) -> JobPaths:
    """A job whose pid is alive (ours, start time right) but whose URL is a closed port."""
    paths = JobPaths(root, job_id).create()
    port = free_port()
    ident = identity()
    write_json_atomic(
        paths.endpoint,
        {"job_id": job_id, "url": f"http://127.0.0.1:{port}", "port": port, "token": "sekrit-token-value", "started_at": time.time(), "protocol": 1, **ident},
    )
    write_json_atomic(paths.status, {"job_id": job_id, "state": "running", "step": 3, "heartbeat_at": time.time(), **ident})
    return paths


def test_help_and_exit_codes_documented(cli) -> None:
    r = cli("--help")
    assert r.code == 0
    assert "control" in r.out and "launch" in r.out
    assert "3 job not found" in r.out
    r = cli("control", "--help")
    assert r.code == 0
    for verb in ("list", "status", "save", "eval", "stop", "save-stop", "pause", "abort", "cleanup"):
        assert verb in r.out


def test_usage_errors_exit_2(cli) -> None:
    r = cli("control", "save")
    assert r.code == 2 and "Missing argument" in r.err
    r = cli("control", "list", "--bogus")
    assert r.code == 2 and "No such option" in r.err
    r = cli("control", "nonsense")
    assert r.code == 2


def test_not_found_exit_3_says_what_to_do(cli, jobs_dir: Path) -> None:
    finished_job(jobs_dir, "alpha-1")
    r = cli("control", "status", "zzz")
    assert r.code == 3, r
    assert r.err.startswith("error: ") and "forgather control list --all" in r.err
    assert "Traceback" not in r.err
    r = cli("control", "save", "zzz", "--wait")
    assert r.code == 3


def test_ambiguous_prefix_exit_2(cli, jobs_dir: Path) -> None:
    finished_job(jobs_dir, "abc-1")
    finished_job(jobs_dir, "abc-2")
    r = cli("control", "status", "abc")
    assert r.code == 2, r
    assert "abc-1" in r.err and "abc-2" in r.err and "give more of the id" in r.err
    # a unique prefix is accepted
    r = cli("control", "status", "abc-2", "--json")
    assert r.code == 0 and r.json()["job_id"] == "abc-2"
    finished_job(jobs_dir, "unique-job")
    r = cli("control", "status", "uni", "--json")
    assert r.code == 0 and r.json()["job_id"] == "unique-job"


@pytest.mark.parametrize("ref", ["../x", "a/b", ".hidden", "x y", "x" * 200])
def test_bad_job_id_exit_2(cli, jobs_dir: Path, ref: str) -> None:
    r = cli("control", "status", ref)
    assert r.code == 2, r
    assert "invalid job id" in r.err
    r = cli("control", "stop", ref)
    assert r.code == 2


def test_unreachable_exit_4_and_token_never_printed(cli, jobs_dir: Path) -> None:
    paths = unreachable_job(jobs_dir, "lost-1")
    r = cli("control", "save", "lost-1", "--channel", "http", "--wait", "--timeout", "5")
    assert r.code == 4, r
    assert "cannot reach" in r.err and "nothing was sent" in r.err and "error: " in r.err
    # on channel auto, what HTTP did not send goes to the inbox, and the CLI says so
    r = cli("control", "save", "lost-1")
    assert r.code == 0 and "dropped in its inbox" in r.out and "goes to the job's inbox" in r.err, r
    assert len(list(paths.inbox.glob("*.json"))) == 1
    # status still answers from the files, and says it got no live answer
    r = cli("control", "status", "lost-1", "--json")
    assert r.code == 0, r
    d = r.json()
    assert d["live"] is False and d["state"] == "running"
    for args in (
        ("control", "list", "--json"),
        ("control", "list"),
        ("control", "status", "lost-1"),
        ("control", "status", "lost-1", "--json"),
        ("-vv", "control", "save", "lost-1"),
    ):
        r = cli(*args)
        assert "sekrit-token-value" not in r.out + r.err, args


def test_list_of_a_jobs_dir_that_does_not_exist_says_so(cli, jobs_dir: Path) -> None:
    """A mistyped or unset jobs dir is the usual reason for an empty list: say which
    folder was read and how to read another; create nothing."""
    res = cli("control", "list")
    assert res.code == 0 and str(jobs_dir) in res.out and "does not exist yet" in res.out and "--jobs-dir" in res.out, res.out
    js = cli("control", "list", "--json")
    assert js.code == 0 and js.json() == []
    assert not jobs_dir.exists()


def test_ended_job_cannot_be_commanded(cli, jobs_dir: Path) -> None:
    finished_job(jobs_dir, "done-1", state="stopped")
    r = cli("control", "stop", "done-1")
    assert r.code == 5 and "ended" in r.err  # its own code, not "unreachable"


def test_abort_without_tty_or_yes_refuses_exit_2(cli, jobs_dir: Path) -> None:
    paths = unreachable_job(jobs_dir, "victim")
    r = cli("control", "abort", "victim", input="y\n")
    assert r.code == 2, r
    assert "--yes" in r.err
    assert list(paths.inbox.iterdir()) == []  # nothing was sent


def test_cleanup_without_tty_or_yes_refuses_exit_2(cli, jobs_dir: Path) -> None:
    paths = finished_job(jobs_dir, "old-1")
    r = cli("control", "cleanup")
    assert r.code == 2 and "--yes" in r.err
    assert paths.dir.is_dir()


_LAUNCH = "forgather_control.cli.launch"

_MODULES_PROBE = """
import sys, json
{before}
from forgather_control.cli.main import run
rc = run(sys.argv[1:])
sys.stderr.write('\\nMODULES=' + json.dumps(sorted(m for m in sys.modules if m.startswith('forgather_control.'))) + '\\n')
sys.exit(rc)
"""


def cli_in_fresh_python(args: list[str], env: dict[str, str], *, before: str = "") -> tuple[int, str, str, set[str]]:
    """Run the CLI in a fresh interpreter after ``before``; exit code, stdout, stderr
    and the project's modules it loaded."""
    code = _MODULES_PROBE.format(before=before)
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("MODULES=")][-1]
    return p.returncode, p.stdout, p.stderr, set(json.loads(line[len("MODULES=") :]))


def test_launch_is_imported_only_when_invoked(jobs_dir: Path) -> None:
    env = base_env(jobs_dir)
    rc, out, _, loaded = cli_in_fresh_python(["--help"], env)
    assert rc == 0 and "launch" in out
    assert _LAUNCH not in loaded, "`forgather --help` imported the launcher"
    rc, out, _, loaded = cli_in_fresh_python(["launch", "--help"], env)
    assert rc == 0 and "--dry-run" in out, out  # the real command's own help
    assert _LAUNCH in loaded


def test_launch_missing_from_the_install_is_explained(jobs_dir: Path) -> None:
    """An install without cli/launch.py (simulated: the import of that one module
    fails): `forgather launch` is a usage error naming what is missing, no traceback."""
    before = f"sys.modules[{_LAUNCH!r}] = None  # import of it raises ModuleNotFoundError"
    for args in (["launch", "--help"], ["launch", "train.py"]):
        rc, out, err, _ = cli_in_fresh_python(args, base_env(jobs_dir), before=before)
        assert rc == 2, (args, out, err)
        assert "`forgather launch` is not available" in err and _LAUNCH in err and "reinstall forgather-control" in err, err
        assert "Traceback" not in err
    rc, out, _, _ = cli_in_fresh_python(["--help"], base_env(jobs_dir), before=before)
    assert rc == 0 and "launch" in out  # the help still lists it (from the static table)


def test_ray_without_ray_names_the_extra(jobs_dir: Path) -> None:
    """--ray with Ray missing: exit 2 and the extra to install, no traceback."""
    code = "import sys; sys.modules['ray'] = None\nfrom forgather_control.cli.main import run\nsys.exit(run(sys.argv[1:]))\n"
    for args in (["control", "list", "--ray"], ["control", "status", "somejob", "--ray-address", "127.0.0.1:1"]):
        p = subprocess.run([sys.executable, "-c", code, *args], env=base_env(jobs_dir), capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p
        assert "forgather-control[ray]" in p.stderr and "Traceback" not in p.stderr


def test_remote_bad_address_is_usage_and_closed_port_is_unreachable(cli) -> None:
    r = cli("control", "list", "--remote", "nonsense")
    assert r.code == 2 and "HOST:PORT" in r.err
    r = cli("control", "list", "--remote", f"127.0.0.1:{free_port()}", "--token", "t")
    assert r.code == 4, r


_IMPORT_PROBE = """
import sys, json
from forgather_control.cli.main import run
rc = run(sys.argv[1:])
heavy = sorted(m for m in ('torch', 'fastapi', 'ray', 'rich', 'uvicorn', 'transformers', 'lightning') if m in sys.modules)
sys.stderr.write('\\nHEAVY=' + json.dumps(heavy) + '\\n')
sys.exit(rc)
"""


def heavy_imports(args: list[str], env: dict[str, str]) -> tuple[int, list[str], str]:
    """Run the CLI in-process in a fresh interpreter; report which heavy modules it loaded."""
    p = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *args], env=env, capture_output=True, text=True, timeout=120)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY=")][-1]
    return p.returncode, json.loads(line[len("HEAVY=") :]), p.stdout


def test_control_commands_import_no_torch_fastapi_ray(jobs_dir: Path) -> None:
    env = base_env(jobs_dir)
    finished_job(jobs_dir, "quiet-1")
    unreachable_job(jobs_dir, "lost-2")
    rc, heavy, _ = heavy_imports(["--help"], env)
    assert rc == 0 and heavy == []
    for args in (["control", "list", "--json"], ["control", "list", "--all", "--json"], ["control", "status", "quiet-1", "--json"]):
        rc, heavy, _ = heavy_imports(args, env)
        assert rc == 0, args
        assert heavy == [], (args, heavy)  # --json does not even load rich
    for args in (
        ["control", "list"],
        ["control", "status", "quiet-1"],
        ["control", "save", "lost-2", "--json"],
        ["control", "cleanup", "--dry-run"],
        ["control", "logs", "quiet-1"],
        ["control", "resume", "quiet-1", "--detach"],  # refused (no relaunch record): the path to its refusal
        ["control", "set", "lost-2", "lr=1"],
        ["control", "pause", "lost-2", "--json"],
    ):
        rc, heavy, _ = heavy_imports(args, env)
        assert not {"torch", "fastapi", "ray", "uvicorn"} & set(heavy), (args, heavy)


def test_hostile_warnings_go_to_stderr_not_stdout(cli, jobs_dir: Path) -> None:
    paths = finished_job(jobs_dir, "ok-1")
    bad = JobPaths(jobs_dir, "bad-1").create()
    bad.status.write_text("{not json")
    r = cli("control", "list", "--all", "--json")
    assert r.code == 0
    rows = {j["job_id"]: j for j in r.json()}
    assert rows["ok-1"]["state"] == "finished"
    assert rows["bad-1"]["state"] == "corrupt" and "not valid JSON" in rows["bad-1"]["evidence"]  # its own problem, shown
    assert "bad-1" in r.err and "not valid JSON" in r.err
    assert paths.dir.is_dir()
    assert local_host().hostname  # sanity: the records above were written for this host
    assert os.environ.get("FORGATHER_JOBS_DIR") == str(jobs_dir)


def _run_in_pty(args: list[str], answer: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with a terminal as stdin (so it may ask), answer its prompt."""
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([*FORGATHER, *args], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        os.write(master, answer.encode())
        out, err = p.communicate(timeout=120)
        return p.returncode, out + err
    finally:
        os.close(master)
        os.close(slave)


def test_abort_and_cleanup_ask_on_a_terminal(jobs_dir: Path) -> None:
    env = base_env(jobs_dir)
    paths = unreachable_job(jobs_dir, "victim-2")
    code, text = _run_in_pty(["control", "abort", "victim-2"], "n\n", env)
    assert code == 1 and "Abort job victim-2" in text, text
    assert list(paths.inbox.iterdir()) == []
    code, text = _run_in_pty(["control", "abort", "victim-2", "--channel", "http"], "y\n", env)
    assert code == 4 and "cannot reach" in text, text  # asked, then tried: the port is closed

    old = finished_job(jobs_dir, "old-2")
    code, text = _run_in_pty(["control", "cleanup"], "n\n", env)
    assert code == 1 and "old-2" in text and old.dir.is_dir(), text
    code, text = _run_in_pty(["control", "cleanup"], "y\n", env)
    assert code == 0 and not old.dir.exists(), text
    assert paths.dir.is_dir()  # alive (our pid): never a candidate


def test_ctrl_c_while_waiting_says_the_command_stays_queued(jobs_dir: Path) -> None:
    """A job that takes file commands but never applies them (our own pid, no loop)."""
    import signal

    from support.waiting import wait_for

    paths = JobPaths(jobs_dir, "sleepy").create()
    ident = identity()
    write_json_atomic(paths.endpoint, {"job_id": "sleepy", "url": None, "token": "t", "started_at": time.time(), "protocol": 1, **ident})
    write_json_atomic(paths.status, {"job_id": "sleepy", "state": "running", "step": 1, "heartbeat_at": time.time(), **ident})
    p = subprocess.Popen([*FORGATHER, "control", "save", "sleepy", "--wait"], env=base_env(jobs_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the finished command file, not the writer's temporary one: once it is there the
        # CLI has sent the command and is waiting (SIGINT earlier interrupts the sending)
        wait_for(lambda: any(not n.name.startswith(".") for n in paths.inbox.iterdir()), timeout=60, what="the command file")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, (out, err)
    assert "stopped waiting" in err and "forgather control status sleepy" in err and "Traceback" not in err


def test_ctrl_c_between_sending_and_waiting_says_the_command_stays_sent(
    jobs_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command is in the inbox before the CLI starts waiting (it looks whether the job is
    stalled first): a Ctrl-C there says what one while waiting says, not a bare "interrupted"
    (seen once under load by the test above)."""
    from forgather_control.cli.main import run
    from forgather_control.client.handle import JobHandle

    paths = JobPaths(jobs_dir, "sleepy").create()
    ident = identity()
    write_json_atomic(paths.endpoint, {"job_id": "sleepy", "url": None, "token": "t", "started_at": time.time(), "protocol": 1, **ident})
    write_json_atomic(paths.status, {"job_id": "sleepy", "state": "running", "step": 1, "heartbeat_at": time.time(), **ident})

    def ctrl_c(self: JobHandle, command: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(JobHandle, "stall_notice", ctrl_c)
    code = run(["control", "save", "sleepy", "--wait", "--jobs-dir", str(jobs_dir)])
    err = capsys.readouterr().err
    assert code == 130, err
    assert "stopped waiting; save_checkpoint" in err and "stays sent on job sleepy" in err and "forgather control status sleepy" in err, err
    assert [f for f in paths.inbox.iterdir() if not f.name.startswith(".")], "the command was sent"


def test_reader_closing_the_pipe_is_not_a_failure(jobs_dir: Path) -> None:
    """`forgather control list --json | head`: the reader leaving early exits 0, quietly
    (click alone would turn the broken pipe into exit 1)."""
    p = JobPaths(jobs_dir, "piped").create()
    write_json_atomic(p.status, {**identity(), "state": "finished", "step": 1})
    exe = [sys.executable, "-m", "forgather_control.cli.main", "control", "list", "--all", "--json"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before we write
    proc = subprocess.run(exe, stdout=write_end, stderr=subprocess.PIPE, text=True, env=base_env(jobs_dir), timeout=60, cwd=REPO)
    os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr.lower()
