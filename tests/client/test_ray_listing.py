"""Issue 5: cluster-wide listing through Ray, on a real Ray cluster started here.

One module-scoped cluster (a head and a worker node started with ``ray start --block``
as subprocesses, each with its own FORGATHER_JOBS_DIR, so they share no jobs
directory) holds one live ``plain_loop.py`` job per node plus dead and finished
records. The client (this process, and the CLI subprocesses) has a third jobs
directory of its own. Teardown stops exactly the processes started here (each
``ray start`` runs in its own session; the raylet, GCS and workers stay in it) and
asserts none is left; ``ray stop`` is never used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.env import base_env
from support.paths import EXAMPLES
from support.ports import free_port
from support.processes import Procs
from support.ray_cluster import START_TIMEOUT, LocalRayCluster, ray_env, write_dead_job, write_finished_job
from support.records import identity
from support.services import require_service
from support.waiting import wait_for

from forgather_control.client.ray_driver import INSTALL_HINT
from forgather_control.core import JobPaths, read_json, write_json_atomic
from forgather_control.core.records import JobRow, encode

# One cluster per xdist worker; with `--dist loadgroup` the group keeps them on one.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.xdist_group("ray")]


@dataclass
class Cluster:
    ray: LocalRayCluster
    client_dir: Path
    dirs: dict[str, Path]  # node name -> its jobs dir
    live: dict[str, str]  # node name -> live job id there
    dead: dict[str, str]
    finished: dict[str, str]
    out_dirs: dict[str, Path]
    local_dead: str
    base: Path

    @property
    def address(self) -> str:
        assert self.ray.address
        return self.ray.address


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("raylist")
    tag = os.urandom(2).hex()
    dirs = {"fg-a": base / "jobs-a", "fg-b": base / "jobs-b"}
    client_dir = base / "jobs-client"
    require_service("Ray", importlib.util.find_spec("ray") is not None, f"ray is not installed ({INSTALL_HINT})")
    ray_cluster = LocalRayCluster(base, ray_env())
    procs = Procs(base)
    try:
        # The training jobs start first: they take seconds to import torch while the
        # Ray nodes come up.
        live, dead, finished, out_dirs = {}, {}, {}, {}
        for name, d in dirs.items():
            live[name] = f"live-{name}-{tag}"
            out_dirs[name] = base / f"out-{name}"
            procs.start(
                [sys.executable, str(EXAMPLES / "plain_loop.py"), "--job-id", live[name], "--step-time", "0.05", "--output-dir", str(out_dirs[name])],
                env=base_env(d),
                name=f"plain-{name}",
            )
            dead[name] = f"dead-{name}-{tag}"
            write_dead_job(d, dead[name])
            finished[name] = f"done-{name}-{tag}"
            write_finished_job(d, finished[name])
        try:
            for name, d in dirs.items():
                ray_cluster.add_node(name, d)
        except (RuntimeError, OSError) as exc:
            require_service("Ray", False, str(exc))
        local_dead = f"localdead-{tag}"
        write_dead_job(client_dir, local_dead)
        for name, d in dirs.items():
            paths = JobPaths(d, live[name])
            wait_for(
                lambda paths=paths: (read_json(paths.status, quiet=True) or {}).get("state") == "running" and paths.endpoint.exists(),
                timeout=START_TIMEOUT,
                what=f"plain_loop job {live[name]} running ({procs.started[-1].output()[-2000:]})",
            )
        yield Cluster(ray_cluster, client_dir, dirs, live, dead, finished, out_dirs, local_dead, base)
    finally:
        left = procs.cleanup() + ray_cluster.shutdown()
        assert not left, f"processes left behind: {left}"


@pytest.fixture(autouse=True)
def _client_env(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("FORGATHER_RAY_LIST_DELAY", raising=False)
    if "cluster" in request.fixturenames:
        monkeypatch.setenv("FORGATHER_JOBS_DIR", str(request.getfixturevalue("cluster").client_dir))


def client_env(c: Cluster, **extra: str) -> dict[str, str]:
    return {**ray_env(), "FORGATHER_JOBS_DIR": str(c.client_dir), **extra}


def check_rows(c: Cluster, rows: list[dict[str, Any]] | list[JobRow], *, finished: bool = False) -> None:
    """Every job once, on the node whose directory holds it, with a correct state (rows
    as the library gives them, or as JSON)."""
    rows = [encode(r) if isinstance(r, JobRow) else r for r in rows]
    ids = [r["job_id"] for r in rows]
    expected = {*c.live.values(), *c.dead.values(), c.local_dead} | (set(c.finished.values()) if finished else set())
    assert set(ids) == expected, rows
    assert len(ids) == len(set(ids)), f"a job listed twice: {ids}"
    by_id = {r["job_id"]: r for r in rows}
    for name, d in c.dirs.items():
        live = by_id[c.live[name]]
        assert live["node"].startswith(f"{name}/"), live
        assert live["jobs_dir"] == str(d)
        assert (live["liveness"], live["state"]) == ("alive", "running"), live
        assert live["url"].startswith("http://")
        assert "token" not in live
        dead = by_id[c.dead[name]]
        assert dead["node"].startswith(f"{name}/") and (dead["liveness"], dead["state"]) == ("dead", "dead"), dead
        if finished:
            done = by_id[c.finished[name]]
            assert done["node"].startswith(f"{name}/") and (done["liveness"], done["state"]) == ("finished", "finished"), done
    local = by_id[c.local_dead]
    assert local["node"].endswith("(local)") and local["state"] == "dead" and local["jobs_dir"] == str(c.client_dir), local


# -- 1. two nodes, each with its own jobs directory --------------------------------
def test_list_cluster_two_nodes(cluster: Cluster) -> None:
    from forgather_control.client import list_cluster

    res = list_cluster(address=cluster.address, jobs_dir=None, timeout=60)
    assert res.missing_nodes == []
    assert sorted(str(n.node).split("/")[0] for n in res.nodes) == ["fg-a", "fg-b"]
    assert {str(n.node).split("/")[0]: n.jobs_dir for n in res.nodes} == {k: str(v) for k, v in cluster.dirs.items()}
    check_rows(cluster, res.jobs)
    # The JSON form carries the same, and plain data only.
    again = json.loads(json.dumps(encode(res.as_record())))
    check_rows(cluster, again["jobs"])
    assert again["missing_nodes"] == []

    with_all = list_cluster(address=cluster.address, jobs_dir=None, include_finished=True, timeout=60)
    check_rows(cluster, with_all.jobs, finished=True)


def test_list_cluster_dedups_the_local_copy(cluster: Cluster) -> None:
    """A client on node A reading A's directory sees A's jobs twice (locally and from
    A's task): one row each, from the Ray node, with the other copy named."""
    from forgather_control.client import list_cluster

    res = list_cluster(address=cluster.address, jobs_dir=str(cluster.dirs["fg-a"]), timeout=60)
    ids = [r.job_id for r in res.jobs]
    assert len(ids) == len(set(ids)), ids
    # --jobs-dir applies on every node: all of them read A's directory now.
    assert {n.jobs_dir for n in res.nodes} == {str(cluster.dirs["fg-a"])}
    row = next(r for r in res.jobs if r.job_id == cluster.live["fg-a"])
    assert row.source == "ray" and row.liveness == "alive"
    assert isinstance(row.seen_on, list) and len(row.seen_on) == 3 and any(n.endswith("(local)") for n in row.seen_on), row
    assert cluster.live["fg-b"] not in ids


def test_cli_list_ray_json(cluster: Cluster) -> None:
    env = client_env(cluster)
    res = run_cli("control", "list", "--ray-address", cluster.address, "--json", env=env, timeout=180)
    assert res.code == 0, res.err
    check_rows(cluster, res.json())
    res = run_cli("control", "list", "--all", "--ray-address", cluster.address, "--json", env=env, timeout=180)
    assert res.code == 0, res.err
    check_rows(cluster, res.json(), finished=True)
    # RAY_ADDRESS is honoured when --ray has no address; the human table names nodes.
    res = run_cli("control", "list", "--ray", env={**env, "RAY_ADDRESS": cluster.address}, timeout=180)
    assert res.code == 0, res.err
    for name in cluster.dirs:
        assert cluster.live[name] in res.out and f"{name}/" in res.out, res.out


# -- 3. control a job found only through Ray ---------------------------------------
def test_find_job_then_status_and_save(cluster: Cluster) -> None:
    from forgather_control.client import HttpTransport, JobHandle, find_cluster_job
    from forgather_control.core import AmbiguousJob, JobNotFound, Unreachable

    live = cluster.live["fg-b"]
    assert not (cluster.client_dir / live).exists()  # only Ray can find it
    job = find_cluster_job(live[:-2], address=cluster.address, jobs_dir=None, timeout=60)
    assert job.row.job_id == live and str(job.row.node).startswith("fg-b/") and job.token and job.row.url
    with JobHandle(job.row.job_id, HttpTransport(job.row.url, job.token, job.row.job_id)) as client:
        st = client.status()
        assert st.state == "running" and st.step > 0
        entry = client.send("save")
        done = client.wait(entry.id, timeout=120)
    assert done.state == "completed", done
    ckpt = Path(done.result.checkpoint)
    assert ckpt.parent == cluster.out_dirs["fg-b"] and ckpt.exists()

    with pytest.raises(Unreachable, match="dead") as exc:
        find_cluster_job(cluster.dead["fg-a"], address=cluster.address, jobs_dir=None, timeout=60)
    assert str(exc.value.job.node).startswith("fg-a/") and "token" not in encode(exc.value.job)
    # Alive (its pid runs: ours) but its server does not answer from here: say so.
    silent = f"silent-{cluster.live['fg-b'][-4:]}"
    paths = JobPaths(cluster.dirs["fg-b"], silent).create()
    try:
        write_json_atomic(paths.endpoint, {"job_id": silent, "url": f"http://127.0.0.1:{free_port()}", "token": "t", **identity()})
        with pytest.raises(Unreachable, match=r"does not answer from .*FORGATHER_CONTROL_HOST") as exc:
            find_cluster_job(silent, address=cluster.address, jobs_dir=None, timeout=60)
        assert exc.value.job.liveness == "alive"
    finally:
        shutil.rmtree(paths.dir)
    # On another host, serving its own loopback: never probed from here (whatever
    # listens on that port here would get the token), and said so.
    far = f"far-{cluster.live['fg-b'][-4:]}"
    paths = JobPaths(cluster.dirs["fg-b"], far).create()
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        stranger.setblocking(False)
        other = {"host": "elsewhere", "boot_id": "another-boot", "pid": 4242, "heartbeat_at": time.time()}
        try:
            write_json_atomic(paths.endpoint, {"job_id": far, "url": f"http://127.0.0.1:{stranger.getsockname()[1]}", "token": "t", **other})
            write_json_atomic(paths.status, {"job_id": far, "state": "running", **other})
            with pytest.raises(Unreachable, match=r"on its own host .*elsewhere.* only") as exc:
                find_cluster_job(far, address=cluster.address, jobs_dir=None, timeout=60)
            assert exc.value.job.liveness == "unknown"
            with pytest.raises(BlockingIOError):
                stranger.accept()
        finally:
            shutil.rmtree(paths.dir)
    with pytest.raises(AmbiguousJob, match=r"live-fg-a.*live-fg-b"):
        find_cluster_job("live-", address=cluster.address, jobs_dir=None, timeout=60)
    with pytest.raises(JobNotFound, match="no job 'nope'"):
        find_cluster_job("nope", address=cluster.address, jobs_dir=None, timeout=60)


def test_cli_status_and_save_wait_through_ray(cluster: Cluster) -> None:
    env = client_env(cluster)
    live = cluster.live["fg-a"]
    res = run_cli("control", "status", live, "--ray-address", cluster.address, "--json", env=env, timeout=180)
    assert res.code == 0, res.err
    assert res.json()["state"] == "running"
    before = set(cluster.out_dirs["fg-a"].glob("checkpoint-*.pt"))
    res = run_cli("control", "save", live, "--wait", "--ray-address", cluster.address, env=env, timeout=240)
    assert res.code == 0, res.out + res.err
    assert set(cluster.out_dirs["fg-a"].glob("checkpoint-*.pt")) - before
    # Without --ray the client cannot see the job: its directory is on the node.
    res = run_cli("control", "status", live, env=env, timeout=120)
    assert res.code == 3, res.out + res.err


def test_cli_stacks_through_ray(cluster: Cluster) -> None:
    """The nodes share no jobs directory: a task on each node signals the job's ranks there."""
    env = client_env(cluster)
    live = cluster.live["fg-b"]
    res = run_cli("control", "stacks", live, "--ray-address", cluster.address, "--json", env=env, timeout=180)
    assert res.code == 0, res.err
    data = res.json()
    [rank] = data["ranks"]
    [main] = [t for t in rank["threads"] if t["main"]]
    assert rank["rank"] == 0 and rank["error"] is None and data["missing"] == []
    assert any(f["file"].endswith("plain_loop.py") and f["func"] == "main" for f in main["frames"]), main
    text = run_cli("control", "stacks", live, "--ray-address", cluster.address, env=env, timeout=180).out
    assert "rank 0 (" in text and "plain_loop.py" in text


def test_cli_logs_through_ray(cluster: Cluster) -> None:
    """Issue 23: a two-node job whose nodes keep their own jobs directories: each node's
    launcher left its rank's log there; `logs --ray` reads each on its node, clean."""
    from forgather_control.core.logs import RankLog

    job_id = f"split-{cluster.live['fg-a'].rsplit('-', 1)[-1]}"
    for rank, name in enumerate(("fg-a", "fg-b")):
        paths = JobPaths(cluster.dirs[name], job_id).create()
        write_json_atomic(paths.job, {"job_id": job_id, "state": "failed", "exit_code": 1, "ended_at": time.time(), **identity()})
        (paths.dir / "logs").mkdir(mode=0o700)
        fd = os.open(paths.dir / "logs", os.O_RDONLY)
        try:
            log = RankLog(fd, rank, host=name, node=rank)
            log.write(f"rank {rank} on {name}\n\x1b]0;pwned\x07 from {rank}\n".encode())
            log.close()
        finally:
            os.close(fd)
    env = client_env(cluster)
    try:
        res = run_cli("control", "logs", job_id[:-1], "--ray-address", cluster.address, env=env, timeout=180)
        assert (res.code, res.out.splitlines()) == (
            0,
            ["[rank0]: rank 0 on fg-a", "[rank0]: \\x1b]0;pwned\\x07 from 0", "[rank1]: rank 1 on fg-b", "[rank1]: \\x1b]0;pwned\\x07 from 1"],
        ), res.err
        res = run_cli("control", "logs", job_id, "--rank", "1", "--tail", "1", "--ray-address", cluster.address, env=env, timeout=180)
        assert (res.code, res.out) == (0, "[rank1]: \\x1b]0;pwned\\x07 from 1\n"), res.err
        # without --ray the client's own directory has no such job
        assert run_cli("control", "logs", job_id, env=env, timeout=120).code == 3
    finally:  # the cluster's directories are the module's: the listing tests count their jobs
        for name in ("fg-a", "fg-b"):
            shutil.rmtree(cluster.dirs[name] / job_id, ignore_errors=True)


# -- 2. a node hangs, then dies, during the listing --------------------------------
_LIST_THEN_COLLECT = """
import gc, json, sys
from forgather_control.client import list_cluster
from forgather_control.core.records import encode
res = list_cluster(address=sys.argv[1], jobs_dir=None, timeout=60)
gc.collect()  # what the caller's interpreter does sooner or later
print(json.dumps(encode(res.as_record())))
"""


def test_hung_then_dead_node(cluster: Cluster) -> None:
    from forgather_control.client import list_cluster

    hung = cluster.ray.add_node("fg-hung", cluster.base / "jobs-hung", extra_env={"FORGATHER_RAY_LIST_DELAY": "600"})
    try:
        t0 = time.monotonic()
        res = list_cluster(address=cluster.address, jobs_dir=None, timeout=12)
        took = time.monotonic() - t0
        assert took < 12 + 10, took  # the timeout, plus connecting and disconnecting
        check_rows(cluster, res.jobs)
        assert [str(m.node).split("/")[0] for m in res.missing_nodes] == ["fg-hung"], res.missing_nodes
        assert "no answer within 12s" in str(res.missing_nodes[0].reason)

        # The CLI lists the others and names the node on stderr.
        out = run_cli("control", "list", "--ray-address", cluster.address, "--json", "--timeout", "12", env=client_env(cluster), timeout=180)
        assert out.code == 0, out.err
        check_rows(cluster, out.json())
        assert "fg-hung/" in out.err, out.err

        # Finding a live job by its id does not wait for the hung node.
        from forgather_control.client import find_cluster_job

        t0 = time.monotonic()
        job = find_cluster_job(cluster.live["fg-a"], address=cluster.address, jobs_dir=None, timeout=60)
        assert job.row.node is not None and job.row.node.startswith("fg-a/") and job.token
        assert time.monotonic() - t0 < 30
        out = run_cli("control", "status", cluster.live["fg-b"], "--ray-address", cluster.address, "--json", env=client_env(cluster), timeout=180)
        assert out.code == 0 and out.json()["state"] == "running", out.err

        # The node dies while its task sleeps: Ray reports it, the listing returns, and the
        # caller's process lives on. A Python caller of list_cluster, in a process of its
        # own: Ray ends a process whose code touches an ObjectRef after ray.shutdown(), and
        # a NodeDiedError's traceback keeps one alive until the garbage collector runs (it
        # once ended this test's xdist worker). So the caller collects after the listing.
        caller = subprocess.Popen(
            [sys.executable, "-c", _LIST_THEN_COLLECT, cluster.address],
            env=client_env(cluster),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            t0 = time.monotonic()
            # Kill it once its listing task is running there (a worker in its session).
            wait_for(
                lambda: any("forgather-control-list" in " ".join(p.cmdline()) for p in hung.proc.tree.track()),
                timeout=60,
                what="the listing task's worker on the hung node",
            )
            assert not cluster.ray.stop_node(hung, signal.SIGKILL)
            out, err = caller.communicate(timeout=90)
            took = time.monotonic() - t0
        finally:
            if caller.poll() is None:
                os.killpg(caller.pid, signal.SIGKILL)
                caller.wait()
        assert caller.returncode == 0 and out.strip(), f"the caller died ({caller.returncode}): {err[-3000:]}"
        res = json.loads(out.strip().splitlines()[-1])
        assert took < 60 + 10, took
        check_rows(cluster, res["jobs"])
        assert [m["node"].split("/")[0] for m in res["missing_nodes"]] == ["fg-hung"], res["missing_nodes"]
        print(f"dead node noticed after {took:.1f}s: {res['missing_nodes'][0]['reason']}")
    finally:
        assert not cluster.ray.stop_node(hung, signal.SIGKILL)
