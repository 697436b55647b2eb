"""``forgather control logs JOB [--rank N] [-f] [--tail N]``: every rank's output, as its
launcher kept it in the job folder.

The library reads (:mod:`forgather_control.client.logs`: the job's folder here, or its
nodes' through Ray); this module prints each line after its rank, as torchrun's
``[rank1]:``, every line already made safe to print (a control character or an escape
sequence a rank wrote is shown as ``\\x1b``, never obeyed).
"""

from __future__ import annotations

import sys

import click

from forgather_control.client.logs import DEFAULT_TAIL, follow, open_logs, tail_logs
from forgather_control.core.logs import LogRead

from . import options
from .output import printable


@click.command("logs")
@click.argument("job")
@click.option("--rank", "rank", type=click.IntRange(0, 1 << 20), default=None, metavar="N", help="Only rank N's log (default: every rank's).")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new lines as they come, until the job ends or Ctrl-C.")
@click.option(
    "--tail", "lines", type=click.IntRange(0, 100_000), default=DEFAULT_TAIL, show_default=True, metavar="N", help="Lines of each rank's log to start with."
)
@options.jobs_dir
@options.ray
def logs_cmd(job: str, rank: int | None, follow_: bool, lines: int, jobs_dir: str | None, ray: str | None) -> int:
    """Every rank's stdout and stderr, from the job folder (or its nodes, with --ray)."""
    source = open_logs(job, jobs_dir=jobs_dir, ray=ray, timeout=options.reach_timeout(ray))
    ranks = None if rank is None else [rank]
    if not follow_:
        _print(tail_logs(source, ranks, lines=lines))
        return 0
    for read in follow(source, ranks, lines=lines):
        _print(read)
    return 0


def _print(read: LogRead) -> None:
    out = sys.stdout
    for text in read.texts:
        if text.skipped:
            click.echo(f"[rank{text.rank}]: ... {text.skipped} bytes of its output were rotated away before they could be read", err=True)
        for line in text.lines:
            out.write(f"[rank{text.rank}]: {line}\n")
    out.flush()
    for note in read.notes:
        click.echo(printable(f"note: {note}"), err=True)
