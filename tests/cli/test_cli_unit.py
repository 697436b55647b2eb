"""In-process checks of the CLI's pure parts: the lazy group, the error boundary's
mapping, and output helpers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from forgather_control.cli import lazy, main, output
from forgather_control.core import AmbiguousJob, InvalidJobId, JobNotFound
from forgather_control.core.errors import CommandFailed, CommandRefused, Unreachable, UsageError, WaitTimeout
from forgather_control.core.records import CommandResult, Receipt


def test_exit_code_mapping() -> None:
    cases = {
        CommandRefused("x"): 1,
        CommandFailed("x"): 1,
        WaitTimeout("x"): 1,
        UsageError("x"): 2,
        AmbiguousJob("x"): 2,
        InvalidJobId("x"): 2,
        JobNotFound("x"): 3,
        Unreachable("x"): 4,
    }
    for exc, code in cases.items():
        assert main.exit_code_for(exc) == code, exc
    assert main.exit_code_for(RuntimeError("bug")) is None


@pytest.fixture
def restore_logging():
    """run() configures the root logger as the CLI does; leave it as pytest had it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_run_turns_errors_into_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    assert main.run(["control", "status", "nope", "--jobs-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: no job 'nope'") and err.count("\n") == 1
    assert main.run(["control", "status", "../x", "--jobs-dir", str(tmp_path)]) == 2
    assert main.run(["--nope"]) == 2
    assert main.run(["--help"]) == 0


def test_lazy_group_lists_without_importing_and_explains_missing() -> None:
    group = lazy.LazyGroup(
        "g",
        lazy={"gone": ("forgather_control.cli.no_such_module_here:cmd", "A command that is not installed.")},
    )
    result = CliRunner().invoke(group, ["--help"])
    assert result.exit_code == 0 and "A command that is not installed." in result.output
    assert "forgather_control.cli.no_such_module_here" not in sys.modules
    result = CliRunner().invoke(group, ["gone", "--whatever", "x"])
    assert result.exit_code == 2 and "not available in this install" in result.output


def test_lazy_group_does_not_hide_a_broken_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module that exists but fails importing something else is a real error."""
    (tmp_path / "fg_broken_cmd.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = lazy.LazyGroup("g", lazy={"b": ("fg_broken_cmd:cmd", "broken")})
    with pytest.raises(ModuleNotFoundError):
        group.get_command(click.Context(group), "b")


def test_scrub_removes_tokens_at_any_depth() -> None:
    data = {"token": "s", "a": [{"Token": "s", "b": 1}], "c": {"authorization": "Bearer s", "d": 2}}
    assert output.scrub(data) == {"a": [{"b": 1}], "c": {"d": 2}}


def test_age_and_duration() -> None:
    now = 1_000_000.0
    assert output.age(now - 12, now) == "12s ago"
    assert output.age(now - 180, now) == "3m ago"
    assert output.age(now - 7500, now) == "2h05m ago"
    assert output.age(now - 3 * 86400, now) == "3d ago"
    assert output.age(None, now) == "-" and output.age("x", now) == "-" and output.age(float("nan"), now) == "-"
    assert output.age(now + 600, now) == "in the future"
    assert output.duration(None) == "-" and output.duration(59.9) == "59s"


def test_describe_entry() -> None:
    line = output.describe_entry(Receipt(id="c-1", command="save_checkpoint", state="completed", step=5, result=CommandResult(checkpoint="/x.pt")))
    assert line == "save (c-1): completed; at step 5; checkpoint /x.pt"  # the verb typed; --json keeps the wire name
    line = output.describe_entry(Receipt(id="c-2", command="evaluate", state="dropped", reason="job stopped"))
    assert "dropped" in line and "reason: job stopped" in line
