"""A relaunch starts with the job's last knob values (issue 22): the launcher reads the
last run's status.json ``knobs`` and its resume point's knob values and gives every
rank the same FORGATHER_KNOBS; ``--script-knobs`` starts from the script's values. The
records without torchrun first, then a real two-rank job set, save-stopped and
relaunched under ``forgather launch``."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest
from support.cli import run_cli
from support.env import base_env
from support.launcher import launch, wait_running
from support.processes import Procs
from support.records import read_record

from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.checkpoints import Scope
from forgather_control.core.outcome import EXIT_STOPPED
from forgather_control.launcher import LaunchConfig, LaunchError, make_plan
from forgather_control.launcher.records import JobRecords, read_previous

SLURM = {
    "SLURM_JOB_ID": "901",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "n[1-2]",
    "SLURM_STEP_NODELIST": "n[1-2]",
    "SLURM_NODEID": "0",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}

#: The knobs of a run a person changed: lr_scale set at step 40, temperature carried from
#: the run before, lr (never carried: its changes are lr_scale's) and a script's value.
LAST_KNOBS = [
    {"name": "lr_scale", "kind": "float", "value": 0.5, "default": 1.0, "above": 0.0, "origin": "set", "step": 40, "command_id": "c-1"},
    {"name": "temperature", "kind": "float", "value": 2.0, "default": 1.0, "origin": "resumed"},
    {"name": "lr", "kind": "float", "value": 0.05, "default": 0.1, "above": 0.0, "origin": "set", "step": 40, "carry": False},
    {"name": "eval_every", "kind": "int", "value": 100, "default": 100, "origin": "script"},
]


def plan(jobs: Path, env: dict | None = None, **options):
    options.setdefault("script", "train.py")
    return make_plan(LaunchConfig(**options), env or {}, python="python3", jobs_dir=str(jobs))


def start(jobs: Path, p, scope: Scope) -> JobRecords:
    """What ``forgather launch`` does before torchrun starts: read the last run, plan, claim, record."""
    paths = JobPaths(jobs, p.job_id)
    prev = read_previous(paths, p.placement, node_rank=p.node_rank, scope=scope, script_knobs=p.config.script_knobs)
    p = p.with_history(restarts=prev.restarts, resume_from=prev.resume_from, resume_step=prev.resume_step, knobs=prev.knobs)
    rec = JobRecords(paths, p)
    rec.claim(prev)
    rec.start(prev, argv=["forgather", "launch", "train.py"], cwd=str(jobs.parent))
    return rec


def ended_run(tmp_path: Path, job_id: str = "k", env: dict | None = None, **options) -> tuple[Path, Path, Scope]:
    """A first run that ended stopped at step 40, its checkpoint saved after the set."""
    jobs, scope = tmp_path / "jobs", Scope(str(tmp_path), os.getuid())
    ckpt = tmp_path / "out" / "checkpoint-40"
    ckpt.mkdir(parents=True)
    first = start(jobs, plan(jobs, env, job_id=None if env else job_id, **options), scope)
    point = {"path": str(ckpt), "step": 40, "saved_at": time.time(), "knobs": {"lr_scale": 0.5, "temperature": 2.0, "lr": 0.05, "eval_every": 100}}
    write_json_atomic(jobs / first.plan.job_id / "status.json", {"state": "stopped", "restarts": 0, "step": 40, "resume_point": point, "knobs": LAST_KNOBS})
    first.finish("stopped", EXIT_STOPPED)
    return jobs, ckpt, scope


# -- the records: what the launcher reads and gives ---------------------------------------
def test_a_relaunch_gives_every_rank_the_knobs_a_person_set_and_their_values_at_the_checkpoint(tmp_path: Path) -> None:
    jobs, ckpt, scope = ended_run(tmp_path)
    again = start(jobs, plan(jobs, job_id="k"), scope)
    carried = json.loads(again.plan.env["FORGATHER_KNOBS"])
    assert carried == {"values": {"lr_scale": 0.5, "temperature": 2.0}, "at_checkpoint": {"lr_scale": 0.5, "temperature": 2.0, "lr": 0.05, "eval_every": 100}}
    assert again.plan.env["FORGATHER_RESUME_FROM"] == str(ckpt)
    job = read_record(jobs, "k", "job.json")
    assert job["knobs"] == carried  # what this run was given: the other nodes give the same
    assert job["checkpoints"][-1]["knobs"]["lr_scale"] == 0.5  # kept in the history for a later relaunch
    again.finish("stopped", EXIT_STOPPED)


def test_script_knobs_carries_no_value_only_the_checkpoints_to_come_back_from(tmp_path: Path) -> None:
    jobs, _, scope = ended_run(tmp_path)
    again = start(jobs, plan(jobs, job_id="k", script_knobs=True), scope)
    carried = json.loads(again.plan.env["FORGATHER_KNOBS"])
    assert carried == {"at_checkpoint": {"lr_scale": 0.5, "temperature": 2.0, "lr": 0.05, "eval_every": 100}}
    assert read_record(jobs, "k", "job.json")["knobs"] == carried
    again.finish("stopped", EXIT_STOPPED)


def test_a_run_that_ends_before_declaring_its_knobs_passes_on_what_it_was_given(tmp_path: Path) -> None:
    """Run 2 is given the knobs and dies loading its model (its status names no knob):
    run 3 still starts from them, and from the checkpoint's values."""
    jobs, ckpt, scope = ended_run(tmp_path)
    second = start(jobs, plan(jobs, job_id="k"), scope)
    write_json_atomic(jobs / "k" / "status.json", {"state": "failed", "restarts": 1, "error": "out of memory loading the model"})
    second.finish("failed", 1)
    third = start(jobs, plan(jobs, job_id="k"), scope)
    assert third.plan.restarts == 2 and third.plan.resume_from == str(ckpt)
    assert json.loads(third.plan.env["FORGATHER_KNOBS"])["values"] == {"lr_scale": 0.5, "temperature": 2.0}
    third.finish("stopped", EXIT_STOPPED)


