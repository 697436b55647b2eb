"""`sbatch slurm/train.sbatch` on the project's real SLURM testbed (tests/slurm/cluster-up.sh).

One cluster with two fake nodes (n1, n2 on this host) serves the one-node and the
two-node case. Locally, a missing cluster skips these tests; under CI=true it fails
them (.ci/run starts the cluster). Every test owns its jobs dir (tmp_path: all "nodes"
are this machine) and cancels what it submitted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.env import base_env
from support.launcher import ABORT_OF_A_HUNG_JOB
from support.paths import FORGATHER, REPO
from support.paths import PLAIN_LAUNCH as PLAIN
from support.processes import dead_pid
from support.records import identity
from support.records import read_record as read
from support.services import require_service
from support.waiting import wait_for

from forgather_control.core.outcome import EXIT_ABORTED, EXIT_PREEMPTED, EXIT_STOPPED

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.xdist_group("slurm"),
]  # one worker: the tests share two nodes; in parallel, one job waited for another's nodes past its timeout

TEMPLATE = REPO / "slurm" / "train.sbatch"
HANG = REPO / "examples" / "launch" / "hang_train.py"
TIMEOUT = 240.0
LIVE = {"RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED", "REQUEUE_HOLD", "SIGNALING", "RESIZING", "UNKNOWN"}


def slurm_conf() -> Path:
    if os.environ.get("SLURM_CONF"):
        return Path(os.environ["SLURM_CONF"])
    return Path(os.environ.get("SLURM_TESTBED_DIR", "/tmp/forgather-slurm")) / "etc" / "slurm.conf"


def slurm_env(**extra: str) -> dict[str, str]:
    env = base_env(**extra)
    env["SLURM_CONF"] = str(slurm_conf())
    return env


def sbatch_env(**extra: str) -> dict[str, str]:
    """What the template needs to be submitted: the SLURM environment, and the installed
    ``forgather`` script as $FORGATHER (else the template finds it on PATH)."""
    exe = Path(sys.executable).with_name("forgather")
    return slurm_env(**extra, **({"FORGATHER": str(exe)} if exe.exists() else {}))


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=env or slurm_env(), capture_output=True, text=True, timeout=timeout)


def cluster_status() -> tuple[bool, str]:
    if not shutil.which("sbatch"):
        return False, "SLURM's client tools (sbatch) are not installed; run `bash tests/slurm/cluster-up.sh`"
    if not slurm_conf().is_file():
        return False, f"no SLURM config at {slurm_conf()}; run `bash tests/slurm/cluster-up.sh`"
    try:
        proc = run("sinfo", "-h", "-N", "-o", "%N %t", timeout=20)
    except subprocess.TimeoutExpired:
        return False, "sinfo did not answer within 20 s"
    if proc.returncode != 0:
        return False, f"sinfo failed: {proc.stderr.strip()}"
    nodes = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    usable = [n for n, st in nodes.items() if st.rstrip("*") in ("idle", "mix", "alloc", "comp")]
    if len(usable) < 2:
        return False, f"the tests need 2 usable nodes, sinfo says {nodes}; run `SLURM_NODES=2 bash tests/slurm/cluster-up.sh`"
    return True, ""


@pytest.fixture
def slurm():
    ok, why = cluster_status()
    require_service("SLURM testbed", ok, why)
    submitted: list[str] = []
    yield submitted
    for jid in submitted:
        run("scancel", jid)
    for jid in submitted:
        wait_for(lambda jid=jid: squeue_state(jid) not in LIVE, timeout=90, interval=0.5, what=f"SLURM job {jid} to end")


def squeue_state(jid: str) -> str:
    """SLURM's state for the job; "" when SLURM says it does not know it; "UNKNOWN" when
    squeue itself failed (slurmctld busy on a loaded machine): not a verdict."""
    proc = run("squeue", "-h", "-j", jid, "-o", "%T")
    if proc.returncode == 0:
        return proc.stdout.strip()
    return "" if "Invalid job id" in proc.stderr else "UNKNOWN"


def squeue_reason(jid: str) -> str:
    return run("squeue", "-h", "-j", jid, "-o", "%T %r").stdout.strip()


def cli(jobs_dir: Path, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return run(*FORGATHER, *args, env=slurm_env(FORGATHER_JOBS_DIR=str(jobs_dir)), timeout=timeout)


def log_of(tmp_path: Path, jid: str) -> str:
    try:
        return (tmp_path / f"slurm-{jid}.out").read_text(errors="replace")
    except OSError:
        return ""


def wait_running(jobs_dir: Path, job_id: str, jid: str, tmp_path: Path, *, restarts: int = 0, min_step: int = 3) -> dict:
    def ready():
        state = squeue_state(jid)
        if state not in LIVE:
            raise AssertionError(f"SLURM job {jid} is {state or 'gone'}:\n{log_of(tmp_path, jid)[-4000:]}")
        job, st = read(jobs_dir, job_id, "job.json"), read(jobs_dir, job_id, "status.json")
        ok = (
            job.get("restarts") == restarts
            and job.get("state") == "running"
            and (jobs_dir / job_id / "endpoint.json").exists()
            and st.get("state") == "running"
            and (st.get("step") or 0) >= min_step
        )
        return st if ok else None

    return wait_for(ready, timeout=TIMEOUT, interval=0.5, what=f"{job_id} running (restart {restarts})")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("nodes", [1, 2])
def test_sbatch_listed_preempted_requeued_resumed_then_save_stop(nodes: int, slurm: list[str], tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    ckpts = tmp_path / "ckpt"
    env = sbatch_env(
        FORGATHER_JOBS_DIR=str(jobs_dir),
        FORGATHER_NPROC_PER_NODE="2" if nodes == 1 else "1",
        FORGATHER_MASTER_ADDR="127.0.0.1",  # the fake nodes n1, n2 do not resolve
        FORGATHER_GRACE="60",
    )
    sub = run(
        "sbatch",
        "--parsable",
        f"--nodes={nodes}",
        f"--output={tmp_path}/slurm-%j.out",
        f"--chdir={tmp_path}",
        str(TEMPLATE),
        str(PLAIN),
        "--output-dir",
        str(ckpts),
        "--step-time",
        "0.05",
        env=env,
    )
    assert sub.returncode == 0, sub.stderr
    jid = sub.stdout.strip().split(";")[0]
    slurm.append(jid)
    job_id = f"slurm-{jid}"

    # listed as slurm-<id>, a SLURM job on `nodes` nodes
    st = wait_running(jobs_dir, job_id, jid, tmp_path)
    assert st["world_size"] == 2
    listed = json.loads(cli(jobs_dir, "control", "list", "--json").stdout)
    assert [(j["job_id"], j["scheduler"]) for j in listed] == [(job_id, "slurm")], listed
    job = read(jobs_dir, job_id, "job.json")
    assert job["scheduler"]["slurm_job_id"] == jid and job["nnodes"] == str(nodes) and job["restarts"] == 0
    assert sorted(os.listdir(jobs_dir / job_id / "nodes")) == [f"{n}.json" for n in range(nodes)]

    # the template's preemption signal (what --signal=USR1@90 sends), delivered now
    assert run("scancel", "--signal=USR1", jid).returncode == 0
    requeued = wait_for(
        lambda: (j := read(jobs_dir, job_id, "job.json")).get("state") == "requeued" and j,
        timeout=TIMEOUT,
        interval=0.5,
        what=f"{job_id} saved and requeued",
    )
    ckpt = requeued["last_checkpoint"]
    assert ckpt and Path(ckpt).exists() and requeued["exit_code"] == EXIT_PREEMPTED and requeued["signals"] == ["SIGUSR1"]
    saved_step = int(re.search(r"checkpoint-(\d+)\.pt$", ckpt).group(1))
    status = read(jobs_dir, job_id, "status.json")
    assert status["state"] == "stopped" and status["last_checkpoint"] == ckpt, status

    # SLURM holds a requeued job for a while (BeginTime); let it start now
    wait_for(lambda: squeue_state(jid) in ("PENDING", "RUNNING", "CONFIGURING"), timeout=120, interval=0.5, what="the job to be requeued")
    # no process of it runs anywhere now, but SLURM holds it: cleanup must keep its folder
    # (the checkpoint path the rerun resumes from is recorded there)
    res = cli(jobs_dir, "control", "cleanup", "--yes")
    assert res.returncode == 0 and (jobs_dir / job_id / "job.json").exists(), res.stdout + res.stderr
    if "BeginTime" in squeue_reason(jid):
        # not "now": a job credential made in the same second as the requeue revoked the
        # old one counts as revoked too ("Job credential revoked"), and the rerun dies
        run("scontrol", "update", f"JobId={jid}", "StartTime=now+3")

    # the rerun: same job id, restarts 1, resumed from that checkpoint
    wait_running(jobs_dir, job_id, jid, tmp_path, restarts=1, min_step=saved_step + 2)
    rerun = read(jobs_dir, job_id, "job.json")
    assert rerun["resume_from"] == ckpt and rerun["scheduler"]["restart_count"] == 1
    assert log_of(tmp_path, jid).count(f"resumed from {ckpt} at step {saved_step}") == 2  # both ranks
    # and each node's launcher kept its ranks' output in the shared job folder (issue 23)
    for rank in range(2):
        assert f"resumed from {ckpt} at step {saved_step}" in (jobs_dir / job_id / "logs" / f"rank-{rank}.log").read_text()
        assert json.loads((jobs_dir / job_id / "logs" / f"rank-{rank}.json").read_text())["node"] == (rank if nodes == 2 else 0)
    assert [j["job_id"] for j in json.loads(cli(jobs_dir, "control", "list", "--json").stdout)] == [job_id]

    # save-stop --wait ends it with a checkpoint; on two nodes a pause does (issue 23), and
    # the job ends paused: its allocation ends and it is not requeued (checked below)
    verb, ended = ("pause", "paused") if nodes == 2 else ("save-stop", "stopped")
    res = cli(jobs_dir, "control", verb, job_id, "--wait", "--timeout", str(TIMEOUT))
    assert res.returncode == 0 and "completed" in res.stdout, res.stdout + res.stderr
    wait_for(lambda: squeue_state(jid) not in LIVE, timeout=TIMEOUT, interval=0.5, what=f"SLURM job {jid} to end")
    final = wait_for(lambda: (j := read(jobs_dir, job_id, "job.json")).get("ended_at") and j, timeout=60, what="job.json final")
    assert final["state"] == ended and final["exit_code"] == EXIT_STOPPED and final["restarts"] == 1, final
    assert Path(final["last_checkpoint"]).exists() and final["last_checkpoint"] != ckpt
    if nodes == 2:
        assert final.get("requeued_at") is None and "job paused" in res.stdout, res.stdout
        rows = json.loads(cli(jobs_dir, "control", "list", "--json").stdout)  # no --all: a paused job waits
        assert [(j["job_id"], j["state"]) for j in rows] == [(job_id, "paused")], rows
    # requeued exactly once: the rerun ran no `scontrol requeue` (a launcher that srun's teardown
    # signal reaches late logs "not requeueing: ...", which is the point, not a requeue)
    assert not re.search(r"^\S*\s*requeueing: ", log_of(tmp_path, jid).split("(restart 1)")[-1], re.M)
    if nodes == 2:
        # resume (issue 23): the recorded batch script goes to sbatch again with its options;
        # the new allocation runs as the same job, its third run, from the pause's checkpoint
        res = cli(jobs_dir, "control", "resume", job_id, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        again = json.loads(res.stdout)
        slurm.append(again["slurm_job_id"])
        paused_at = int(re.search(r"checkpoint-(\d+)\.pt$", final["last_checkpoint"]).group(1))
        assert (again["job_id"], again["run"], again["resume_from"]) == (job_id, 2, final["last_checkpoint"]), again
        wait_running(jobs_dir, job_id, again["slurm_job_id"], tmp_path, restarts=2, min_step=paused_at + 2)
        job = read(jobs_dir, job_id, "job.json")
        assert job["scheduler"]["slurm_job_id"] == again["slurm_job_id"] != jid and job["nnodes"] == "2" and job["resume_from"] == final["last_checkpoint"]
        assert log_of(tmp_path, jid).count(f"resumed from {final['last_checkpoint']} at step {paused_at}") == 2  # the output goes on in its file
        assert [j["job_id"] for j in json.loads(cli(jobs_dir, "control", "list", "--json").stdout)] == [job_id]


def _fake_job(root: Path, job_id: str, slurm_job_id: str, *, host: str, state: str, pid: int | None = None) -> Path:
    """Records as a launcher leaves them, with the launcher's host and pid chosen."""
    from forgather_control.core import JobPaths, write_json_atomic

    paths = JobPaths(root, job_id).create()
    ident = identity() if host == "here" else {"host": host, "boot_id": "other-boot", "pid": 4242, "pid_start_time": 1.0}
    if pid is not None:
        ident = {**ident, "pid": pid, "pid_start_time": 1.0}
    old = time.time() - 3600
    write_json_atomic(paths.job, {"job_id": job_id, "scheduler": {"type": "slurm", "slurm_job_id": slurm_job_id}, "state": state, "restarts": 0})
    write_json_atomic(paths.status, {**ident, "job_id": job_id, "state": state, "step": 10, "heartbeat_at": old, "last_checkpoint": "/x/checkpoint-10.pt"})
    (paths.nodes).mkdir(exist_ok=True)
    write_json_atomic(paths.node(0), {**ident, "job_id": job_id, "node_rank": 0, "heartbeat_at": old, "state": state})
    return paths.dir


