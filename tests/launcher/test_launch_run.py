"""`forgather launch` for real: the CLI as a subprocess, real torchrun, gloo on CPU.

Acceptance (issue 4): 1. the plain/HF/Lightning examples under the launcher, with the
callback injected by the bootstrap, obey save, eval, save-stop and abort; 2. two
launchers as two nodes make one job that all four ranks obey; 3. a signal to the
launcher saves and stops within the grace and leaves no process; a crash fails the job.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from support.launcher import launch, wait_running
from support.paths import EXAMPLES
from support.paths import PLAIN_LAUNCH as PLAIN
from support.ports import free_port
from support.processes import Procs, assert_all_gone, gone
from support.records import read_record as read
from support.waiting import wait_for

from forgather_control.core.env import ENV_ABORT_RETURNS
from forgather_control.core.outcome import EXIT_ABORTED, EXIT_PREEMPTED, EXIT_STOPPED

pytestmark = pytest.mark.slow  # forgather launch, torchrun

HF = EXAMPLES / "hf_trainer.py"
LIGHTNING = EXAMPLES / "lightning_trainer.py"
TIMEOUT = 240.0


def control_ok(cli, *args: str) -> str:
    res = cli("control", *args, timeout=TIMEOUT)
    assert res.code == 0, f"forgather control {' '.join(args)} -> {res.code}\n{res.out}\n{res.err}"
    return res.out


TRAINERS = {
    "plain": (PLAIN, ("--step-time", "0.05")),
    "hf": (HF, ("--no-control-callback", "--step-time", "0.05", "--logging-steps", "5")),
    "lightning": (LIGHTNING, ("--no-control-callback", "--step-time", "0.05")),
}
# The standalone package's Trainer is a different class with a different Callback type.
STANDALONE_PL = (LIGHTNING, ("--no-control-callback", "--step-time", "0.05", "--package", "pytorch_lightning"))


# -- acceptance 1 -------------------------------------------------------------------------
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", [*sorted(TRAINERS), "pytorch_lightning"])
def test_injected_control_save_eval_save_stop(kind: str, jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    script, args = TRAINERS.get(kind, STANDALONE_PL)
    out = tmp_path / "out"
    job = launch(procs, jobs_dir, f"{kind}-cmds", script, *args, "--output-dir", str(out), opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, f"{kind}-cmds", job)

    listed = json.loads(control_ok(cli, "list", "--json"))
    mine = [j for j in listed if j["job_id"] == f"{kind}-cmds"]
    assert mine and mine[0]["world_size"] == 2 and mine[0]["scheduler"] == "local", listed

    saved = control_ok(cli, "save", f"{kind}-cmds", "--wait", "--timeout", str(TIMEOUT))
    assert "completed" in saved and "checkpoint" in saved, saved
    evaluated = control_ok(cli, "eval", f"{kind}-cmds", "--wait", "--timeout", str(TIMEOUT))
    assert "completed" in evaluated, evaluated
    stopped = control_ok(cli, "save-stop", f"{kind}-cmds", "--wait", "--timeout", str(TIMEOUT))
    assert "completed" in stopped, stopped

    assert job.wait(TIMEOUT) == EXIT_STOPPED, job.output()[-4000:]  # stopped by a command: not "finished"
    record = read(jobs_dir, f"{kind}-cmds", "job.json")
    assert record["state"] == "stopped" and record["exit_code"] == EXIT_STOPPED and record["ended_at"]
    assert record["last_checkpoint"] and Path(record["last_checkpoint"]).exists()
    node = read(jobs_dir, f"{kind}-cmds", "nodes/0.json")
    assert node["state"] == "stopped" and node["pid"] == job.pid

    if kind == "pytorch_lightning":
        return  # its relaunch resumes through the bootstrap's one Lightning path, run for "lightning"
    # Relaunching the same job id is a restart: it counts, and the trainer resumes from
    # the last checkpoint (plain: resume_from(); HF/Lightning: the bootstrap passes it).
    ckpt, step = record["last_checkpoint"], record["final_step"]
    again = launch(
        procs, jobs_dir, f"{kind}-cmds", script, *args, "--output-dir", str(out), "--max-steps", str(step + 2), opts=("--nproc-per-node", "2"), name="again"
    )
    assert again.wait(TIMEOUT) == 0, again.output()[-4000:]
    rerun = read(jobs_dir, f"{kind}-cmds", "job.json")
    assert rerun["restarts"] == 1 and rerun["resume_from"] == ckpt and rerun["state"] == "finished", rerun
    assert rerun["created_at"] == record["created_at"] and rerun["final_step"] == step + 2
    # rank 0 records which run it is, so a listing can tell this run's status.json from the last
    assert read(jobs_dir, f"{kind}-cmds", "status.json")["restarts"] == 1
    expected = f"resumed from {ckpt} at step {step}" if kind == "plain" else f"forgather: resuming from {ckpt}"
    assert expected in again.output(), again.output()[-4000:]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_injected_control_abort(kind: str, jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    script, args = TRAINERS[kind]
    job = launch(procs, jobs_dir, f"{kind}-abort", script, *args, "--output-dir", str(tmp_path / "out"), opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, f"{kind}-abort", job)
    if kind == "plain":
        # A job id in use by a live job is refused, before anything starts.
        again = launch(procs, jobs_dir, f"{kind}-abort", script, *args, name="again")
        assert again.wait(60) == 2
        assert "is in use" in again.output() and f"{kind}-abort" in again.output()
    control_ok(cli, "abort", f"{kind}-abort", "--yes", "--wait", "--timeout", str(TIMEOUT))
    assert job.wait(TIMEOUT) == EXIT_ABORTED, job.output()[-4000:]  # an aborted run is never 0
    record = read(jobs_dir, f"{kind}-abort", "job.json")
    assert record["state"] == "aborted" and record["exit_code"] == EXIT_ABORTED
    assert not record.get("last_checkpoint"), record
    if kind != "plain":  # a plain loop has no trainer: it reads ctl.aborted itself
        # the script's code after train()/fit() did not run on an aborted model
        assert "ended at step" not in job.output(), job.output()[-3000:]
        assert "does not return into the script" in job.output()


@pytest.mark.timeout(600)
def test_abort_returns_into_the_script_when_asked(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    script, args = TRAINERS["hf"]
    job = launch(
        procs, jobs_dir, "hf-returns", script, *args, "--output-dir", str(tmp_path / "out"), opts=("--nproc-per-node", "2"), **{ENV_ABORT_RETURNS: "1"}
    )
    wait_running(jobs_dir, "hf-returns", job)
    control_ok(cli, "abort", "hf-returns", "--yes", "--wait", "--timeout", str(TIMEOUT))
    assert job.wait(TIMEOUT) == EXIT_ABORTED, job.output()[-4000:]
    assert re.findall(r"ended at step \d+ aborted=(\w+)", job.output()) == ["True", "True"]


# -- acceptance 2 -------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_two_launchers_as_two_nodes(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    port = free_port()
    common = ("--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port))
    args = ("--step-time", "0.05", "--output-dir", str(tmp_path / "out"))
    node1 = launch(procs, jobs_dir, "duo", PLAIN, *args, opts=(*common, "--node-rank", "1"), name="node1")
    node0 = launch(procs, jobs_dir, "duo", PLAIN, *args, opts=(*common, "--node-rank", "0"), name="node0")
    st = wait_running(jobs_dir, "duo", node0, node1)
    assert st["world_size"] == 4

    listed = json.loads(control_ok(cli, "list", "--json"))
    assert [j["job_id"] for j in listed] == ["duo"], listed  # one job, one server
    assert sorted(os.listdir(jobs_dir / "duo" / "nodes")) == ["0.json", "1.json"]
    saved = control_ok(cli, "save", "duo", "--wait", "--timeout", str(TIMEOUT))
    assert "checkpoint" in saved
    control_ok(cli, "save-stop", "duo", "--wait", "--timeout", str(TIMEOUT))

    codes = (node0.wait(TIMEOUT), node1.wait(TIMEOUT))
    assert codes == (EXIT_STOPPED, EXIT_STOPPED), node0.output()[-3000:] + node1.output()[-3000:]
    stops = re.findall(r"rank (\d): stopping at step (\d+)", node0.output() + node1.output())
    assert sorted(r for r, _ in stops) == ["0", "1", "2", "3"], stops  # all four ranks obeyed
    assert len({s for _, s in stops}) == 1, f"ranks stopped at different steps: {stops}"
    record = read(jobs_dir, "duo", "job.json")
    assert record["exit_code"] == EXIT_STOPPED and record["state"] == "stopped" and record["nnodes"] == "2"
    assert read(jobs_dir, "duo", "nodes/1.json")["exit_code"] == EXIT_STOPPED


@pytest.mark.timeout(600)
def test_a_crash_on_another_node_is_the_root_cause_everywhere(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    """Rank 3 (node 1) raises; node 0's records and status name it, not rank 0's lost peer."""
    port = free_port()
    common = ("--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port))
    args = ("--step-time", "0.05", "--crash-at", "30", "--output-dir", str(tmp_path / "out"))
    node1 = launch(procs, jobs_dir, "duo-crash", PLAIN, *args, opts=(*common, "--node-rank", "1"), name="node1")
    node0 = launch(procs, jobs_dir, "duo-crash", PLAIN, *args, opts=(*common, "--node-rank", "0"), name="node0")
    codes = (node0.wait(TIMEOUT), node1.wait(TIMEOUT))
    assert 0 not in codes, node0.output()[-3000:] + node1.output()[-3000:]
    assert "forgather: job duo-crash" in node0.output()  # the launcher says which job it runs, and how to reach it
    record = read(jobs_dir, "duo-crash", "job.json")
    assert record["state"] == "failed" and record["failure"]["rank"] == 3, record
    status = json.loads(control_ok(cli, "status", "duo-crash", "--json"))
    assert status["failure"]["rank"] == 3 and "crashing at step 30" in status["failure"]["message"]
    assert {f["rank"] for f in status["failures"]} >= {3}


# -- acceptance 3 -------------------------------------------------------------------------
@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_to_launcher_saves_and_stops_within_grace(signum: int, jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    grace = 90.0
    out = tmp_path / "out"
    job = launch(procs, jobs_dir, "sig", PLAIN, "--step-time", "0.05", "--output-dir", str(out), opts=("--nproc-per-node", "2", "--grace", str(grace)))
    wait_running(jobs_dir, "sig", job)
    seen = job.tree.track()  # the launcher, torchrun, the workers
    assert len(seen) >= 4, "launcher, torchrun and two workers"
    t0 = time.monotonic()
    os.kill(job.pid, signum)
    code = job.wait(grace + 30)
    elapsed = time.monotonic() - t0
    assert code == EXIT_PREEMPTED, job.output()[-4000:]  # saved on a signal: relaunch to resume
    assert elapsed < grace, f"took {elapsed:.1f}s, grace {grace}s"
    record = read(jobs_dir, "sig", "job.json")
    assert record["state"] == "stopped" and record["signals"] == [signal.Signals(signum).name]
    ckpt = Path(record["last_checkpoint"])
    assert ckpt.exists() and ckpt.parent == out, record  # a completed checkpoint
    status = read(jobs_dir, "sig", "status.json")
    assert any(c.get("command") == "save_and_stop" and c.get("state") == "completed" for c in status["commands"]), status["commands"]
    assert_all_gone(seen)


def _remove_while_written(folder: Path) -> None:
    """``rm -rf`` of a folder its job writes into as it goes (rank 0's status, the ranks'
    logs): a file made between the emptying and the rmdir fails that rmdir; again, at
    once, until it is gone."""
    for _ in range(100):
        try:
            shutil.rmtree(folder)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
    raise AssertionError(f"{folder} kept being written into")


def test_a_signal_to_the_launcher_of_a_job_whose_folder_was_removed_still_saves_and_stops(jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    """The job's folder removed while it trains (by hand, or a cleanup of an older
    release): the launcher's stop has no inbox to go into, and used to end torchrun after
    the grace without a save. It makes the folder again (rank 0 still reads its inbox
    there) and the job saves and stops as usual."""
    out = tmp_path / "out"
    job = launch(procs, jobs_dir, "gone", PLAIN, "--step-time", "0.05", "--output-dir", str(out), opts=("--nproc-per-node", "2", "--grace", "90"))
    wait_running(jobs_dir, "gone", job)
    removed_at = len(job.output())
    _remove_while_written(jobs_dir / "gone")
    wait_for(lambda: "is gone" in job.output()[removed_at:] or None, timeout=60, what="the job saying its folder is gone")
    os.kill(job.pid, signal.SIGTERM)
    assert job.wait(120) == EXIT_PREEMPTED, job.output()[-4000:]
    record = read(jobs_dir, "gone", "job.json")
    assert record["state"] == "stopped" and record["signals"] == ["SIGTERM"], record
    ckpt = Path(record["last_checkpoint"])
    assert ckpt.exists() and ckpt.parent == out, record
    said = job.output()[removed_at:]
    assert "made it again to deliver the stop" in said and "could not write" not in said, said[-4000:]


@pytest.mark.timeout(600)
def test_second_signal_escalates(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    """A second signal does not wait for a save: torchrun and its workers go at once,
    nothing is saved, and job.json, list and status all say aborted."""
    job = launch(procs, jobs_dir, "esc", PLAIN, "--step-time", "0.05", "--output-dir", str(tmp_path / "out"), opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, "esc", job)
    seen = job.tree.track()  # the launcher, torchrun, the workers
    os.kill(job.pid, signal.SIGSTOP)  # queue both signals so they arrive together
    os.kill(job.pid, signal.SIGINT)
    os.kill(job.pid, signal.SIGTERM)
    os.kill(job.pid, signal.SIGCONT)
    t0 = time.monotonic()
    code = job.wait(60)
    assert time.monotonic() - t0 < 10, "every rank stops at once, not after torchrun's own SIGTERM round"
    assert code == EXIT_ABORTED, job.output()[-3000:]
    record = read(jobs_dir, "esc", "job.json")
    # both, in the order the launcher's threads took them (the kernel hands them out together)
    assert sorted(record["signals"]) == ["SIGINT", "SIGTERM"] and record["state"] == "aborted" and record["exit_code"] == EXIT_ABORTED
    assert not record.get("last_checkpoint") and not list((tmp_path / "out").glob("checkpoint-*")), record  # nothing saved
    assert "escalating" in job.output()
    assert_all_gone(seen)
    listed = {j["job_id"]: j for j in json.loads(control_ok(cli, "list", "--all", "--json"))}
    assert listed["esc"]["state"] == "aborted"
    assert json.loads(control_ok(cli, "status", "esc", "--json"))["state"] == "aborted"


@pytest.mark.timeout(900)
def test_a_resume_point_survives_a_run_that_crashes_before_saving(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    """save-stop (checkpoint A), relaunch (resumes from A), crash before any save,
    relaunch again: it resumes from A, not from step 0."""
    out = tmp_path / "out"
    args = ("--step-time", "0.05", "--output-dir", str(out))
    first = launch(procs, jobs_dir, "keep", PLAIN, *args, opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, "keep", first)
    control_ok(cli, "save-stop", "keep", "--wait", "--timeout", str(TIMEOUT))
    assert first.wait(TIMEOUT) == EXIT_STOPPED
    record = read(jobs_dir, "keep", "job.json")
    a, step = record["last_checkpoint"], record["final_step"]
    assert Path(a).exists()
    crash = launch(procs, jobs_dir, "keep", PLAIN, *args, "--crash-at", str(step + 3), opts=("--nproc-per-node", "2"), name="crash")
    assert crash.wait(TIMEOUT) not in (0, EXIT_STOPPED), crash.output()[-3000:]
    assert f"resumed from {a}" in crash.output()
    dry = cli("launch", "--dry-run", "--jobs-dir", str(jobs_dir), "--job-id", "keep", str(PLAIN))
    assert dry.code == 0 and f"resume from {a}" in dry.out, dry.out
    again = launch(procs, jobs_dir, "keep", PLAIN, *args, "--max-steps", str(step + 5), opts=("--nproc-per-node", "2"), name="again")
    assert again.wait(TIMEOUT) == 0, again.output()[-3000:]
    assert f"resumed from {a} at step {step}" in again.output()
    rerun = read(jobs_dir, "keep", "job.json")
    assert rerun["restarts"] == 2 and rerun["resume_from"] == a and rerun["state"] == "finished"
    listed = {j["job_id"]: j for j in json.loads(control_ok(cli, "list", "--all", "--json"))}
    assert listed["keep"]["restarts"] == 2 and listed["keep"]["resumed_from"] == a


@pytest.mark.timeout(600)
def test_a_resumed_run_is_listed_at_its_resume_step_at_once_and_its_rate_counts_only_its_own_steps(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    """Run 1 saves and stops at step S; run 2 resumes from S. Each step sleeps 0.02 s, so
    no honest rate exceeds 50 steps/s. From the relaunch on, every row `list` shows is at
    S or beyond (never 0/N, never blank while it starts), every rate in status.json and in
    metrics.json is at most 60, and every ETA at least the steps left over 60 per second.
    Before, the first rate after the resume read S steps in a second or two."""
    out = tmp_path / "out"
    args = ("--step-time", "0.02", "--output-dir", str(out))
    first = launch(procs, jobs_dir, "rate", PLAIN, *args, opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, "rate", first, min_step=200)
    control_ok(cli, "save-stop", "rate", "--wait", "--timeout", str(TIMEOUT))
    assert first.wait(TIMEOUT) == EXIT_STOPPED
    s = read(jobs_dir, "rate", "job.json")["final_step"]
    assert s >= 200
    end = s + 150
    again = launch(procs, jobs_dir, "rate", PLAIN, *args, "--max-steps", str(end), opts=("--nproc-per-node", "2"), name="again")
    rows: list[tuple[str, int | None]] = []
    seen: list[tuple[int, float | None, float | None]] = []

    def watch() -> bool:
        row = next((r for r in json.loads(control_ok(cli, "list", "--json")) if r["job_id"] == "rate"), None)
        if row is not None:
            rows.append((row["state"], row["step"]))
        st = read(jobs_dir, "rate", "status.json")
        if st.get("restarts") == 1 and st.get("step") is not None:
            seen.append((st["step"], st.get("steps_per_second"), st.get("eta_seconds")))
        return again.popen.poll() is not None

    wait_for(watch, timeout=TIMEOUT, interval=0.1, what="the resumed run to end")
    assert again.wait(TIMEOUT) == 0, again.output()[-3000:]
    assert rows and all(step is not None and step >= s for _, step in rows), rows
    rates = [r for _, r, _ in seen if r is not None]
    assert rates and max(rates) <= 60, seen
    assert all(eta is None or eta >= (end - step) / 60 - 1 for step, _, eta in seen), seen
    history = read(jobs_dir, "rate", "metrics.json")["series"]["steps_per_second"]
    after = [v for step, v in zip(history["step"], history["value"], strict=True) if step > s and v is not None]
    assert after and max(after) <= 60, after


@pytest.mark.timeout(600)
def test_a_launcher_killed_by_sigkill_leaves_no_orphans(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    """kill -9 of the launcher: torchrun dies with it (parent death signal), the workers
    see it and end within a few seconds, and rank 0 records why."""
    job = launch(procs, jobs_dir, "orphan", PLAIN, "--step-time", "0.05", "--output-dir", str(tmp_path / "out"), opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, "orphan", job)
    seen = [p for p in job.tree.track() if p.pid != job.pid]  # torchrun and the workers
    assert len(seen) >= 3, seen
    os.kill(job.pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert job.wait(30) == -signal.SIGKILL  # (reaped, as its shell would)
    assert_all_gone(seen, timeout=15)
    assert time.monotonic() - t0 < 10, "the workers outlived their launcher"
    status = json.loads(control_ok(cli, "status", "orphan", "--json"))
    # the root cause is the launcher's death, whichever rank noticed it first (the others
    # may then fail in a collective and record that as rank 0's own error)
    assert status["state"] == "failed" and status["failure"]["type"] == "LauncherGone", status
    assert "launcher died" in status["failure"]["message"]
    listed = {j["job_id"]: j for j in json.loads(control_ok(cli, "list", "--all", "--json"))}
    assert listed["orphan"]["state"] == "failed"


@pytest.mark.timeout(600)
def test_worker_crash_fails_the_job(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    job = launch(
        procs, jobs_dir, "crash", PLAIN, "--step-time", "0.05", "--crash-at", "40", "--output-dir", str(tmp_path / "out"), opts=("--nproc-per-node", "2")
    )
    wait_running(jobs_dir, "crash", job, min_step=1)
    seen = job.tree.track()  # the launcher, torchrun, the workers
    code = job.wait(TIMEOUT)
    assert code != 0, job.output()[-3000:]
    assert "crashing at step 40" in job.output()
    record = read(jobs_dir, "crash", "job.json")
    assert record["state"] == "failed" and record["exit_code"] == code
    assert read(jobs_dir, "crash", "nodes/0.json")["state"] == "failed"
    assert_all_gone(seen)
    # the root cause is rank 1's own exception, not rank 0 losing its peer
    assert record["failure"]["rank"] == 1 and record["failure"]["type"] == "RuntimeError", record
    status = json.loads(control_ok(cli, "status", "crash", "--json"))
    assert status["exit_code"] == code and status["failure"]["rank"] == 1 and "crashing at step 40" in status["failure"]["message"]
    shown = control_ok(cli, "status", "crash")
    assert "rank 1" in shown and "RuntimeError: rank 1: crashing at step 40" in shown
    # the launcher's end does not settle a failure away: list (without --all) shows it, and why
    [row] = [r for r in json.loads(control_ok(cli, "list", "--json")) if r["job_id"] == "crash"]
    assert row["state"] == "failed" and row["why"].startswith("rank 1 (") and "crashing at step 40" in row["why"], row


def test_no_control_runs_the_script_as_is(jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text(
        "import os, signal, subprocess, sys\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True)  # escapes the process group\n"
        "print('escaped', p.pid, flush=True)\n"
        "print('rank', os.environ['RANK'], 'launched', os.environ['FORGATHER_LAUNCHED'],"
        " 'usr1', signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN, 'argv', sys.argv[1:])\n"
        "sys.exit(3)\n"
    )
    job = launch(procs, jobs_dir, "plain-exit", script, "a b", "--x", opts=("--no-control",))
    assert job.wait(TIMEOUT) != 0
    assert "launched 0 usr1 True argv ['a b', '--x']" in job.output()
    escaped = int(re.search(r"escaped (\d+)", job.output()).group(1))
    wait_for(lambda: gone(escaped), timeout=15, what=f"the escaped grandchild {escaped} to be killed")
    assert read(jobs_dir, "plain-exit", "job.json")["state"] == "failed"