def test_a_node_that_starts_after_node_0_began_the_run_gives_its_ranks_what_node_0_gave(tmp_path: Path) -> None:
    """Under SLURM node 1's launcher may read the folder once node 0's run is on (its
    rank 0 may even have rewritten status.json): it takes node 0's carry from job.json,
    so every rank of the job starts alike; with --script-knobs on node 0, the same."""
    jobs, _, scope = ended_run(tmp_path, env={**SLURM}, requeue=True)
    env = {**SLURM, "SLURM_RESTART_COUNT": "1"}
    for script_knobs in (False, True):
        if script_knobs:  # the requeue of the requeue, launched with --script-knobs everywhere
            env = {**SLURM, "SLURM_RESTART_COUNT": "2"}
        node0 = start(jobs, plan(jobs, env, requeue=True, script_knobs=script_knobs), scope)
        write_json_atomic(jobs / "slurm-901" / "status.json", {"state": "running", "restarts": node0.plan.restarts, "step": 41, "knobs": []})
        node1 = read_previous(JobPaths(jobs, "slurm-901"), plan(jobs, {**env, "SLURM_NODEID": "1"}).placement, node_rank=1, scope=scope)
        assert node1.knobs == node0.plan.knobs and node1.knobs is not None, script_knobs
        assert bool(node1.knobs.values) is not script_knobs
        write_json_atomic(jobs / "slurm-901" / "status.json", {"state": "requeued", "restarts": node0.plan.restarts, "step": 41, "knobs": LAST_KNOBS})
        node0.finish("requeued", 0)


def test_a_status_whose_knobs_are_not_a_record_stops_the_launch(tmp_path: Path) -> None:
    jobs, _, scope = ended_run(tmp_path)
    status = json.loads((jobs / "k" / "status.json").read_text())
    for bad in ([{"name": "x" * 65, "kind": "float", "value": 2.0, "origin": "set"}], [{"name": "t", "kind": "float", "value": "NaN", "origin": "set"}]):
        write_json_atomic(jobs / "k" / "status.json", {**status, "knobs": bad})
        with pytest.raises(LaunchError) as err:
            start(jobs, plan(jobs, job_id="k"), scope)
        assert "holds a corrupt record" in str(err.value)


