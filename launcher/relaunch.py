"""Node 0's relaunch record (relaunch.json): what ``forgather control resume`` needs to
start the job again, written at every run's start (core/relaunch.py says what it holds
and what it never holds).

Under SLURM it holds the batch script and the options SLURM shows, asked of
``scontrol`` once at the start (a few tens of milliseconds; at most
:data:`SCONTROL_TIMEOUT` each): the record is there while the job runs, so a job that dies
with its node can still be submitted again.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from forgather_control.core.alerts import read_sinks
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import AlertSinks, RecordError, Relaunch, SlurmBatch
from forgather_control.core.relaunch import batch_from, recordable_env, write_relaunch

from .plan import Plan, python_executable

log = logging.getLogger(__name__)

__all__ = ["SCONTROL_TIMEOUT", "capture_batch", "record_relaunch", "resumed_sinks"]

#: Seconds each ``scontrol`` call may take at the start of a SLURM job.
SCONTROL_TIMEOUT = 10.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=SCONTROL_TIMEOUT, check=False)


def capture_batch(slurm_job_id: str, *, launcher_args: Sequence[str] = (), runner: Runner | None = None) -> SlurmBatch:
    """The job's batch script and options, from ``scontrol``; ValueError saying why not."""
    run = runner or _run
    try:
        script = run(["scontrol", "write", "batch_script", slurm_job_id, "-"])
        shown = run(["scontrol", "show", "job", "-o", slurm_job_id])
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"scontrol: {exc}") from None
    for done in (script, shown):
        if done.returncode != 0:
            raise ValueError(f"{' '.join(done.args)} exited {done.returncode}: {(done.stderr or '').strip()[:300]}")
    return batch_from(slurm_job_id, script.stdout, shown.stdout, launcher_args=launcher_args)


def record_relaunch(paths: JobPaths, plan: Plan, *, env: Mapping[str, str], cwd: str, runner: Runner | None = None) -> None:
    """Write this run's relaunch.json (node 0). A launch without a command line (from
    Python) writes none; one whose record cannot be made or written says so and runs on."""
    argv = plan.config.relaunch_argv
    if not argv:
        return
    slurm = None
    scheduler = plan.placement.environment
    if scheduler == "slurm":
        job = str(plan.placement.scheduler.slurm_job_id or "")
        try:
            slurm = capture_batch(job, launcher_args=argv, runner=runner)
        except ValueError as exc:
            log.warning("could not record SLURM job %s's batch script (%s): `forgather control resume %s` cannot submit it again", job, exc, plan.job_id)
    record = Relaunch(
        job_id=plan.job_id,
        argv=list(argv),
        python=python_executable(),
        cwd=cwd,
        env=recordable_env(env),
        scheduler=scheduler,
        slurm=slurm,
        run=plan.restarts,
        written_at=time.time(),
    )
    try:
        write_relaunch(paths, record)
    except OSError as exc:
        log.warning("could not write %s (%s): `forgather control resume %s` will refuse", paths.relaunch, exc, plan.job_id)


def resumed_sinks(paths: JobPaths, plan: Plan) -> AlertSinks | None:
    """Where this run's alerts go: the launch's sinks; a resume that names none keeps the
    job's (notify.json: the relaunch record never holds them)."""
    if plan.sinks is not None or plan.config.resume is None:
        return plan.sinks
    try:
        return read_sinks(paths)
    except RecordError as exc:
        log.warning("not keeping the job's alert sinks: %s", exc)
        return None
