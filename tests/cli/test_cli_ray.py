"""The CLI side of ``--ray``: ``list --ray``, ``status --ray`` and ``save --ray --wait``
against a real plain-loop job, with ``forgather_control.client.ray_listing`` replaced by a
stand-in so no Ray cluster is needed here (the real cluster is tested with ray_listing).
The stand-in records the arguments the CLI passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.env import base_env
from support.scripts import CONTROLLED_LOOP
from support.waiting import wait_for

from forgather_control.core import JobPaths, read_json

_WRAPPER = r"""
import importlib.machinery, json, os, sys, types
calls = []
fake_ray = types.ModuleType("ray")
fake_ray.__spec__ = importlib.machinery.ModuleSpec("ray", None)
sys.modules["ray"] = fake_ray          # found by find_spec, never really imported
from forgather_control.core.records import JobRow, MissingNode, decode
mod = types.ModuleType("forgather_control.client.ray_listing")
rows = json.loads(os.environ["FAKE_RAY_ROWS"])
class Listing:
    def __init__(self, jobs, missing): self.jobs, self.missing_nodes = jobs, missing
class Found:
    def __init__(self, raw): self.row, self.token = decode(raw, JobRow, name="a row"), raw.get("token")
def list_cluster(*, address, jobs_dir, include_finished, timeout):
    calls.append(["list_cluster", address, jobs_dir, include_finished, timeout])
    return Listing([decode(r, JobRow, name="a row") for r in rows], [MissingNode(node="node-b", reason="timed out")])
def find_job(ref, *, address, jobs_dir, timeout):
    calls.append(["find_job", ref, address, jobs_dir, timeout])
    return Found(next(r for r in rows if r["job_id"].startswith(ref)))
mod.list_cluster, mod.find_job = list_cluster, find_job
sys.modules["forgather_control.client.ray_listing"] = mod
from forgather_control.cli.main import run
rc = run(sys.argv[1:])
sys.stderr.write("\nCALLS=" + json.dumps(calls) + "\n")
sys.exit(rc)
"""


_seen: list[str] = []


def run_fake_ray(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list]:
    p = subprocess.run([sys.executable, "-c", _WRAPPER, *args], env=env, capture_output=True, text=True, timeout=180)
    _seen.append(p.stdout + p.stderr)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("CALLS=")][-1]
    return p, json.loads(line[len("CALLS=") :])


def test_ray_list_status_and_save(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    node_jobs = tmp_path / "node-a-jobs"  # the job's own jobs dir: invisible to the CLI's
    argv = [sys.executable, CONTROLLED_LOOP, "rayjob-1", str(tmp_path / "out")]
    proc = procs.start(argv, env=base_env(node_jobs), name="rayjob")
    paths = JobPaths(node_jobs, "rayjob-1")
    ep = wait_for(lambda: read_json(paths.endpoint, quiet=True), timeout=120, interval=0.2, what="the endpoint file")
    row = {
        "job_id": "rayjob-1",
        "state": "running",
        "liveness": "alive",
        "host": ep["host"],
        "pid": ep["pid"],
        "port": ep["port"],
        "step": 1,
        "updated_at": ep["started_at"],
        "url": ep["url"],
        "token": ep["token"],
        "node": "node-a",
    }
    env = base_env(jobs_dir, FAKE_RAY_ROWS=json.dumps([row]), RAY_ADDRESS="10.0.0.1:6379")

    p, calls = run_fake_ray(["control", "list", "--ray", "--json", "--all"], env)
    assert p.returncode == 0, p.stderr
    assert [j["job_id"] for j in json.loads(p.stdout)] == ["rayjob-1"]
    assert calls == [["list_cluster", "auto", None, True, 15.0]]
    assert "node-b" in p.stderr and "timed out" in p.stderr  # the missing node is named
    p, _ = run_fake_ray(["control", "list", "--ray-address", "head:6379"], env)
    assert p.returncode == 0 and "node-a" in p.stdout and "rayjob-1" in p.stdout

    p, calls = run_fake_ray(["control", "status", "rayjob", "--ray", "--json"], env)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["job_id"] == "rayjob-1" and d["live"] is True and d["node"] == "node-a"
    assert calls[0][:3] == ["find_job", "rayjob", "auto"]
    # --ray before JOB: the flag takes no value, so JOB stays the job
    p, calls = run_fake_ray(["control", "status", "--ray", "rayjob", "--json"], env)
    assert p.returncode == 0, p.stderr
    assert calls[0][:3] == ["find_job", "rayjob", "auto"]
    p, calls = run_fake_ray(["control", "status", "--ray-address", "head:6379", "rayjob", "--json"], env)
    assert p.returncode == 0, p.stderr
    assert calls[0][:3] == ["find_job", "rayjob", "head:6379"]

    p, _ = run_fake_ray(["control", "save", "rayjob-1", "--ray", "--wait", "--json", "--timeout", "120"], env)
    assert p.returncode == 0, p.stderr
    entry = json.loads(p.stdout)
    assert entry["state"] == "completed" and Path(entry["result"]["checkpoint"]).is_file()
    p, _ = run_fake_ray(["control", "save", "rayjob-1", "--ray", "--channel", "file"], env)
    assert p.returncode == 2 and "--channel file" in p.stderr
    assert _seen and all(ep["token"] not in out for out in _seen)
    assert proc.popen.poll() is None
