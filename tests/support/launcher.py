"""Real ``forgather launch`` jobs: the command line as a subprocess, owned by ``Procs``."""

from __future__ import annotations

from pathlib import Path

from .env import base_env
from .paths import FORGATHER
from .processes import Proc, Procs
from .records import read_record
from .waiting import wait_for

#: torch (and transformers) imports on 2 busy cores before a job's first step.
START_TIMEOUT = 240.0


def launch(procs: Procs, jobs_dir: Path, job_id: str, script: Path, *args: str, opts: tuple[str, ...] = (), name: str = "launch", **env: str) -> Proc:
    """``forgather launch --jobs-dir JOBS --job-id ID [OPTS] SCRIPT [ARGS]``."""
    argv = [*FORGATHER, "launch", "--jobs-dir", str(jobs_dir), "--job-id", job_id, *opts, str(script), *args]
    return procs.start(argv, env=base_env(jobs_dir, **env), name=name)


def wait_running(jobs_dir: Path, job_id: str, *launchers: Proc, min_step: int = 3) -> dict:
    """Rank 0's status once the job serves and reached ``min_step``; fails at once when
    a launcher exits first."""

    def ready():
        for p in launchers:
            if p.popen.poll() is not None:
                raise AssertionError(f"launcher exited early ({p.popen.returncode}):\n{p.output()[-4000:]}")
        st = read_record(jobs_dir, job_id, "status.json")
        ok = (jobs_dir / job_id / "endpoint.json").exists() and st.get("state") == "running" and (st.get("step") or 0) >= min_step
        return st if ok else None

    return wait_for(ready, timeout=START_TIMEOUT, interval=0.2, what=f"job {job_id} running at step >= {min_step}")


#: How an abort that the ranks of a hung job cannot agree on ends, as its receipt says:
#: each node's launcher ends its ranks, and rank 0 is either ended by its own launcher
#: (whose receipt says so) or fails in its collective first, once another node's ranks
#: are gone, and completes the abort itself. Which comes first is the machine's timing.
ABORT_OF_A_HUNG_JOB = ("the launcher ended every rank", "before its ranks agreed on the abort")


def ended_hung(receipt: dict) -> bool:
    """The abort's receipt says the job ended as :data:`ABORT_OF_A_HUNG_JOB` describes."""
    by_launcher = (receipt.get("result") or {}).get("ended_by") == "launcher" and ABORT_OF_A_HUNG_JOB[0] in (receipt.get("reason") or "")
    return receipt.get("state") == "completed" and (by_launcher or ABORT_OF_A_HUNG_JOB[1] in (receipt.get("reason") or ""))
