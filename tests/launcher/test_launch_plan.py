"""The launcher's pure parts: environments, the plan, the rendered dry run (golden
files), and every refusal that must happen before a process starts.

Golden files live in tests/golden/launch/; regenerate them after an intended change
with ``FORGATHER_UPDATE_GOLDEN=1 pytest tests/launcher/test_launch_plan.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.cli import run_cli
from support.env import base_env
from support.paths import REPO

from forgather_control.core.knobs import carry_from
from forgather_control.core.records import CheckpointRecord, KnobCarry, KnobSetting, Scheduler
from forgather_control.launcher import (
    LaunchConfig,
    LaunchError,
    LocalEnvironment,
    SlurmEnvironment,
    TorchrunEnvironment,
    detect,
    make_plan,
    render_plan,
)
from forgather_control.launcher.environments import slurm_master_port
from forgather_control.launcher.plan import child_env

GOLDEN = REPO / "tests" / "golden" / "launch"
UPDATE = os.environ.get("FORGATHER_UPDATE_GOLDEN") == "1"
JOBS = "/shared/jobs"
PY = "python3"

#: What `srun --ntasks-per-node=1` sets on the third node of a 7-node allocation.
SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "node[01-04,07],gpu-a[1-2]",
    "SLURM_STEP_NODELIST": "node[01-04,07],gpu-a[1-2]",
    "SLURM_NNODES": "7",
    "SLURM_STEP_NUM_NODES": "7",
    "SLURM_NODEID": "2",
    "SLURM_PROCID": "2",
    "SLURM_STEP_TASKS_PER_NODE": "1(x7)",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_NAME": "forgather",
    "HOME": "/home/u",
}


def golden(name: str, text: str) -> None:
    """Compare with the golden file; only FORGATHER_UPDATE_GOLDEN=1 writes one (a missing
    file fails everywhere: a test that writes its own expectation cannot fail)."""
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    elif not path.exists():
        pytest.fail(f"golden file {path} is missing; create it with FORGATHER_UPDATE_GOLDEN=1 pytest {Path(__file__).relative_to(REPO)} and review it")
    assert text == path.read_text(), f"{name} changed; if intended, rerun with FORGATHER_UPDATE_GOLDEN=1 and review"


def plan_for(env: dict[str, str], **options):
    options.setdefault("script", "train.py")
    return make_plan(LaunchConfig(**options), env, python=PY, jobs_dir=JOBS)


# -- environments ---------------------------------------------------------------------
def test_detection_order() -> None:
    assert isinstance(detect({}), LocalEnvironment)
    assert isinstance(detect({"SLURM_JOB_ID": "1"}), SlurmEnvironment)
    # inside torchrun wins over SLURM: torchrun under srun must still refuse to nest
    assert isinstance(detect({"SLURM_JOB_ID": "1", "TORCHELASTIC_RUN_ID": "x"}), TorchrunEnvironment)
    assert isinstance(detect({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}), TorchrunEnvironment)


def test_refuses_to_nest_inside_torchrun() -> None:
    with pytest.raises(LaunchError) as err:
        plan_for({"TORCHELASTIC_RUN_ID": "abc", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    msg = str(err.value)
    assert "already running inside torchrun" in msg and "TORCHELASTIC_RUN_ID=abc" in msg and "RANK=1" in msg


def test_slurm_placement() -> None:
    plan = plan_for(SLURM_ENV, nproc_per_node="4", requeue=True)
    p = plan.placement
    assert (p.environment, p.job_id, p.nnodes, p.node_rank, p.master_addr) == ("slurm", "slurm-4242", "7", 2, "node01")
    assert p.master_port == slurm_master_port("4242") == 24242
    assert p.scheduler.type == "slurm" and p.scheduler.slurm_job_id == "4242"
    assert p.scheduler.nodes is not None and p.scheduler.nodes[-2:] == ["gpu-a1", "gpu-a2"]
    assert p.requeue_argv is None  # only node 0 requeues
    node0 = plan_for({**SLURM_ENV, "SLURM_NODEID": "0", "SLURM_PROCID": "0"}, requeue=True)
    assert node0.placement.requeue_argv == ("scontrol", "requeue", "4242")


def test_slurm_array_and_restart() -> None:
    env = {**SLURM_ENV, "SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "8", "SLURM_RESTART_COUNT": "2"}
    plan = plan_for(env)
    assert plan.job_id == "slurm-4242_8"
    assert plan.restarts == 2 and plan.env["FORGATHER_RESTARTS"] == "2"
    assert plan.placement.scheduler.slurm_job_id == "4250"  # what squeue and scontrol know


@pytest.mark.parametrize(
    ("env", "options", "fragments"),
    [
        ({"SLURM_STEP_TASKS_PER_NODE": "2(x7)"}, {}, ["several launchers per node", "2(x7)", "--ntasks-per-node=1"]),
        ({"SLURM_STEP_ID": None}, {}, ["batch shell", "7 nodes", "srun --ntasks-per-node=1"]),
        ({}, {"nnodes": "2"}, ["--nnodes 2 disagrees with SLURM", "7 node(s)", "SLURM_STEP_NODELIST=node[01-04,07],gpu-a[1-2]"]),
        ({}, {"node_rank": 0}, ["--node-rank 0 disagrees with SLURM_NODEID=2"]),
        ({"SLURM_STEP_NODELIST": "node[1-"}, {}, ["cannot read SLURM's node list", "node[1-"]),
        ({}, {"rdzv_backend": "c10d"}, ["drop", "--rdzv-backend"]),
    ],
)
def test_slurm_refusals_say_what_slurm_reports(env: dict, options: dict, fragments: list[str]) -> None:
    full = {**SLURM_ENV, **{k: v for k, v in env.items() if v is not None}}
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
    with pytest.raises(LaunchError) as err:
        plan_for(full, **options)
    for f in fragments:
        assert f in str(err.value)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"script": None}, "exactly one of SCRIPT or -m MODULE"),
        ({"script": "a.py", "module": "b"}, "exactly one of SCRIPT or -m MODULE"),
        ({"script": None, "module": "a/b"}, "not a Python module name"),
        ({"nproc_per_node": "0"}, "--nproc-per-node '0' is not valid"),
        ({"nproc_per_node": "two"}, "--nproc-per-node 'two' is not valid"),
        ({"nnodes": "x"}, "--nnodes 'x' is not valid"),
        ({"nnodes": "4:2"}, "MIN is larger than MAX"),
        ({"nnodes": "2", "node_rank": 2}, "--node-rank 2 is not below --nnodes 2"),
        ({"node_rank": -1}, "negative"),
        ({"master_port": 70000}, "--master-port 70000 is not a TCP port"),
        ({"control_port": -1}, "--control-port -1 is not a TCP port"),
        ({"grace": 0}, "--grace 0 must be a positive number"),
        ({"job_id": "../evil"}, "--job-id: invalid job id '../evil'"),
        ({"standalone": True, "nnodes": "2"}, "--standalone runs one node"),
        ({"script_knobs": True, "control": False}, "--script-knobs needs control"),
    ],
)
def test_bad_options_are_refused(options: dict, fragment: str) -> None:
    options = {"script": "train.py", **options}
    with pytest.raises(LaunchError) as err:
        LaunchConfig(**options)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"nnodes": "2", "master_addr": "h", "job_id": "j"}, "needs --node-rank"),
        ({"nnodes": "2", "node_rank": 0, "job_id": "j"}, "needs --master-addr"),
        ({"nnodes": "2", "node_rank": 0, "master_addr": "h"}, "same --job-id"),
        ({"requeue": True}, "--requeue needs SLURM"),
    ],
)
def test_local_refusals(options: dict, fragment: str) -> None:
    with pytest.raises(LaunchError) as err:
        plan_for({}, **options)
    assert fragment in str(err.value)


def test_local_single_node_uses_a_free_port() -> None:
    plan = plan_for({}, job_id="j", nproc_per_node="2")
    assert "--standalone" in plan.argv and "--master-port" not in plan.argv  # no fixed 29500 clash
    assert plan.placement.scheduler == Scheduler(type="local")


def test_worker_env_and_child_env_carry_no_token() -> None:
    plan = plan_for({}, job_id="j", control_host="0.0.0.0", control_port=9000)
    assert plan.env["FORGATHER_CONTROL_HOST"] == "0.0.0.0" and plan.env["FORGATHER_CONTROL_PORT"] == "9000"
    env = child_env(plan, {"FORGATHER_TOKEN": "s3cret", "FORGATHER_RESUME_FROM": "/old", "FORGATHER_DETACHED": "1", "PATH": "/bin"})
    assert "FORGATHER_TOKEN" not in env and "FORGATHER_RESUME_FROM" not in env and env["PATH"] == "/bin"
    assert "FORGATHER_DETACHED" not in env  # the launcher's own: its workers' output is not bounded by it
    assert not any("TOKEN" in k for k in plan.env)


def test_history_reaches_the_workers() -> None:
    plan = plan_for({}, job_id="j").with_history(restarts=3, resume_from="/ck/checkpoint-40")
    assert plan.env["FORGATHER_RESTARTS"] == "3" and plan.env["FORGATHER_RESUME_FROM"] == "/ck/checkpoint-40"
    assert "FORGATHER_KNOBS" not in plan.env  # nothing carried: the script's values


def test_knobs_carried_from_the_last_run_reach_the_workers_and_an_inherited_value_does_not() -> None:
    carry = KnobCarry(values={"lr_scale": 0.5, "max_steps": 20000}, at_checkpoint={"lr_scale": 1.0})
    plan = plan_for({}, job_id="j").with_history(restarts=1, resume_from="/ck/checkpoint-40", knobs=carry)
    assert json.loads(plan.env["FORGATHER_KNOBS"]) == {"values": {"lr_scale": 0.5, "max_steps": 20000}, "at_checkpoint": {"lr_scale": 1.0}}
    assert plan.with_history(restarts=2, resume_from=None).env.get("FORGATHER_KNOBS") is None
    fresh = plan_for({}, job_id="j")
    assert "FORGATHER_KNOBS" not in child_env(fresh, {"FORGATHER_KNOBS": '{"values":{"lr_scale":9}}', "PATH": "/bin"})
    uncontrolled = plan_for({}, job_id="j", control=False).with_history(restarts=1, resume_from=None, knobs=carry)
    assert "FORGATHER_KNOBS" not in uncontrolled.env  # no Controller to read it


# -- golden dry-run plans ------------------------------------------------------------------
CASES = {
    "local.txt": ({}, {"job_id": "demo", "nproc_per_node": "2", "script_args": ("--lr", "1e-4", "--name", "two words")}),
    "local-module-no-control.txt": ({}, {"script": None, "module": "mypkg.train", "job_id": "demo", "control": False, "grace": 30}),
    "multinode-node1.txt": (
        {},
        {"job_id": "two-nodes", "nproc_per_node": "2", "nnodes": "2", "node_rank": 1, "master_addr": "10.0.0.1", "master_port": 29600, "control_port": 7000},
    ),
    "multinode-c10d.txt": (
        {},
        {"rdzv_id": "run7", "nnodes": "1:4", "rdzv_backend": "c10d", "rdzv_endpoint": "head:29400", "max_restarts": 3},
    ),
    "local-guards.txt": ({}, {"job_id": "guarded", "nproc_per_node": "2", "guards": ("nan:abort", "spike:save,window=5,times=2;slowdown:alert")}),
    "local-script-knobs.txt": ({}, {"job_id": "relaunched", "nproc_per_node": "2", "script_knobs": True}),
    "slurm-node2.txt": (SLURM_ENV, {"nproc_per_node": "gpu", "requeue": True, "script_args": ("--output-dir", "out")}),
    "slurm-node0-requeue.txt": ({**SLURM_ENV, "SLURM_NODEID": "0", "SLURM_PROCID": "0"}, {"nproc_per_node": "4", "requeue": True, "master_addr": "127.0.0.1"}),
    "slurm-array-restarted.txt": (
        {
            **SLURM_ENV,
            "SLURM_JOB_ID": "4250",
            "SLURM_ARRAY_JOB_ID": "4242",
            "SLURM_ARRAY_TASK_ID": "8",
            "SLURM_RESTART_COUNT": "1",
            "SLURM_JOB_NODELIST": "n1",
            "SLURM_STEP_NODELIST": "n1",
            "SLURM_NODEID": "0",
            "SLURM_STEP_TASKS_PER_NODE": "1",
        },
        {"requeue": True},
    ),
}


#: the plans of a relaunch whose last run changed knobs
RELAUNCHED = ("slurm-array-restarted.txt", "local-script-knobs.txt")


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_plan_golden(name: str) -> None:
    env, options = CASES[name]
    plan = plan_for(env, **options)
    if name in RELAUNCHED:
        # the last run: lr_scale and temperature set, saved at step 120 with both; lr is not carried
        last = [
            KnobSetting(name="lr_scale", kind="float", value=0.5, default=1.0, origin="set", step=100),
            KnobSetting(name="temperature", kind="float", value=2.0, default=1.0, origin="resumed"),
            KnobSetting(name="lr", kind="float", value=5e-5, default=1e-4, origin="set", carry=False),
            KnobSetting(name="eval_every", kind="int", value=500, default=500, origin="script"),
        ]
        point = CheckpointRecord(path="/shared/out/checkpoint-120", step=120, knobs={"lr_scale": 0.5, "temperature": 2.0, "lr": 5e-5, "eval_every": 500})
        knobs = carry_from(last, point, script=plan.config.script_knobs)
        plan = plan.with_history(restarts=1, resume_from="/shared/out/checkpoint-120", resume_step=120, knobs=knobs)
    golden(name, render_plan(plan))
    golden(name.replace(".txt", ".json"), json.dumps(plan.describe(), indent=1, sort_keys=True) + "\n")


# -- through the real command line -------------------------------------------------------
def test_cli_dry_run_golden(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hello')\n")
    res = run_cli(
        "launch",
        "--dry-run",
        "--jobs-dir",
        str(tmp_path / "jobs"),
        "--job-id",
        "cli-demo",
        "--nproc_per_node",
        "2",
        str(tmp_path / "train.py"),
        "--grace",
        "5",
        "--",
        "x",
        env=base_env(FORGATHER_TOKEN="never-shown"),
    )
    assert res.code == 0, res.err
    python = res.out.split("  command:\n    ", 1)[1].split(" ", 1)[0]  # the CLI's own interpreter
    text = res.out.replace(python, "{python}").replace(str(tmp_path), "{tmp}")
    golden("cli-dry-run.txt", text)
    assert "never-shown" not in res.out + res.err
    assert not (tmp_path / "jobs").exists(), "a dry run must not touch the jobs directory"


@pytest.mark.slow  # a real `forgather launch` (that refuses)
def test_cli_missing_script_fails_before_anything_starts(tmp_path: Path) -> None:
    res = run_cli("launch", "--jobs-dir", str(tmp_path / "jobs"), str(tmp_path / "nope.py"), env=base_env())
    assert res.code == 2
    assert "error: script" in res.err and "nope.py" in res.err and "not found" in res.err and "Traceback" not in res.err
    assert not (tmp_path / "jobs").exists()


@pytest.mark.slow  # a real `forgather launch` (that refuses)
def test_cli_missing_module(tmp_path: Path) -> None:
    res = run_cli("launch", "--jobs-dir", str(tmp_path / "jobs"), "-m", "no_such_module_here.train", env=base_env())
    assert res.code == 2 and "module 'no_such_module_here.train'" in res.err and "Traceback" not in res.err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--nproc-per-node", "0"], "--nproc-per-node '0' is not valid"),
        (["--master-port", "abc"], "Invalid value for '--master-port'"),
        (["--nnodes", "2"], "needs --node-rank"),
        (["--requeue"], "--requeue needs SLURM"),
        (["--grace", "-1"], "--grace -1"),
    ],
)
@pytest.mark.slow  # a real `forgather launch` (that refuses)
def test_cli_bad_options(tmp_path: Path, args: list[str], fragment: str) -> None:
    (tmp_path / "train.py").write_text("print('hello')\n")
    res = run_cli("launch", "--jobs-dir", str(tmp_path / "jobs"), *args, str(tmp_path / "train.py"), env=base_env())
    assert res.code == 2, (res.out, res.err)
    assert fragment in res.err and "Traceback" not in res.err
    assert not (tmp_path / "jobs").exists()


@pytest.mark.parametrize(
    ("guards", "fragment"),
    [
        (("nan:boom",), "--guard: guard 'nan:boom': unknown action 'boom'; actions: alert, save, save-stop, stop, abort, pause"),
        (("nan:abort", "nan:save"), "two nan guards"),
        (("stall:save",), "a stall guard may only alert or abort"),
        (("spike:save,factor=0.5",), "factor='0.5' is out of range"),
    ],
)
def test_bad_guards_are_refused_naming_the_rule(guards: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(LaunchError) as err:
        LaunchConfig(script="train.py", guards=guards)
    assert fragment in str(err.value)
    with pytest.raises(LaunchError, match="--guard needs control"):
        LaunchConfig(script="train.py", guards=("nan:abort",), control=False)


def test_guards_reach_every_rank_canonically() -> None:
    plan = plan_for({}, job_id="j", guards=("nan:abort", " spike:SAVE,times=2"))
    assert plan.env["FORGATHER_GUARDS"] == "nan:abort,metric=loss;spike:save,factor=3,window=20,times=2,metric=loss"
    assert plan.with_history(restarts=1, resume_from=None).env["FORGATHER_GUARDS"] == plan.env["FORGATHER_GUARDS"]
    assert "FORGATHER_GUARDS" not in plan_for({}, job_id="j").env  # defaults off


@pytest.mark.slow  # a real `forgather launch` (that refuses)
def test_cli_refuses_a_bad_guard_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hello')\n")
    jobs = str(tmp_path / "jobs")
    res = run_cli("launch", "--jobs-dir", jobs, "--guard", "nan:abort", "--guard", "spike:explode", str(tmp_path / "train.py"), env=base_env())
    assert res.code == 2, (res.out, res.err)
    assert "error: --guard: guard 'spike:explode': unknown action 'explode'; actions: alert, save, save-stop, stop, abort, pause" in res.err
    assert "Traceback" not in res.err and "hello" not in res.out and not (tmp_path / "jobs").exists()
    res = run_cli("launch", "--jobs-dir", str(tmp_path / "jobs"), str(tmp_path / "train.py"), env=base_env(FORGATHER_GUARDS="nan:abort;loss:stop"))
    assert res.code == 2 and "error: FORGATHER_GUARDS: guard 'loss:stop': unknown kind 'loss'" in res.err and not (tmp_path / "jobs").exists()


@pytest.mark.slow  # a real `forgather launch` (that refuses)
def test_cli_refuses_to_nest(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hello')\n")
    env = base_env(TORCHELASTIC_RUN_ID="outer", RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    res = run_cli("launch", "--jobs-dir", str(tmp_path / "jobs"), str(tmp_path / "train.py"), env=env)
    assert res.code == 2 and "already running inside torchrun" in res.err


def test_cli_slurm_dry_run_from_the_environment(tmp_path: Path) -> None:
    """The real CLI reads SLURM's variables itself (no cluster needed for a dry run)."""
    (tmp_path / "train.py").write_text("print('hello')\n")
    env = base_env(**{**SLURM_ENV, "SLURM_NODEID": "0", "SLURM_PROCID": "0"})
    res = run_cli("launch", "--dry-run", "--jobs-dir", str(tmp_path / "jobs"), "--requeue", str(tmp_path / "train.py"), env=env)
    assert res.code == 0, res.err
    assert "job id:         slurm-4242" in res.out and "--master-addr node01 --master-port 24242" in res.out
    assert "then scontrol requeue 4242" in res.out