@pytest.mark.timeout(600)
def test_cleanup_asks_slurm_before_deleting(slurm: list[str], tmp_path: Path) -> None:
    """A SLURM job's records on another host, heartbeat long stale: only SLURM can say
    whether it lives. While squeue says RUNNING, cleanup keeps it; once SLURM ended it,
    cleanup deletes it."""
    sub = run("sbatch", "--parsable", "--nodes=1", f"--output={tmp_path}/sleep-%j.out", "--wrap", "sleep 300")
    assert sub.returncode == 0, sub.stderr
    jid = sub.stdout.strip().split(";")[0]
    slurm.append(jid)
    wait_for(lambda: squeue_state(jid) == "RUNNING", timeout=120, interval=0.5, what="the sleep job to run")
    jobs_dir = tmp_path / "jobs"
    folder = _fake_job(jobs_dir, f"slurm-{jid}", jid, host="elsewhere", state="running")

    res = cli(jobs_dir, "control", "cleanup", "--yes")
    assert res.returncode == 0, res.stderr
    assert folder.is_dir(), f"cleanup deleted a job SLURM reports RUNNING:\n{res.stdout}{res.stderr}"
    listed = json.loads(cli(jobs_dir, "control", "list", "--json").stdout)
    assert listed[0]["liveness"] == "alive" and "SLURM" in listed[0]["evidence"], listed

    assert run("scancel", jid).returncode == 0
    wait_for(lambda: squeue_state(jid) not in LIVE, timeout=120, interval=0.5, what="the sleep job to end")
    res = cli(jobs_dir, "control", "cleanup", "--yes")
    assert res.returncode == 0, res.stderr
    assert not folder.exists(), f"cleanup kept a job SLURM ended:\n{res.stdout}{res.stderr}"


