"""`forgather` hands what is not ours to the Forgather framework's CLI: routing, argv,
exit status, and how the framework's entry point is found. In process, with fake entry
points; tests/callback/test_coexist.py does it for real with installed packages."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from forgather_control.cli import framework as fw
from forgather_control.cli import main


@pytest.fixture(autouse=True)
def restore_logging() -> Any:
    """run() configures the root logger as the CLI does; leave it as pytest had it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


class FakeFramework:
    """An entry point whose function records what it saw and ends like a console script."""

    def __init__(self, status: object = None, load_error: Exception | None = None) -> None:
        self.status, self.load_error = status, load_error
        self.value = "forgather.cli:main"
        self.dist = SimpleNamespace(name="forgather", version="9.9.9")
        self.calls: list[list[str]] = []
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        if self.load_error is not None:
            raise self.load_error

        def framework_main() -> None:
            self.calls.append(list(sys.argv))
            sys.exit(self.status)

        return framework_main


@pytest.fixture
def framework(monkeypatch: pytest.MonkeyPatch) -> FakeFramework:
    fake = FakeFramework()
    monkeypatch.setattr(fw, "entry_point", lambda: fake)
    return fake


@pytest.mark.parametrize(
    "argv, ours",
    [
        ([], True),
        (["--help"], True),
        (["-h"], True),
        (["control", "list"], True),
        (["-vv", "control", "list"], True),
        (["--verbose", "launch", "x.py"], True),
        (["-v", "--help"], True),
        (["ls"], False),
        (["-v", "ls"], False),
        (["-p", "proj", "control", "list"], False),  # a framework option: the framework's control
        (["-i"], False),
        (["--version"], False),
    ],
)
def test_which_argv_is_ours(argv: list[str], ours: bool) -> None:
    assert fw.is_ours(argv, {"control", "launch"}) is ours


def test_framework_gets_the_same_argv_and_its_status(framework: FakeFramework, capsys: pytest.CaptureFixture[str]) -> None:
    argv0 = sys.argv[0]
    framework.status = 7
    assert main.run(["-p", "proj", "ls", "--all"]) == 7
    assert framework.calls == [[argv0, "-p", "proj", "ls", "--all"]]
    assert sys.argv[0] == argv0 and "ls" not in sys.argv  # restored
    framework.status = None
    assert main.run(["train"]) == 0
    framework.status = "framework says no"
    assert main.run(["train"]) == 1
    assert "framework says no" in capsys.readouterr().err


def test_our_commands_never_touch_the_framework(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    def boom() -> None:
        raise AssertionError("looked up the framework for one of our commands")

    monkeypatch.setattr(fw, "entry_point", boom)
    assert main.run(["control", "list", "--json", "--jobs-dir", str(tmp_path)]) == 0
    assert main.run(["-v", "control", "status", "nope", "--jobs-dir", str(tmp_path)]) == 3


def test_forgather_control_never_delegates(framework: FakeFramework, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.run(["ls"], delegate=False) == 2
    err = capsys.readouterr().err
    assert "No such command 'ls'" in err and "control, launch" in err and "installed here: forgather.cli:main from forgather 9.9.9" in err
    assert framework.loads == 0


def test_without_the_framework_an_unknown_subcommand_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fw, "entry_point", lambda: None)
    assert main.run(["ls"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "No such command 'ls'" in err and "control, launch" in err and "not installed here" in err
    assert main.run(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Forgather framework's own CLI" in out and "not installed here" in out


def test_help_says_the_framework_is_installed(framework: FakeFramework, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.run(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "control" in out and "launch" in out and "installed here: forgather.cli:main from forgather 9.9.9" in out
    assert framework.loads == 0


def test_a_framework_that_fails_to_load_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeFramework(load_error=ModuleNotFoundError("No module named 'yaml'"))
    monkeypatch.setattr(fw, "entry_point", lambda: fake)
    assert main.run(["ls"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the Forgather framework's CLI (forgather.cli:main from forgather 9.9.9) failed to load") and "yaml" in err


def test_the_framework_entry_point_is_another_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    def ep(value: str, dist: str) -> SimpleNamespace:
        return SimpleNamespace(name="forgather", value=value, group="console_scripts", dist=SimpleNamespace(name=dist, version="1"))

    found: list[SimpleNamespace] = []

    def entry_points(*, group: str, name: str) -> list[SimpleNamespace]:
        assert (group, name) == ("console_scripts", "forgather")
        return found

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    found[:] = [ep("forgather_control.cli.main:main", "forgather-control"), ep("forgather_control.cli.main:main", "forgather_control_old")]
    assert fw.entry_point() is None
    found.append(ep("forgather.cli:main", "forgather"))
    assert fw.entry_point() is found[-1]