def test_the_dry_run_says_where_the_knobs_start(tmp_path: Path) -> None:
    """``forgather launch --dry-run`` of a relaunch, as typed: the knobs line and the
    variable; with --script-knobs, the script's values (the checkpoint's kept to come back from)."""
    jobs, _, _ = ended_run(tmp_path)
    (tmp_path / "train.py").write_text("print('hello')\n")
    env = base_env(jobs, FORGATHER_OUTPUT_DIR=str(tmp_path))
    res = run_cli("launch", "--dry-run", "--jobs-dir", str(jobs), "--job-id", "k", str(tmp_path / "train.py"), env=env)
    assert res.code == 0, res.err
    assert "  knobs:          the job's last: lr_scale=0.5, temperature=2 (--script-knobs for the script's)\n" in res.out
    assert 'FORGATHER_KNOBS=\'{"values":{"lr_scale":0.5,"temperature":2.0},' in res.out
    res = run_cli("launch", "--dry-run", "--script-knobs", "--jobs-dir", str(jobs), "--job-id", "k", str(tmp_path / "train.py"), env=env)
    assert res.code == 0, res.err
    assert "  knobs:          the script's values (--script-knobs)\n" in res.out
    assert 'FORGATHER_KNOBS=\'{"at_checkpoint":' in res.out and '"values"' not in res.out
    res = run_cli("launch", "--dry-run", "--script-knobs", "--no-control", "--jobs-dir", str(jobs), "--job-id", "k", str(tmp_path / "train.py"), env=env)
    assert res.code == 2 and "--script-knobs needs control" in res.err, res


# -- a real relaunch -------------------------------------------------------------------------
#: A two-rank DDP loop with a user knob and a scheduled learning rate; each rank writes,
#: at its run's first step, the temperature it reads and its rate over the script's own
#: schedule at that step (0.1 / (1 + 0.01 s)) to ``--seen/run<R>-rank<r>.json``.
KNOB_LOOP = textwrap.dedent(
    """
    import argparse, json, os, time
    from pathlib import Path
    import torch, torch.distributed as dist
    from torch import nn
    from forgather_control.callback import Controller, resume_from

    p = argparse.ArgumentParser()
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seen", required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = lambda s: 1.0 / (1.0 + 0.01 * s)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start = 0
    ckpt = resume_from()
    if ckpt:  # the optimizer and scheduler come back first; the knobs are declared after
        state = torch.load(ckpt, weights_only=True)
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
    with Controller(max_steps=args.max_steps) as ctl:
        temperature = ctl.knob("temperature", 1.0, min=0.0, help="the sampling temperature")
        ctl.optimizer(opt, sched)
        for step in range(start + 1, args.max_steps + 1):
            x = torch.randn(8, 4)
            loss = nn.functional.mse_loss(model(x) * temperature.value, x.sum(dim=1, keepdim=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            time.sleep(0.02)
            if step == start + 1:
                seen = {"step": step, "temperature": temperature.value, "scale": opt.param_groups[0]["lr"] / (0.1 * schedule(sched.last_epoch))}
                Path(args.seen, f"run{os.environ['FORGATHER_RESTARTS']}-rank{rank}.json").write_text(json.dumps(seen))
            act = ctl.step(step, {"loss": float(loss.detach())})
            if act.save:
                path = os.path.join(args.output_dir, f"checkpoint-{step}.pt")
                if rank == 0:
                    os.makedirs(args.output_dir, exist_ok=True)
                    state = {"model": model.module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step}
                    torch.save(state, path + ".tmp")
                    os.replace(path + ".tmp", path)
                dist.barrier()
                ctl.checkpoint_saved(path)
            if act.stop:
                break
    dist.destroy_process_group()
    """
)
TIMEOUT = 240.0


