"""A click group whose subcommands are imported only when invoked.

``forgather control list`` must answer in well under 0.3 s, so no group imports its
subcommands' modules (torch for ``launch``, rich for people's output) until one runs;
help lists them from a static table.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["LazyGroup"]


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
