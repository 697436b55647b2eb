"""``forgather control list``: the jobs in a jobs directory, at a server, or across Ray."""

from __future__ import annotations

import click

from forgather_control.client.lookup import list_jobs
from forgather_control.core.env import ENV_JOBS_DIR

from . import options
from .output import print_json, printable


@click.command("list")
@click.option("--all", "all_", is_flag=True, help="Include jobs that have ended (finished, stopped, aborted, and those failed or dead for more than a day).")
@options.as_json
@options.where
@click.option("--timeout", type=float, default=options.RAY_TIMEOUT, show_default=True, help="Seconds to wait for --remote / --ray answers.")
def list_cmd(all_: bool, as_json: bool, jobs_dir: str | None, remote: str | None, token: str | None, ray: str | None, timeout: float) -> int:
    """List jobs: those that may be running and those that failed or died in the last day; with --all every job."""
    listing = list_jobs(jobs_dir=jobs_dir, include_finished=all_, remote=remote, token=token, ray=ray, timeout=timeout)
    if as_json:
        print_json(listing.rows)
        return 0
    if not listing.rows and not listing.exists and not listing.private:
        where = printable(listing.where)
        click.echo(f"no jobs: {where} does not exist yet (no job has used it). Jobs that use another directory are found with --jobs-dir or {ENV_JOBS_DIR}")
        return 0
    from . import render

    render.print_jobs(listing.rows, show_node=listing.source == "ray", where=listing.where, all_=all_, private=listing.private, hidden=listing.hidden)
    return 0
