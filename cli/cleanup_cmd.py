"""``forgather control cleanup``: delete the records of jobs judged dead or finished.

The rules (what may go, what is kept because it holds a resume point, judged again
right before each deletion, never through a link) are the library's
(:mod:`forgather_control.client.cleanup`); this module shows the candidates, asks, and
reports.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import click

from forgather_control.client import cleanup
from forgather_control.core.errors import EXIT_FAILED, EXIT_OK, UsageError
from forgather_control.core.jobs import resolve_jobs_dir
from forgather_control.core.records import JobRow

from . import options
from .output import print_json, printable


class Kept(NamedTuple):
    """A job cleanup leaves, and why (``--json`` writes it as an object)."""

    job_id: str
    reason: str | None


@click.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and what is kept, and why; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--include-resumable",
    is_flag=True,
    help="Also delete jobs that hold a resume point (stopped, preempted or crashed with a checkpoint still on disk).",
)
@click.option("--include-paused", is_flag=True, help="Also delete paused jobs (`pause`), which are otherwise kept to be resumed.")
@options.as_json
@options.jobs_dir
def cleanup_cmd(dry_run: bool, yes: bool, include_resumable: bool, include_paused: bool, as_json: bool, jobs_dir: str | None) -> int:
    """Delete the records of jobs judged dead or finished (never alive, stale or unknown).

    Jobs that hold a resume point are kept unless --include-resumable: relaunching them
    with the same --job-id continues from their checkpoint. Paused jobs are kept unless
    --include-paused."""
    root = resolve_jobs_dir(jobs_dir)
    found = cleanup.candidates(root, include_resumable=include_resumable, include_paused=include_paused)
    doomed = [c.info for c in found if c.kept is None]
    rows = [c.summary() for c in doomed]
    kept = [Kept(c.info.job_id, c.kept) for c in found if c.kept is not None]
    if not rows or dry_run:
        if as_json:
            print_json({"dry_run": dry_run, "candidates": rows, "deleted": [], "kept": [k._asdict() for k in kept]})
        elif rows:
            _show(rows, kept, title=f"would delete in {root}")
        else:
            click.echo(printable(f"nothing to clean up in {root}"))
            _show_kept(kept)
        return EXIT_OK
    if not (as_json or yes):
        _show(rows, kept, title=f"to delete in {root}")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete {len(rows)} job record(s) without confirmation (stdin is not a terminal); pass --yes")
        if not click.confirm(f"Delete these {len(rows)} job record(s)?", default=False, err=True):
            raise click.exceptions.Exit(EXIT_FAILED)
    outcomes = [cleanup.delete_job(root, info.job_id, include_resumable=include_resumable, include_paused=include_paused) for info in doomed]
    deleted = [o.job_id for o in outcomes if o.deleted]
    kept += [Kept(o.job_id, o.reason) for o in outcomes if not o.deleted]
    if as_json:
        print_json({"dry_run": False, "candidates": rows, "deleted": deleted, "kept": [k._asdict() for k in kept]})
    else:
        click.echo(printable(f"deleted {len(deleted)} job record(s) from {root}"))
        _show_kept(kept)
    return EXIT_FAILED if any(o.error for o in outcomes) else EXIT_OK


def _show(rows: list[JobRow], kept: list[Kept], *, title: str) -> None:
    from . import render

    render.print_cleanup(rows, title=title)
    _show_kept(kept)


def _show_kept(kept: list[Kept]) -> None:
    for k in kept:
        click.echo(printable(f"kept {k.job_id}: {k.reason}"))