@pytest.mark.timeout(600)
def test_cleanup_keeps_a_requeued_job_waiting_in_the_queue(slurm: list[str], tmp_path: Path) -> None:
    """After a preemption save and `scontrol requeue`, the job has no process anywhere
    (the launcher on this host exited) but SLURM still has it, PENDING: its folder holds
    the checkpoint the rerun resumes from and must survive cleanup."""
    sub = run("sbatch", "--parsable", "--hold", "--nodes=1", f"--output={tmp_path}/held-%j.out", "--wrap", "true")
    assert sub.returncode == 0, sub.stderr
    jid = sub.stdout.strip().split(";")[0]
    slurm.append(jid)
    wait_for(lambda: squeue_state(jid) == "PENDING", timeout=60, interval=0.5, what="the held job to be pending")
    jobs_dir = tmp_path / "jobs"
    folder = _fake_job(jobs_dir, f"slurm-{jid}", jid, host="here", state="stopped", pid=dead_pid())
    job = json.loads((folder / "job.json").read_text())
    (folder / "job.json").write_text(json.dumps({**job, "state": "requeued"}))  # as the launcher leaves it
    res = cli(jobs_dir, "control", "cleanup", "--yes")
    assert res.returncode == 0, res.stderr
    assert folder.is_dir(), f"cleanup deleted a job SLURM still holds (PENDING):\n{res.stdout}{res.stderr}"
    listed = json.loads(cli(jobs_dir, "control", "list", "--json").stdout)
    assert [(j["job_id"], j["state"]) for j in listed] == [(f"slurm-{jid}", "requeued")], listed
    # a command cannot reach it until it runs again; the error says so, and how to cancel it
    res = cli(jobs_dir, "control", "save", f"slurm-{jid}")
    assert res.returncode == 4 and "waits in SLURM's queue" in res.stderr and f"scancel {jid}" in res.stderr, res.stderr
    # nor is it resumed from here (issue 23): SLURM starts it again by itself
    res = cli(jobs_dir, "control", "resume", f"slurm-{jid}")
    assert res.returncode == 8 and f"job slurm-{jid} is requeued: SLURM starts it again by itself" in res.stderr, res.stderr


