"""``forgather control``: the group; each verb lives in a module of its own.

Thin over :mod:`forgather_control.client`: a verb parses options, calls the library
(:func:`~forgather_control.client.lookup.open_job`, :class:`JobHandle`,
:func:`~forgather_control.client.lookup.list_jobs`) and renders what comes back. Fast
by construction: verbs are imported only when invoked, none imports torch, fastapi or
ray (only ``--ray`` imports ray), and ``--json`` never imports rich.
"""

from __future__ import annotations

import click

from forgather_control.core.errors import exit_codes_help

from .lazy import LazyGroup

_VERBS = "forgather_control.cli."

#: The help of the verbs that send a command, said once: the group lists it without
#: importing :mod:`.send_cmd`, and each verb's own ``--help`` prints it.
SEND_HELP: dict[str, str] = {
    "save": "Save a checkpoint at the next agreed step (after an evaluation when the trainer has one set up).",
    "eval": "Evaluate at the next agreed step.",
    "stop": "Stop gracefully; the trainer's own end-of-training logic still runs.",
    "save-stop": "Save a checkpoint, then stop.",
    "abort": "Stop now and save nothing, here or at the end; the job ends 'aborted'.",
    "pause": "Save a checkpoint, then stop; the job ends 'paused', listed and kept until it is resumed.",
    "set": "Change live knobs (lr_scale=0.5 max_steps=20000 ...) on every rank at one step; `status` lists a job's knobs.",
}


@click.group(
    cls=LazyGroup,
    lazy={
        "list": (_VERBS + "list_cmd:list_cmd", "List jobs: running ones, and with --all those that ended."),
        "status": (_VERBS + "status_cmd:status_cmd", "Where a job is: state, step, speed, metrics, checkpoint, commands."),
        "save": (_VERBS + "send_cmd:save", SEND_HELP["save"]),
        "eval": (_VERBS + "send_cmd:evaluate", SEND_HELP["eval"]),
        "stop": (_VERBS + "send_cmd:stop", SEND_HELP["stop"]),
        "save-stop": (_VERBS + "send_cmd:save_stop", SEND_HELP["save-stop"]),
        "abort": (_VERBS + "send_cmd:abort", SEND_HELP["abort"]),
        "pause": (_VERBS + "send_cmd:pause", SEND_HELP["pause"]),
        "set": (_VERBS + "send_cmd:set_knobs", SEND_HELP["set"]),
        "resume": (_VERBS + "resume_cmd:resume_cmd", "Start a stopped, paused, preempted or failed job again from its own record; --from rolls back."),
        "stacks": (_VERBS + "stacks_cmd:stacks_cmd", "Where every rank is: the Python stacks of each, from every node, grouped."),
        "logs": (_VERBS + "logs_cmd:logs_cmd", "Every rank's stdout and stderr, from the job folder: its tail, or -f to follow it."),
        "cleanup": (_VERBS + "cleanup_cmd:cleanup_cmd", "Delete the records of jobs judged dead or finished."),
        "ui": (_VERBS + "ui_cmd:ui_cmd", "A web page with every job, its curves and its buttons."),
    },
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"Find, watch and command running training jobs.\n\nJOB is a job id or a unique prefix of one. {exit_codes_help()}",
)
def control() -> None:
    """The ``control`` group (its help, with the exit codes, is given above)."""
