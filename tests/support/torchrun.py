"""Real torchrun jobs (gloo on CPU) running the examples, found by rank and driven with
the client API from ``forgather_control.client``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import psutil

from forgather_control.client import JobHandle, find_job, probe_endpoint
from forgather_control.core.records import Receipt, Status

from .env import base_env
from .paths import EXAMPLES
from .processes import Proc, Procs
from .waiting import wait_for

#: torchrun runs take seconds on 2 busy cores shared with other test runs.
TIMEOUT = 240.0


def torchrun_argv(script: str | Path, *args: str, nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N SCRIPT ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), str(script), *args]


def rank_script(procs: Procs, tmp_path: Path, jobs_dir: Path, source: str, *args: str, name: str, nproc: int = 2) -> list[dict[str, Any]]:
    """Run ``source`` (a script that gets ``OUT JOBS_DIR ARGS`` and writes
    ``OUT/r<rank>.json``) under torchrun with ``nproc`` gloo ranks; it must exit 0. Returns
    every rank's JSON, rank 0 first."""
    script = tmp_path / f"{name}.py"
    script.write_text(source)
    out = tmp_path / f"{name}-out"
    out.mkdir()
    p = procs.start(torchrun_argv(script, str(out), str(jobs_dir), *args, nproc=nproc), env=base_env(jobs_dir), name=name)
    assert p.wait(TIMEOUT) == 0, p.output()[-4000:]
    return [json.loads((out / f"r{r}.json").read_text()) for r in range(nproc)]


def torchrun(
    procs: Procs,
    script: str,
    *args: str,
    jobs_dir: Path,
    nproc: int = 2,
    nnodes: int = 1,
    node_rank: int = 0,
    master_port: int | None = None,
    env: dict[str, str] | None = None,
    name: str | None = None,
) -> Proc:
    """One node of a torchrun job running ``examples/trainer_control/SCRIPT``."""
    if nnodes == 1:
        argv = torchrun_argv(EXAMPLES / script, *args, nproc=nproc)
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        argv += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(master_port)]
        argv += [str(EXAMPLES / script), *args]
    return procs.start(argv, env=base_env(jobs_dir, **(env or {})), name=name or f"{Path(script).stem}-node{node_rank}")


def wait_client(jobs_dir: Path, job_id: str, *procs_: Proc, timeout: float = TIMEOUT) -> JobHandle:
    """Wait until the job's server answers an authenticated probe; fail early when a
    process dies first."""

    def ready() -> Any:
        for p in procs_:
            if p.popen.poll() is not None:
                raise AssertionError(f"process exited with {p.popen.returncode} before serving:\n{p.output()[-4000:]}")
        try:
            info = find_job(jobs_dir, job_id, squeue=None)
        except LookupError:
            return None
        return info if info.endpoint and probe_endpoint(info.endpoint) else None

    info = wait_for(ready, timeout=timeout, interval=0.2, what=f"job {job_id} to serve")
    return JobHandle.from_info(info)


def command(client: JobHandle, cmd: str, *, timeout: float = TIMEOUT) -> Receipt:
    """Send ``cmd`` and wait for its final ledger entry (like ``--wait``)."""
    entry = client.send(cmd)
    assert entry.state == "queued", entry
    return client.wait(str(entry.id), timeout=timeout)


def wait_step(client: JobHandle, step: int, timeout: float = TIMEOUT) -> Status:
    """The job's status once it reached ``step``."""
    return wait_for(lambda: (lambda s: s if (s.step or 0) >= step else None)(client.status()), timeout=timeout, interval=0.2, what=f"step {step}")


def workers_by_rank(proc: Proc, expect: int) -> dict[int, psutil.Process]:
    """The torchrun workers under ``proc``, keyed by their global RANK."""

    def find() -> dict[int, psutil.Process] | None:
        found: dict[int, psutil.Process] = {}
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                env = child.environ()
            except (psutil.Error, OSError):
                continue
            if "RANK" in env and "TORCHELASTIC_RUN_ID" in env:
                found[int(env["RANK"])] = child
        return found if len(found) == expect else None

    return wait_for(find, timeout=TIMEOUT, interval=0.2, what=f"{expect} workers")


#: What each example prints at its end. Matched anywhere, not per line: ranks share
#: torchrun's stdout, and print() writes the text and its newline separately, so two
#: ranks ending together can leave "...aborted=Falserank 3 pid ..." on one line.
_ENDED = re.compile(r"rank (\d+) pid \d+ ended at step \d+ aborted=(?:True|False)")


def ended_lines(*procs_: Proc) -> dict[int, str]:
    """rank -> the 'rank R pid P ended at step S ...' line each example prints."""
    out: dict[int, str] = {}
    for p in procs_:
        for m in _ENDED.finditer(p.output()):
            out[int(m.group(1))] = m.group(0)
    return out


def end_step(line: str) -> int:
    return int(line.split(" ended at step ")[1].split()[0])


def read_traces(trace_dir: Path) -> dict[int, list[list[int]]]:
    """rank -> the agreement trace each rank dumped (FORGATHER_TRACE_AGREEMENT)."""
    return {int(p.stem.split("-")[1]): json.loads(p.read_text())["trace"] for p in sorted(trace_dir.glob("rank-*.json"))}