@pytest.mark.timeout(600)
@pytest.mark.timeout(600)
def test_a_hung_two_node_job_is_stalled_its_stacks_shown_and_abort_ends_it(slurm: list[str], tmp_path: Path) -> None:
    """Rank 1 (node 1) sticks in next_batch while rank 0 waits in all_reduce: stalled,
    both nodes' launchers answer stacks, and abort ends the SLURM job through them."""
    jobs_dir = tmp_path / "jobs"
    env = sbatch_env(
        FORGATHER_JOBS_DIR=str(jobs_dir),
        FORGATHER_NPROC_PER_NODE="1",
        FORGATHER_MASTER_ADDR="127.0.0.1",
        FORGATHER_STALL_AFTER="3",
    )
    sub = run(
        "sbatch", "--parsable", "--nodes=2", f"--output={tmp_path}/slurm-%j.out", f"--chdir={tmp_path}", str(TEMPLATE), str(HANG), "--hang-at", "8", env=env
    )
    assert sub.returncode == 0, sub.stderr
    jid = sub.stdout.strip().split(";")[0]
    slurm.append(jid)
    job_id = f"slurm-{jid}"
    wait_running(jobs_dir, job_id, jid, tmp_path)
    wait_for(lambda: read(jobs_dir, job_id, "status.json").get("stall"), timeout=TIMEOUT, interval=0.5, what=f"{job_id} stalled")
    listed = json.loads(cli(jobs_dir, "control", "list", "--json").stdout)
    assert listed[0]["state"] == "stalled", listed
    data = json.loads(cli(jobs_dir, "control", "stacks", job_id, "--json").stdout)
    assert data["nodes"] == [0, 1] and data["missing"] == [], data
    main = {r["rank"]: [f["func"] for t in r["threads"] if t["main"] for f in t["frames"]] for r in data["ranks"]}
    assert main[1][-1] == "next_batch" and main[0][-1] == "all_reduce", main

    res = cli(jobs_dir, "control", "abort", job_id, "--yes", "--wait", "--timeout", str(TIMEOUT))
    assert res.returncode == 0 and any(how in res.stdout for how in ABORT_OF_A_HUNG_JOB), res.stdout + res.stderr
    wait_for(lambda: squeue_state(jid) not in LIVE, timeout=TIMEOUT, interval=0.5, what=f"SLURM job {jid} to end")
    job = wait_for(lambda: (j := read(jobs_dir, job_id, "job.json")).get("ended_at") and j, timeout=60, what="job.json final")
    assert job["state"] == "aborted" and job["exit_code"] == EXIT_ABORTED, log_of(tmp_path, jid)[-3000:]
    assert read(jobs_dir, job_id, "nodes/1.json")["exit_code"] == EXIT_ABORTED  # node 1's launcher ended its rank too


