"""The ``forgather`` command line: root group, lazy subcommands, and the error boundary.

Two things matter here more than anywhere else in the CLI:

- Start-up cost. ``forgather control list`` must answer in well under 0.3 s, so the
  root group knows its subcommands by name and imports each one only when it is
  invoked. ``forgather --help`` imports neither ``launch`` (torch, maybe) nor ``control``.
- One error boundary. Every expected failure (job not found, unreachable, refused ...)
  becomes one ``error: ...`` line on stderr and a documented exit code, never a
  traceback. Logging is configured here and nowhere else.

Exit codes: 0 ok, 1 the command failed (refused, failed, dropped, timed out), 2 usage
(bad options, ambiguous prefix, bad job id), 3 job not found, 4 job unreachable; 130
when Ctrl-C ends a command (a command already sent stays queued).

Beside the Forgather framework: ``forgather`` (``main``) runs our subcommands (``launch``,
``control``) and hands any other subcommand, or an option of the framework's before one,
to the framework's own ``forgather`` console script when it is installed, found through
``importlib.metadata`` and called with the same argv. Our subcommands never look it up,
so they never import it. ``forgather-control`` (``control_main``) is ours alone.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from forgather_control.control.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

from .output import silence_stdout

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger(__name__)


#: Set by ``-v``: show tracebacks of unexpected errors.
_verbose = 0
#: Set by ``run``: True for ``forgather`` (hands foreign subcommands to the framework),
#: False for ``forgather-control``. Only help and error texts read it.
_delegating = True


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked.

    ``lazy`` maps a command name to ``("module:attribute", "short help")``. The short
    help is static so that ``--help`` lists the commands without importing them.
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in self.lazy:
            return None
        target, short_help = self.lazy[cmd_name]
        module_name, attr = target.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # a dependency of the module is missing: say so, do not hide it
            return _missing_command(cmd_name, module_name, short_help)
        command = getattr(module, attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from the static table, so ``--help`` imports nothing."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                cmd = self.commands[name]
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
            else:
                rows.append((name, self.lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _missing_command(name: str, module_name: str, short_help: str) -> click.Command:
    """A stand-in for a subcommand whose module is not part of this install."""

    def callback(**_: Any) -> None:
        raise click.UsageError(
            f"`forgather {name}` is not available in this install ({module_name} is missing); reinstall forgather-control or upgrade to a version that ships it"
        )

    return click.Command(
        name,
        callback=callback,
        help=short_help,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    )


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
            ours = ", ".join(sorted({*self.commands, *self.lazy}))
            ctx.fail(f"No such command {name!r}. This package's commands are: {ours}. {_framework_note()}")
        return super().resolve_command(ctx, args)


@click.group(
    cls=RootGroup,
    lazy={
        "control": ("forgather_control.cli.control:control", "Find, watch and command running jobs."),
        "launch": ("forgather_control.cli.launch:launch", "Launch a training script under torchrun / SLURM."),
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug); tracebacks for unexpected errors.")
def cli(verbose: int) -> None:
    """forgather: launch, find, watch and command torchrun / SLURM training jobs.

    Exit codes: 0 ok, 1 the command failed, 2 usage, 3 job not found, 4 job unreachable.
    """
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

    Imports the error types from ``forgather_control.control`` lazily: the package is light, but
    ``forgather --help`` needs none of it.
    """
    from forgather_control.control.errors import ControlError

    return int(exc.exit_code) if isinstance(exc, ControlError) else None


#: Our root options; none takes a value (``-v``, ``-vv``, ``--verbose``).
_OUR_ROOT_FLAG = re.compile(r"-v+|--verbose")
_FRAMEWORK_SCRIPT = "forgather"
_OUR_DIST = "forgather-control"


def framework_entry_point() -> EntryPoint | None:
    """The Forgather framework's ``forgather`` console script, or None when no other
    installed distribution declares one. Reads metadata only; imports nothing of it."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="console_scripts", name=_FRAMEWORK_SCRIPT):
        dist = getattr(ep, "dist", None)
        if dist is not None and re.sub(r"[-_.]+", "-", dist.name).lower() == _OUR_DIST:
            continue
        if ep.value.partition(":")[0].split(".")[0] == "forgather_control":
            continue  # ours under another distribution name (an old or renamed build)
        return ep
    return None


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{ep.value} from {dist.name} {dist.version}" if dist is not None else ep.value


def _framework_note() -> str:
    """Where the framework's subcommands go, and whether it is installed (help, errors)."""
    ep = framework_entry_point()
    status = f"installed here: {_describe(ep)}" if ep is not None else "not installed here"
    if _delegating:
        return (
            "Any other subcommand (ls, train, project, ...), or a framework option before one "
            "(-p, -t, -i, --no-dyn), goes to the Forgather framework's own CLI when the "
            f"framework is installed ({status}). `forgather-control` runs only this package's commands."
        )
    return (
        "This is forgather-control alone: `forgather` runs the same commands and hands every "
        f"other one to the Forgather framework's CLI when the framework is installed ({status})."
    )


def _ours(args: Sequence[str]) -> bool:
    """Whether argv is for our root group: its first word after our root flags is one of
    our subcommands, or help, or there is none. Anything else (another subcommand, or
    an option we do not have, such as the framework's ``-p DIR``) is the framework's."""
    for word in args:
        if _OUR_ROOT_FLAG.fullmatch(word):
            continue
        return word in cli.lazy or word in cli.commands or word in ("-h", "--help")
    return True


def _run_framework(ep: EntryPoint, args: list[str]) -> int:
    """Call the framework's console-script function as its own script would, with
    ``sys.argv`` set to the same argv, and return its exit status."""
    try:
        func = ep.load()
    except Exception as exc:  # noqa: BLE001 - say what broke, not a traceback of ours
        _error(f"the Forgather framework's CLI ({_describe(ep)}) failed to load: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    saved = sys.argv
    sys.argv = [saved[0] if saved and saved[0] else _FRAMEWORK_SCRIPT, *args]
    try:
        status: object = func()
    except SystemExit as exc:
        status = exc.code
    finally:
        sys.argv = saved
    if status is None:
        return EXIT_OK
    if isinstance(status, int):
        return int(status)
    print(status, file=sys.stderr)  # what sys.exit("message") does
    return EXIT_FAILED


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
    are its own.
    """
    global _delegating
    _delegating = delegate
    args = list(sys.argv[1:] if argv is None else argv)
    if delegate and not _ours(args):
        ep = framework_entry_point()
        if ep is not None:
            return _run_framework(ep, args)
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