def started_with(seen: Path, run: int) -> list[dict]:
    return [json.loads((seen / f"run{run}-rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow  # forgather launch, torchrun
@pytest.mark.timeout(900)
def test_a_relaunch_starts_with_the_jobs_last_knob_values_and_script_knobs_with_the_scripts(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    """Run 1 is set temperature=2, lr_scale=0.5 and save-stopped. Run 2 (same job id)
    starts every rank at temperature 2 and at half the script's schedule (lr_scale moved
    from the checkpoint's 0.5: not halved twice), its status says "resumed" and the log
    says so. Run 3, with --script-knobs, resumes from the same checkpoint at the
    script's values: temperature 1 and the full schedule."""
    script, seen, out = tmp_path / "knob_loop.py", tmp_path / "seen", tmp_path / "out"
    script.write_text(KNOB_LOOP)
    seen.mkdir()
    args = ("--output-dir", str(out), "--seen", str(seen))
    first = launch(procs, jobs_dir, "carry", script, *args, opts=("--nproc-per-node", "2"))
    wait_running(jobs_dir, "carry", first)
    r = cli("control", "set", "carry", "temperature=2", "lr_scale=0.5", "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT)
    assert r.code == 0 and "temperature 1 -> 2" in r.out and "lr_scale 1 -> 0.5" in r.out, r
    r = cli("control", "save-stop", "carry", "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT)
    assert r.code == 0, r
    assert first.wait(TIMEOUT) == EXIT_STOPPED, first.output()[-4000:]
    assert started_with(seen, 0) == [{"step": 1, "temperature": 1.0, "scale": pytest.approx(1.0)}] * 2
    record = read_record(jobs_dir, "carry", "job.json")
    ckpt, step = record["last_checkpoint"], record["final_step"]
    assert record["checkpoints"][-1]["knobs"]["lr_scale"] == 0.5, record["checkpoints"]

    again = launch(procs, jobs_dir, "carry", script, *args, "--max-steps", str(step + 3), opts=("--nproc-per-node", "2"), name="again")
    assert again.wait(TIMEOUT) == 0, again.output()[-4000:]
    assert read_record(jobs_dir, "carry", "job.json")["resume_from"] == ckpt
    assert started_with(seen, 1) == [{"step": step + 1, "temperature": 2.0, "scale": pytest.approx(0.5)}] * 2
    knobs = {k["name"]: k for k in read_record(jobs_dir, "carry", "status.json")["knobs"]}
    assert (knobs["temperature"]["value"], knobs["temperature"]["origin"]) == (2.0, "resumed")
    assert (knobs["lr_scale"]["value"], knobs["lr_scale"]["origin"]) == (0.5, "resumed")
    assert knobs["lr"]["origin"] == "script" and knobs["lr"]["carry"] is False
    assert "knob temperature starts at 2.0, its value in the job's last run" in again.output(), again.output()[-4000:]
    shown = cli("control", "status", "carry")
    assert shown.code == 0 and "resumed" in shown.out, shown

    third = launch(procs, jobs_dir, "carry", script, *args, "--max-steps", str(step + 3), opts=("--nproc-per-node", "2", "--script-knobs"), name="script-knobs")
    assert third.wait(TIMEOUT) == 0, third.output()[-4000:]
    assert read_record(jobs_dir, "carry", "job.json")["resume_from"] == ckpt  # run 2 saved nothing
    assert started_with(seen, 2) == [{"step": step + 1, "temperature": 1.0, "scale": pytest.approx(1.0)}] * 2
    knobs = {k["name"]: k for k in read_record(jobs_dir, "carry", "status.json")["knobs"]}
    assert {name: (k["value"], k["origin"]) for name, k in knobs.items() if name != "lr"} == {"temperature": (1.0, "script"), "lr_scale": (1.0, "script")}
    assert "knob lr_scale starts at the script's 1 (the checkpoint was saved with 0.5)" in third.output(), third.output()[-4000:]
