"""``forgather control cleanup``: delete the records of jobs judged dead or finished.

The rules (what may go, judged again right before each deletion, never through a
link) are the library's (:mod:`forgather_control.control.cleanup`); this module shows
the candidates, asks, and reports.
"""

from __future__ import annotations

import sys

import click

from forgather_control.control import cleanup
from forgather_control.control.errors import EXIT_FAILED, EXIT_OK, UsageError
from forgather_control.control.jobs import resolve_jobs_dir

from . import options
from .output import print_json


@click.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@options.as_json
@options.jobs_dir
def cleanup_cmd(dry_run: bool, yes: bool, as_json: bool, jobs_dir: str | None) -> int:
    """Delete the records of jobs judged dead or finished (never alive, stale or unknown)."""
    root = resolve_jobs_dir(jobs_dir)
    cands = cleanup.candidates(root)
    rows = [c.summary() for c in cands]
    if not rows:
        if as_json:
            print_json({"dry_run": dry_run, "candidates": [], "deleted": [], "kept": []})
        else:
            click.echo(f"nothing to clean up in {root}")
        return EXIT_OK
    if dry_run and as_json:
        print_json({"dry_run": True, "candidates": rows, "deleted": [], "kept": []})
        return EXIT_OK
    if dry_run or not (as_json or yes):
        from . import render

        render.print_cleanup(rows, title=f"{'would delete' if dry_run else 'to delete'} in {root}")
        if dry_run:
            return EXIT_OK
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete {len(rows)} job record(s) without confirmation (stdin is not a terminal); pass --yes")
        if not click.confirm(f"Delete these {len(rows)} job record(s)?", default=False, err=True):
            raise click.exceptions.Exit(EXIT_FAILED)
    outcomes = [cleanup.delete_job(root, c.job_id) for c in cands]
    deleted = [o.job_id for o in outcomes if o.deleted]
    kept = [{"job_id": o.job_id, "reason": o.reason} for o in outcomes if not o.deleted]
    if as_json:
        print_json({"dry_run": False, "candidates": rows, "deleted": deleted, "kept": kept})
    else:
        click.echo(f"deleted {len(deleted)} job record(s) from {root}")
        for k in kept:
            click.echo(f"kept {k['job_id']}: {k['reason']}")
    return EXIT_FAILED if any(o.error for o in outcomes) else EXIT_OK
