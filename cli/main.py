"""The ``forgather`` command line: root group, lazy subcommands, and the error boundary.

Two things matter here more than anywhere else in the CLI:

- Start-up cost. ``forgather control list`` must answer in well under 0.3 s, so the
  root group knows its subcommands by name and imports each one only when it is
  invoked. ``forgather --help`` imports neither ``launch`` (torch, maybe) nor ``control``.
- One error boundary. Every expected failure (job not found, unreachable, refused ...)
  becomes one ``error: ...`` line on stderr and a documented exit code, never a
  traceback. Logging is configured here and nowhere else.

Exit codes are the table ``EXIT_CODES`` in ``core/errors.py``; ``--help`` prints it.

Beside the Forgather framework: ``forgather`` (``main``) runs our subcommands (``launch``,
``control``) and hands any other subcommand, or an option of the framework's before one,
to the framework's own ``forgather`` console script when it is installed, found through
``importlib.metadata`` and called with the same argv. Our subcommands never look it up,
so they never import it. ``forgather framework ARGS`` hands it ARGS verbatim, for what we
shadow (its ``control``). ``forgather-control`` (``control_main``) hands it nothing else.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from forgather_control.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, exit_codes_help

from . import framework
from .lazy import LazyGroup
from .output import silence_stdout

log = logging.getLogger(__name__)


#: Set by ``-v``: show tracebacks of unexpected errors.
_verbose = 0
#: Set by ``run``: True for ``forgather`` (hands foreign subcommands to the framework),
#: False for ``forgather-control``. Only help and error texts read it.
_delegating = True


class RootGroup(LazyGroup):
    """The root group: its help and its unknown-command error say where the Forgather
    framework's subcommands go, and whether the framework is installed."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(_framework_note())

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in self.commands and name not in self.lazy:
            ours = ", ".join(sorted({*self.commands, *self.lazy} - {framework.PASSTHROUGH}))
            ctx.fail(f"No such command {name!r}. This package's commands are: {ours}. {_framework_note()}")
        return super().resolve_command(ctx, args)


@click.group(
    cls=RootGroup,
    lazy={
        "control": ("forgather_control.cli.control:control", "Find, watch and command running jobs."),
        framework.PASSTHROUGH: (
            "forgather_control.cli.framework:passthrough",
            "The Forgather framework's own CLI with the arguments that follow, verbatim (its `control`: `forgather framework control list`).",
        ),
        "launch": ("forgather_control.cli.launch:launch", "Launch a training script under torchrun / SLURM."),
    },
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"forgather: launch, find, watch and command torchrun / SLURM training jobs.\n\n{exit_codes_help()}",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug); tracebacks for unexpected errors.")
def cli(verbose: int) -> None:
    """The root group: sets logging (its help, with the exit codes, is given above)."""
    global _verbose
    _verbose = verbose
    _configure_logging(verbose)


def _configure_logging(verbose: int) -> None:
    """Warnings (e.g. hostile files skipped in the jobs directory) go to stderr; -v adds
    info, -vv debug. Only the CLI configures logging; libraries just log."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_forgather_cli", False):  # ours from an earlier run() in this process
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._forgather_cli = True  # type: ignore[attr-defined]
    fmt = "%(levelname)s: %(message)s" if verbose <= 0 else "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_PrintableFormatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


class _PrintableFormatter(logging.Formatter):
    """Log lines quote file names and fields from the jobs directory: made printable,
    like everything else that reaches the terminal (a traceback keeps its newlines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        from .output import printable

        return printable(super().formatMessage(record))


def _error(message: str) -> None:
    from .output import printable  # an error may quote what a record or a server said

    msg = printable(str(message).strip()) or "unknown error"
    if not msg.startswith("error:"):
        msg = f"error: {msg}"
    try:
        click.echo(msg, err=True)
    except OSError:  # stderr closed: nowhere left to say it
        pass


def exit_code_for(exc: BaseException) -> int | None:
    """The documented exit code of an expected error, None for an unexpected one.

    Imports the error types from ``forgather_control.client`` lazily: the package is light, but
    ``forgather --help`` needs none of it.
    """
    from forgather_control.core.errors import ControlError

    return int(exc.exit_code) if isinstance(exc, ControlError) else None


def _framework_note() -> str:
    """Where the framework's subcommands go, and whether it is installed (help, errors)."""
    ep = framework.entry_point()
    status = f"installed here: {framework.describe(ep)}" if ep is not None else "not installed here"
    if _delegating:
        return (
            "Any other subcommand (ls, train, project, ...), or a framework option before one "
            "(-p, -t, -i, --no-dyn), goes to the Forgather framework's own CLI when the "
            f"framework is installed ({status}); `forgather {framework.PASSTHROUGH} ARGS` reaches any of its "
            "commands, ours by the same name included. `forgather-control` runs only this package's commands."
        )
    return (
        "This is forgather-control alone: `forgather` runs the same commands and hands every "
        f"other one to the Forgather framework's CLI when the framework is installed ({status})."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``forgather``: console-script entry point and the only place exceptions become exit codes."""
    sys.exit(run(argv))


def control_main(argv: Sequence[str] | None = None) -> None:
    """``forgather-control``: this package's commands alone, never the framework's."""
    sys.exit(run(argv, delegate=False))


def run(argv: Sequence[str] | None = None, *, delegate: bool = True) -> int:
    """Run the CLI and return its exit code (``main`` without ``sys.exit``).

    With ``delegate`` (``forgather``), an argv that is not ours goes to the Forgather
    framework's CLI when it is installed; its exit status is returned, and its errors
    are its own. ``framework ARGS`` hands it ARGS, none parsed here.
    """
    global _delegating
    _delegating = delegate
    args = list(sys.argv[1:] if argv is None else argv)
    verbatim = framework.passthrough_args(args)
    if verbatim is not None and (ep := framework.entry_point()) is not None:
        return framework.run(ep, verbatim, error=_error)
    if delegate and not framework.is_ours(args, {*cli.commands, *cli.lazy}):
        ep = framework.entry_point()
        if ep is not None:
            return framework.run(ep, args, error=_error)
    try:
        rv = cli.main(args, prog_name="forgather" if delegate else "forgather-control", standalone_mode=False)
    except click.exceptions.UsageError as exc:  # bad options, missing arguments
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C (and EOF at a prompt) into Abort: Ctrl-C keeps its 130.
        if isinstance(exc.__context__, KeyboardInterrupt):
            _error("interrupted")
            return EXIT_INTERRUPTED
        _error("aborted")
        return EXIT_FAILED
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `forgather control list | head`: the reader left; that is not our failure.
        silence_stdout()
        return EXIT_OK
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            if _verbose:
                log.exception("unexpected error")
            _error(f"unexpected {type(exc).__name__}: {exc}; rerun with -v for the traceback and report it")
            return EXIT_FAILED
        _error(str(exc))
        return code
    if isinstance(rv, bool):
        return EXIT_OK
    return rv if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":
    main()
