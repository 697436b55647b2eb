"""The Forgather framework's own CLI, for the subcommands that are not ours.

Both packages ship a ``forgather`` script; ours runs ``launch`` and ``control`` and hands
any other subcommand (or a framework option before one) to the framework's entry point,
found in the installed distributions' metadata and called with the same argv. Looking it
up reads metadata only: nothing of the framework is imported until it is called.

``forgather framework ARGS`` reaches what we shadow (the framework's own ``control``):
ARGS go to its entry point verbatim, none parsed by us (``main.run`` hands them over
before click sees them); ``passthrough`` is that subcommand for ``--help`` and for the
usage error when the framework is not installed.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import click

from forgather_control.core.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["PASSTHROUGH", "describe", "entry_point", "is_ours", "passthrough", "passthrough_args", "run"]

#: Our root options; none takes a value (``-v``, ``-vv``, ``--verbose``).
ROOT_FLAG = re.compile(r"-v+|--verbose")
SCRIPT = "forgather"
OUR_DIST = "forgather-control"
#: ``forgather framework ARGS``: the framework's own CLI with ARGS, whatever we shadow.
PASSTHROUGH = "framework"


def entry_point() -> EntryPoint | None:
    """The Forgather framework's ``forgather`` console script, or None when no other
    installed distribution declares one."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="console_scripts", name=SCRIPT):
        dist = getattr(ep, "dist", None)
        if dist is not None and re.sub(r"[-_.]+", "-", dist.name).lower() == OUR_DIST:
            continue
        if ep.value.partition(":")[0].split(".")[0] == "forgather_control":
            continue  # ours under another distribution name (an old or renamed build)
        return ep
    return None


def describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{ep.value} from {dist.name} {dist.version}" if dist is not None else ep.value


def is_ours(args: Sequence[str], commands: Collection[str]) -> bool:
    """Whether argv is for our root group: its first word after our root flags is one of
    our ``commands``, or help, or there is none. Anything else (another subcommand, or an
    option we do not have, such as the framework's ``-p DIR``) is the framework's."""
    for word in args:
        if ROOT_FLAG.fullmatch(word):
            continue
        return word in commands or word in ("-h", "--help")
    return True


def passthrough_args(args: Sequence[str]) -> list[str] | None:
    """The words after ``framework`` when it is the subcommand (after our root flags),
    exactly as given; None for any other argv."""
    for i, word in enumerate(args):
        if ROOT_FLAG.fullmatch(word):
            continue
        return list(args[i + 1 :]) if word == PASSTHROUGH else None
    return None


@click.command(
    PASSTHROUGH,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
    options_metavar="ARGS...",
)
def passthrough() -> None:
    """``forgather framework``, reached through click only when the framework is not
    installed (``main.run`` hands ARGS to it directly otherwise)."""
    raise click.UsageError(
        "the Forgather framework is not installed here: `forgather framework ARGS` runs its own CLI "
        "(its `forgather` entry point) with ARGS. Install it beside this package (the README's "
        "section With the Forgather framework's trainers has the commands)."
    )


def run(ep: EntryPoint, args: list[str], *, error: Callable[[str], None]) -> int:
    """Call the framework's console-script function as its own script would, with
    ``sys.argv`` set to the same argv, and return its exit status (an exception it does
    not catch: its traceback and 1, as from its own script)."""
    try:
        func = ep.load()
    except Exception as exc:  # noqa: BLE001 - say what broke, not a traceback of ours
        error(f"the Forgather framework's CLI ({describe(ep)}) failed to load: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    saved = sys.argv
    sys.argv = [saved[0] if saved and saved[0] else SCRIPT, *args]
    try:
        status: object = func()
    except SystemExit as exc:
        status = exc.code
    except Exception:  # noqa: BLE001 - what Python does at the top of its own script
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        sys.argv = saved
    if status is None:
        return EXIT_OK
    if isinstance(status, int):
        return int(status)
    print(status, file=sys.stderr)  # what sys.exit("message") does
    return EXIT_FAILED
