"""``forgather control resume JOB [--from CHECKPOINT|STEP] [--detach]``: start a stopped,
paused, preempted or failed job again from its own relaunch record (client/resume.py)."""

from __future__ import annotations

import sys

import click

from forgather_control.client.resume import Resumed, prepare

from . import options
from .output import print_json, printable


@click.command("resume")
@click.argument("job")
@click.option(
    "--from",
    "from_",
    metavar="CHECKPOINT|STEP",
    default=None,
    help="Roll back: resume from this checkpoint of the job's history (its path, or its step) instead of the newest; "
    "the newer ones stay on disk, listed as left behind.",
)
@click.option("--detach", is_flag=True, help="Run it in the background (its output in the job folder); print the job id and where its log is.")
@options.as_json
@options.jobs_dir
def resume_cmd(job: str, from_: str | None, detach: bool, as_json: bool, jobs_dir: str | None) -> int:
    """Start a stopped, paused, preempted or failed job again, as it was launched.

    The same command line, working directory and environment (secrets are taken from
    this shell, never from a file), under the same job id: it resumes from the job's
    newest checkpoint still on disk, or the one --from names. A SLURM job's batch script
    is submitted again with its options. Without --detach (and not under SLURM) it runs
    attached, as `forgather launch` did, and exits with the job's exit code.
    """
    plan = prepare(job, jobs_dir=jobs_dir, from_=from_)
    for skipped in plan.skipped:
        click.echo(printable(f"warning: not resuming from checkpoint {skipped.describe()}"), err=True)
    if plan.how == "slurm" or detach:
        done = plan.start(detach=True)
        if as_json:
            print_json(done.as_dict())
        else:
            _say(plan.describe(), done)
        return 0
    if as_json:
        print_json({**plan.resumed().as_dict(), "how": "attached"})
    else:
        click.echo(printable(plan.describe()), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    plan.exec()


def _say(what: str, done: Resumed) -> None:
    click.echo(printable(what))
    if done.slurm_job_id is not None:
        click.echo(printable(f"submitted SLURM job {done.slurm_job_id}; follow it with `forgather control status {done.job_id}`"))
        return
    click.echo(printable(f"started in the background (pid {done.pid}); its output: {done.log}"))
    if done.unconfirmed:
        click.echo(printable("warning: it has not recorded its run yet; look at its output"), err=True)
    click.echo(printable(f"follow it with `forgather control status {done.job_id}`"))
