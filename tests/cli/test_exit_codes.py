"""Exit codes are one table (``EXIT_CODES`` in core/errors.py): every error class
names a code in it, ``--help`` prints it, and the README's table says the same."""

from __future__ import annotations

import re

from click.testing import CliRunner
from support.paths import REPO

from forgather_control.cli.control import control
from forgather_control.cli.main import cli
from forgather_control.core import errors
from forgather_control.core.errors import EXIT_CODES, ControlError


def _error_classes(cls: type) -> list[type]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _error_classes(sub))]


def test_every_error_class_exits_with_a_code_the_table_explains():
    assert {c.exit_code for c in _error_classes(ControlError)} <= set(EXIT_CODES)
    assert {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)} == set(EXIT_CODES)


def test_the_readme_exit_code_table_is_the_table():
    readme = (REPO / "README.md").read_text()
    table = readme.split("Exit codes:\n\n", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", table, re.MULTILINE)
    assert {int(code): meaning.replace("`", "") for code, meaning in rows} == EXIT_CODES


def test_help_of_forgather_and_of_control_lists_every_exit_code():
    for group in (cli, control):
        out = " ".join(CliRunner().invoke(group, ["--help"]).output.split())
        for code, meaning in EXIT_CODES.items():
            assert f"{code} {meaning}" in out, (group.name, code)


def test_the_readmes_verb_table_is_the_command_lines() -> None:
    """Verbs shown, wire names sent: the README's table is ``CLI_VERBS``."""
    from forgather_control.core.commands import CLI_VERBS, verb

    text = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)` \| `([a-z_]+)` \|$", text, re.M)
    assert dict(rows) == {v: c.value for v, c in CLI_VERBS.items()}
    assert all(verb(c.value) == v for v, c in CLI_VERBS.items()) and verb("something_else") == "something_else"