# -- the sbatch template's srun line -------------------------------------------------------
def test_sbatch_template_builds_one_launcher_per_node(tmp_path: Path) -> None:
    """Run slurm/train.sbatch with a stand-in `srun` that prints its argv: the template's
    logic (variables -> options, argv never re-split) is pinned without a cluster; the
    real thing runs in tests/launcher/test_slurm.py."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/bash\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\n')
    (fake / "srun").chmod(0o755)
    env = base_env(
        PATH=f"{fake}:{os.environ['PATH']}",
        SLURM_JOB_ID="77",
        SLURM_JOB_NODELIST="n[1-2]",
        FORGATHER_NPROC_PER_NODE="2",
        FORGATHER_MASTER_ADDR="127.0.0.1",
        FORGATHER_GRACE="45",
    )
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "train.sbatch"), "train.py", "--name", "two words", "*"], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert "forgather: job slurm-77 on n[1-2] (restart 0)" in proc.stdout
    golden("sbatch-srun-argv.txt", "".join(line for line in proc.stdout.splitlines(True) if line.startswith("[")))
    env["FORGATHER_REQUEUE"] = "0"
    proc = subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch"), "-m", "pkg.train"], env=env, capture_output=True, text=True, timeout=30)
    assert "[--no-requeue]" in proc.stdout and "[-m]\n[pkg.train]" in proc.stdout
    proc = subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage: sbatch" in proc.stderr
