"""``forgather control``: the group; each verb lives in a module of its own.

Thin over :mod:`forgather_control.control`: a verb parses options, calls the library
(:func:`~forgather_control.control.lookup.open_job`, :class:`JobHandle`,
:func:`~forgather_control.control.lookup.list_jobs`) and renders what comes back. Fast
by construction: verbs are imported only when invoked, none imports torch, fastapi or
ray (only ``--ray`` imports ray), and ``--json`` never imports rich.
"""

from __future__ import annotations

import click

from .lazy import LazyGroup

_VERBS = "forgather_control.cli."


@click.group(
    cls=LazyGroup,
    lazy={
        "list": (_VERBS + "list_cmd:list_cmd", "List jobs: running ones, and with --all those that ended."),
        "status": (_VERBS + "status_cmd:status_cmd", "Where a job is: state, step, speed, metrics, checkpoint, commands."),
        "save": (_VERBS + "send_cmd:save", "Save a checkpoint at the next agreed step."),
        "eval": (_VERBS + "send_cmd:evaluate", "Evaluate at the next agreed step."),
        "stop": (_VERBS + "send_cmd:stop", "Stop gracefully; the trainer's own end-of-training logic still runs."),
        "save-stop": (_VERBS + "send_cmd:save_stop", "Save a checkpoint, then stop."),
        "abort": (_VERBS + "send_cmd:abort", "Stop now and save nothing; the job ends 'aborted'."),
        "stacks": (_VERBS + "stacks_cmd:stacks_cmd", "Where every rank is: the Python stacks of each, from every node, grouped."),
        "cleanup": (_VERBS + "cleanup_cmd:cleanup_cmd", "Delete the records of jobs judged dead or finished."),
        "ui": (_VERBS + "ui_cmd:ui_cmd", "A web page with every job, its curves and its buttons."),
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
def control() -> None:
    """Find, watch and command running training jobs.

    JOB is a job id or a unique prefix of one. Exit codes: 0 ok, 1 the command
    failed, 2 usage, 3 job not found, 4 job unreachable.
    """