def test_template_signal_fires_before_the_time_limit(slurm: list[str], tmp_path: Path) -> None:
    """The template's own `#SBATCH --signal=USR1@90`, no scancel: with a 2-minute limit
    SLURM signals the step early enough that the job saves and stops before the limit.
    The limit is cut to 2 minutes once the job has made its first step: a start slowed
    by a busy machine must not meet the signal with nothing to save yet."""
    jobs_dir = tmp_path / "jobs"
    env = sbatch_env(
        FORGATHER_JOBS_DIR=str(jobs_dir),
        FORGATHER_MASTER_ADDR="127.0.0.1",
        FORGATHER_REQUEUE="0",
    )
    sub = run(
        "sbatch",
        "--parsable",
        "--nodes=1",
        "--time=00:10:00",
        f"--output={tmp_path}/slurm-%j.out",
        f"--chdir={tmp_path}",
        str(TEMPLATE),
        str(PLAIN),
        "--output-dir",
        str(tmp_path / "ckpt"),
        "--step-time",
        "0.05",
        env=env,
    )
    assert sub.returncode == 0, sub.stderr
    jid = sub.stdout.strip().split(";")[0]
    slurm.append(jid)
    wait_for(lambda: (read(jobs_dir, f"slurm-{jid}", "status.json").get("step") or 0) >= 1, timeout=180, interval=0.5, what=f"{jid}'s first step")
    cut = run("scontrol", "update", f"JobId={jid}", "TimeLimit=00:02:00", env=env)
    assert cut.returncode == 0, cut.stderr
    wait_for(lambda: squeue_state(jid) not in LIVE, timeout=180, interval=0.5, what=f"SLURM job {jid} to end")
    job = read(jobs_dir, f"slurm-{jid}", "job.json")
    assert job.get("state") == "stopped" and job["exit_code"] == EXIT_PREEMPTED and job["signals"] == ["SIGUSR1"], log_of(tmp_path, jid)[-3000:]
    assert Path(job["last_checkpoint"]).exists()
    assert "DUE TO TIME LIMIT" not in log_of(tmp_path, jid)
