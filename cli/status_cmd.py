"""``forgather control status JOB``: one job's state, step, speed, metrics and commands."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from forgather_control.client.handle import Snapshot
from forgather_control.client.lookup import open_job

from . import options
from .output import print_json, printable, progress_line


@click.command("status")
@click.argument("job")
@options.as_json
@click.option("--watch", is_flag=True, help="A live progress bar until the job ends (Ctrl-C to leave).")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between refreshes with --watch.")
@options.where
def status_cmd(job: str, as_json: bool, watch: bool, interval: float, jobs_dir: str | None, remote: str | None, token: str | None, ray: str | None) -> int:
    """Where a job is: state, step, speed, metrics, last checkpoint, recent commands."""
    timeout = options.reach_timeout(ray)
    with open_job(job, jobs_dir=jobs_dir, remote=remote, token=token, ray=ray, timeout=timeout) as handle:
        if watch and not as_json:
            snapshots = handle.watch(interval=interval)
            if not sys.stdout.isatty():
                _watch_plain(handle.job_id, snapshots)  # a log file or a pipe: one line per look
                return 0
            from . import watch as watching

            watching.watch(snapshots, job_id=handle.job_id)
            return 0
        details = handle.details()
    if as_json:
        print_json(details)
        return 0
    from . import render

    render.print_status(details)
    return 0


def _watch_plain(job_id: str, snapshots: Iterable[Snapshot]) -> None:
    try:
        for snap in snapshots:
            if snap.status is not None:
                click.echo(progress_line(job_id, snap.status))
            if snap.ended:
                click.echo(printable(snap.ended))
    except KeyboardInterrupt:
        pass
