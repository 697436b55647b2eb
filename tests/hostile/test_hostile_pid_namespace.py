"""Another container on this host: a job launched in a PID namespace of its own
(``unshare --pid --fork --mount-proc``, as in a ``docker --network host`` container that
shares the jobs directory, the host's name and its boot id). Its pids mean nothing here:
it is judged by its authenticated probe and its heartbeat, so it is listed running,
takes a save, and ``cleanup --yes`` keeps it. Its folder then removed, it trains on and
each of its processes says so once (no traceback per heartbeat)."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from support.env import base_env
from support.launcher import START_TIMEOUT, wait_running
from support.paths import FORGATHER, PLAIN_LAUNCH
from support.services import require_service
from support.waiting import wait_for

from forgather_control.client.transport import HttpTransport
from forgather_control.core.records import Endpoint

pytestmark = pytest.mark.slow

JOB = "contained"
GONE_LINE = re.compile(r"forgather control \(pid (\d+)\): the job's folder .* is gone")


def _rows(cli) -> dict[str, dict]:
    r = cli("control", "list", "--json")
    assert r.code == 0, r
    return {j["job_id"]: j for j in r.json()}


def test_a_job_in_another_pid_namespace_is_alive_takes_a_save_is_kept_and_outlives_its_folder(cli, procs, jobs_dir: Path, tmp_path: Path) -> None:
    require_service("unshare", shutil.which("unshare") is not None and os.geteuid() == 0, "util-linux's unshare, run as root")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", *FORGATHER, "launch", "--jobs-dir", str(jobs_dir), "--job-id", JOB]
    job = procs.start([*argv, str(PLAIN_LAUNCH), "--step-time", "0.05", "--output-dir", str(tmp_path / "out")], env=base_env(jobs_dir), name=JOB)
    status = wait_running(jobs_dir, JOB, job)
    assert status["pid_ns"] != os.stat("/proc/self/ns/pid").st_ino, "the job runs in a PID namespace of its own"
    assert status["host"] == os.uname().nodename  # same host, same boot: only the namespace differs

    row = _rows(cli)[JOB]
    assert (row["state"], row["liveness"]) == ("running", "alive"), row
    r = cli("control", "status", JOB, "--json")
    assert r.code == 0 and r.json()["liveness"] == "alive", r
    r = cli("control", "save", JOB, "--wait", "--timeout", str(START_TIMEOUT))
    assert r.code == 0 and "completed" in r.out, r
    r = cli("control", "cleanup", "--yes", "--json")
    assert r.code == 0 and JOB not in r.json()["deleted"], r
    assert (jobs_dir / JOB / "status.json").exists()

    # its folder removed while it trains (by hand, or by a cleanup that misjudged it)
    endpoint = Endpoint(**{k: v for k, v in json.loads((jobs_dir / JOB / "endpoint.json").read_text()).items() if k in ("url", "token", "job_id")})
    assert endpoint.url and endpoint.token
    live = HttpTransport(endpoint.url, endpoint.token, JOB)
    removed_at = len(job.output())
    shutil.rmtree(jobs_dir / JOB)

    def said() -> list[str]:
        return GONE_LINE.findall(job.output()[removed_at:])

    wait_for(lambda: said() or None, timeout=60, what="rank 0 saying its folder is gone")
    step = live.status().step or 0
    # ten of its heartbeats later (0.2 s each, at most 0.05 s a step), it still trains
    wait_for(lambda: (live.status().step or 0) >= step + 40, timeout=120, what="the job's step moving on without its folder")
    live.close()
    assert job.popen.poll() is None, job.output()[-4000:]
    after = job.output()[removed_at:]
    assert "Traceback" not in after, after[-4000:]
    assert all(n == 1 for n in collections.Counter(said()).values()), after[-4000:]  # each process says it once
