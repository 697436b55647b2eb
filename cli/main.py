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
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from forgather_control.control.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

from .output import silence_stdout

log = logging.getLogger(__name__)


#: Set by ``-v``: show tracebacks of unexpected errors.
_verbose = 0


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
            f"`forgather {name}` is not available in this install ({module_name} is missing); "
            "reinstall forgather-control or upgrade to a version that ships it"
        )

    return click.Command(
        name,
        callback=callback,
        help=short_help,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    )


@click.group(
    cls=LazyGroup,
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
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)


def _error(message: str) -> None:
    msg = str(message).strip() or "unknown error"
    if not msg.startswith("error:"):
        msg = f"error: {msg}"
    try:
        click.echo(msg, err=True)
    except Exception:
        pass


def exit_code_for(exc: BaseException) -> int | None:
    """The documented exit code of an expected error, None for an unexpected one.

    Imports the error types from ``forgather_control.control`` lazily: the package is light, but
    ``forgather --help`` needs none of it.
    """
    from forgather_control.control.errors import ControlError

    return int(exc.exit_code) if isinstance(exc, ControlError) else None


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point and the only place exceptions become exit codes."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (``main`` without ``sys.exit``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args, prog_name="forgather", standalone_mode=False)
    except click.exceptions.UsageError as exc:  # bad options, missing arguments
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
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
    except Exception as exc:  # noqa: BLE001 - the boundary
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
