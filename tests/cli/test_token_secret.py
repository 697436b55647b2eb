"""A job's token given the documented way (``--token-file FILE``, or ``$FORGATHER_TOKEN``)
is in no argv of a ``forgather control ... --remote`` command: a literal ``--token T`` is
readable by every user on the node in ``/proc/<pid>/cmdline`` (and ``ps``) for as long as
the command runs (``status --watch``, ``--wait``: minutes to hours), and stays in shell
history. The command works the same either way."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.env import base_env
from support.paths import FORGATHER
from support.plain_job import WAIT, check_checkpoint, start_loop, wait_running
from support.processes import Proc, Procs
from support.waiting import wait_for

from forgather_control.core import JobPaths, read_json

TIMEOUT = 240.0


def _watch(procs: Procs, jobs_dir: Path, job: str, remote: str, *how: str) -> Proc:
    """``status JOB --remote ... --watch`` running, one line per look (its output is a file)."""
    env = base_env(jobs_dir)
    env.pop("FORGATHER_TOKEN", None)
    return procs.start([*FORGATHER, "control", "status", job, "--remote", remote, *how, "--watch", "--interval", "0.2"], env=env, name="watch")


def _answered(watch: Proc, job: str) -> None:
    """Wait until the watch has printed a progress line: the server took its token."""

    def printed() -> bool:
        assert watch.popen.poll() is None, f"the watch exited early:\n{watch.output()[-3000:]}"
        return job in watch.output()

    wait_for(printed, timeout=120, what="the watch's first progress line")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_token_file_keeps_the_token_out_of_a_running_commands_argv(cli, procs: Procs, jobs_dir: Path, tmp_path: Path) -> None:
    job = "tokened"
    proc = start_loop(procs, jobs_dir, tmp_path / "out", job, "--max-steps", "100000")
    row = wait_running(cli, jobs_dir, proc, job)
    token = read_json(JobPaths(jobs_dir, job).endpoint)["token"]
    remote = f"127.0.0.1:{row['port']}"

    # A literal --token: in the watch's argv all the while it runs (it still works, said on stderr).
    literal = _watch(procs, jobs_dir, job, remote, "--token", token)
    _answered(literal, job)
    assert token.encode() in Path(f"/proc/{literal.pid}/cmdline").read_bytes()
    literal.tree.kill(timeout=10)
    literal.wait(30)
    said = literal.output()
    assert "warning: --token puts the job's token on this command's command line" in said and "--token-file FILE" in said, said
    assert said.count(token) == 0, said

    # --token-file: the same watch, the token in no argv, no output.
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    watch = _watch(procs, jobs_dir, job, remote, "--token-file", str(token_file))
    _answered(watch, job)
    assert token.encode() not in Path(f"/proc/{watch.pid}/cmdline").read_bytes()

    no_env = {"FORGATHER_TOKEN": ""}
    r = cli("control", "save", job, "--remote", remote, "--token-file", str(token_file), "--wait", "--json", "--timeout", WAIT, extra_env=no_env)
    assert r.code == 0, r
    check_checkpoint(r.json())
    r = cli("control", "stop", job, "--remote", remote, "--token-file", str(token_file), "--wait", "--json", "--timeout", WAIT, extra_env=no_env)
    # followed to its end over HTTP: the server lets a follower read the stop applied before it goes
    assert r.code == 0, r
    assert r.json()["state"] == "completed" and r.json()["step"] is not None, r.json()
    assert proc.wait(TIMEOUT) == 0, proc.output()[-3000:]
    assert watch.wait(TIMEOUT) == 0, watch.output()[-3000:]
    # the watch read the job's final state before its server went: it says how the job ended
    assert f"job {job} stopped at step" in watch.output() and "lost contact" not in watch.output(), watch.output()[-3000:]
    assert token not in watch.output() and "warning" not in watch.output(), watch.output()
