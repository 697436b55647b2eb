"""``forgather control resume`` on real launches (issue 23): two gloo ranks of the plain
loop under ``forgather launch``, through the command line as a user runs it.

One job, three runs: launched with a variable and a secret of its own, saved and paused
(listed ``paused``); ``resume --detach`` continues it from the pause's step with the same
arguments and environment (the secret from the resuming shell, never from the record)
and its alert command kept; that run raises (a failed job); ``resume --from`` the older
save rolls it back: it starts there, attached, and the newer checkpoint stays on disk,
listed as left behind."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from support.env import base_env
from support.launcher import launch, wait_running
from support.paths import EXAMPLES, FORGATHER, REPO
from support.processes import Procs, gone
from support.records import read_record
from support.waiting import wait_for

from forgather_control.core.outcome import EXIT_STOPPED
from forgather_control.launcher.proctree import ProcessTree

pytestmark = pytest.mark.slow

TIMEOUT = 240.0

#: The plain loop, after writing what each rank sees at its start (its arguments, a
#: variable and a secret set at launch, its run, its checkpoint) to ``$SEEN_DIR/rank-R.jsonl``;
#: every rank raises at its next step once ``$SEEN_DIR/fail`` exists.
SEEING_LOOP = textwrap.dedent(
    """
    import json, os, runpy, sys
    from pathlib import Path
    from forgather_control.callback import Controller, resume_from

    seen = Path(os.environ["SEEN_DIR"])
    with open(seen / f"rank-{os.environ['RANK']}.jsonl", "a") as fh:
        fh.write(json.dumps({"argv": sys.argv[1:], "mark": os.environ.get("RESUME_TEST_MARK"), "secret": os.environ.get("RESUME_TEST_TOKEN"),
                             "run": os.environ.get("FORGATHER_RESTARTS"), "resume_from": resume_from()}) + "\\n")
    step = Controller.step

    def failing_step(self, n, *args, **kwargs):
        if (seen / "fail").exists():
            raise RuntimeError(f"a bug at step {n}")
        return step(self, n, *args, **kwargs)

    Controller.step = failing_step
    sys.argv = [PLAIN, *sys.argv[1:]]
    runpy.run_path(PLAIN, run_name="__main__")
    """
).replace("PLAIN", repr(str(EXAMPLES / "plain_loop.py")))


def control(jobs_dir: Path, *args: str, **env: str):
    import subprocess

    argv = [*FORGATHER, "control", *args, "--jobs-dir", str(jobs_dir)]
    return subprocess.run(argv, env=base_env(jobs_dir, **env), capture_output=True, text=True, timeout=TIMEOUT)


def seen(seen_dir: Path, rank: int) -> list[dict]:
    path = seen_dir / f"rank-{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def checkpoints(jobs_dir: Path, job_id: str) -> list[tuple[int, bool, bool, bool]]:
    """(step, left_behind, on_disk, resume_point) of each checkpoint ``status --json`` lists."""
    res = control(jobs_dir, "status", job_id, "--json")
    assert res.returncode == 0, res.stderr
    return [(c["step"], bool(c.get("left_behind")), c["on_disk"], bool(c.get("resume_point"))) for c in json.loads(res.stdout)["checkpoints"]]


def saved_step(res) -> int:
    assert res.returncode == 0 and "completed" in res.stdout, res.stdout + res.stderr
    return int(re.search(r"checkpoint-(\d+)\.pt", res.stdout).group(1))


def test_paused_resumed_detached_failed_then_rolled_back(procs: Procs, jobs_dir: Path, tmp_path: Path) -> None:
    script, out, seen_dir = tmp_path / "seeing_loop.py", tmp_path / "out", tmp_path / "seen"
    script.write_text(SEEING_LOOP)
    seen_dir.mkdir()
    args = ("--output-dir", str(out), "--step-time", "0.02")
    env = {"SEEN_DIR": str(seen_dir), "RESUME_TEST_MARK": "set at launch", "RESUME_TEST_TOKEN": "the launch's"}
    first = launch(procs, jobs_dir, "rsm", script, *args, opts=("--nproc-per-node", "2", "--notify-cmd", "true"), **env)
    wait_running(jobs_dir, "rsm", first)
    older = saved_step(control(jobs_dir, "save", "rsm", "--wait"))
    stopped = saved_step(control(jobs_dir, "pause", "rsm", "--wait"))
    assert first.wait(TIMEOUT) == EXIT_STOPPED
    listed = json.loads(control(jobs_dir, "list", "--json").stdout)
    assert [(j["job_id"], j["state"]) for j in listed] == [("rsm", "paused")]

    # the record: the command line without --notify-cmd, the variable, not the secret
    folder = jobs_dir / "rsm"
    record = json.loads((folder / "relaunch.json").read_text())
    assert oct(os.stat(folder / "relaunch.json").st_mode & 0o777) == "0o600"
    assert record["argv"] == ["launch", "--jobs-dir", str(jobs_dir), "--job-id", "rsm", "--nproc-per-node", "2", str(script), *args]
    assert record["env"]["RESUME_TEST_MARK"] == "set at launch" and "RESUME_TEST_TOKEN" not in record["env"] and record["cwd"] == str(REPO)
    assert checkpoints(jobs_dir, "rsm") == [(older, False, True, False), (stopped, False, True, True)]

    # resume --detach: run 2 from the pause's step, same arguments and environment
    res = control(jobs_dir, "resume", "rsm", "--detach", "--json", RESUME_TEST_TOKEN="the resuming shell's")
    assert res.returncode == 0, res.stderr
    done = json.loads(res.stdout)
    assert (done["job_id"], done["run"], done["resume_step"], done["log"]) == ("rsm", 1, stopped, str(folder / "launcher-run-1.log"))
    detached = ProcessTree(done["pid"], session=done["pid"])
    try:
        # its log stays bounded (tests/launcher/test_output_pump.py): the launcher knows it is detached
        assert b"FORGATHER_DETACHED=1" in Path(f"/proc/{done['pid']}/environ").read_bytes().split(b"\0")
        st = wait_for(
            lambda: (s := read_record(jobs_dir, "rsm", "status.json")).get("restarts") == 1 and (s.get("step") or 0) > stopped + 2 and s,
            timeout=TIMEOUT,
            interval=0.2,
            what="run 2 past its resume point",
        )
        assert st["resumed_from"] == str(out / f"checkpoint-{stopped}.pt")
        for rank in (0, 1):
            launched, resumed = seen(seen_dir, rank)
            assert resumed["argv"] == launched["argv"] and resumed["mark"] == launched["mark"] == "set at launch"
            assert (launched["secret"], resumed["secret"]) == ("the launch's", "the resuming shell's")
            assert (resumed["run"], resumed["resume_from"]) == ("1", str(out / f"checkpoint-{stopped}.pt"))
        assert json.loads((folder / "notify.json").read_text())["cmds"] == [["true"]]  # its alert command kept

        # it raises: a failed job
        (seen_dir / "fail").write_text("")
        failed = wait_for(lambda: (j := read_record(jobs_dir, "rsm", "job.json")).get("ended_at") and j.get("restarts") == 1 and j, timeout=TIMEOUT)
        assert failed["state"] == "failed" and "a bug at step" in json.dumps(failed.get("failure")), failed
        wait_for(lambda: gone(done["pid"]), timeout=60, interval=0.2, what="the detached launcher to end")
    finally:
        left = detached.kill(timeout=10)
    assert not left
    (seen_dir / "fail").unlink()

    # resume --from the older save, attached: run 3 starts there; the pause's is left behind
    attached = procs.start(
        [*FORGATHER, "control", "resume", "rsm", "--from", str(older), "--jobs-dir", str(jobs_dir)],
        env=base_env(jobs_dir, RESUME_TEST_TOKEN="the resuming shell's"),
        name="resume-attached",
    )
    wait_running(jobs_dir, "rsm", attached, min_step=older + 2)
    assert seen(seen_dir, 0)[-1]["resume_from"] == seen(seen_dir, 1)[-1]["resume_from"] == str(out / f"checkpoint-{older}.pt")
    assert (out / f"checkpoint-{stopped}.pt").exists()
    assert checkpoints(jobs_dir, "rsm") == [(older, False, True, True), (stopped, True, True, False)]
    newest = saved_step(control(jobs_dir, "save-stop", "rsm", "--wait"))
    assert attached.wait(TIMEOUT) == EXIT_STOPPED  # the attached resume is the launcher: its exit code
    assert checkpoints(jobs_dir, "rsm") == [(older, False, True, False), (stopped, True, True, False), (newest, False, True, True)]
    shown = control(jobs_dir, "status", "rsm")
    assert re.search(rf"{stopped}\s.*checkpoint-{stopped}\.pt\s+left behind", shown.stdout), shown.stdout
    assert re.search(rf"{newest}\s.*checkpoint-{newest}\.pt\s+resume point", shown.stdout), shown.stdout
    job = read_record(jobs_dir, "rsm", "job.json")
    assert job["restarts"] == 2 and job["roll_back"]["step"] == older and job["roll_back"]["run"] == 2
