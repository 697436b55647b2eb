"""forgather-control installed beside the real Forgather framework, as users do it.

The framework (a copy of ../shared/vendor/forgather-f92f8b8, Python 3.12) and our wheel
(built from this tree) go into fresh venvs in both orders, the framework plain or editable.
Each venv is stacked on the cached deps layer of ``support.framework`` (torch and the rest
are not installed again): every install is ``--no-deps --no-index``. The slow tests check:

- our wheel ships nothing under ``forgather/`` and changes no framework file (their hashes,
  its RECORD's and its sources', before and after; only the shared ``bin/forgather``
  becomes ours);
- ``forgather launch`` and ``control`` are ours and import nothing of the framework
  (Python's own import log says so); every other subcommand, with the framework's global
  options, goes to the framework's CLI and ends with its exit status;
- ``forgather framework ARGS`` reaches what we shadow (its ``control``);
- the other order, and uninstalling either package, do what the README says.

The quick tests check the passthrough in process (argv verbatim, its refusal without the
framework) and that the README's install recipe is the one ``support.framework`` builds.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import framework as fwenv
from support.framework import Venv, copy_framework, framework_deps, framework_files
from support.paths import REPO

from forgather_control.cli import framework as fw
from forgather_control.cli import main

FRAMEWORK_VERSION = "2024.0.0a1"
#: The framework's own answers, as its CLI prints them.
NO_PROJECTS = "No projects where fouund at or below"
NO_JOBS = "No discoverable training jobs found."
#: The framework's CLI without any `forgather` script (what the README gives after an uninstall).
FRAMEWORK_MAIN = "import sys; from forgather.cli import main; sys.exit(main())"


def changed(before: dict[Path, str], after: dict[Path, str]) -> set[Path]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our wheel, built once per module from a copy of this tree (the build writes
    build/ and *.egg-info next to the sources; the working tree is not ours to litter)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv", "out"))
    out = base / "dist"
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=base, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("forgather_control-*.whl")
    return whl


@pytest.fixture
def venv(tmp_path: Path) -> Venv:
    """A fresh venv on the deps layer (skips without Python 3.12; fails under CI=true)."""
    return Venv.create(tmp_path / "venv", tmp_path / "home", framework_deps())


def install_both(tmp_path: Path, venv: Venv, wheel: Path, editable: bool) -> tuple[Path, dict[Path, str]]:
    """The framework first (editable or not), our wheel second; returns the framework's
    source copy and its files as they were before our install."""
    source = copy_framework(tmp_path / "framework")
    venv.install(source, *(["-e"] if editable else []))
    before = framework_files(venv, source)
    assert venv.bin("forgather").is_file()
    venv.install(wheel)
    return source, before


@pytest.mark.slow
def test_wheel_ships_nothing_under_forgather(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        recorded = [row[0] for row in csv.reader(z.read(record).decode().splitlines()) if row]
        (eps,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(eps).decode()
    for path in names + recorded:
        assert not path.startswith("forgather/"), path
        assert path.startswith(("forgather_control/", "forgather_control-")), path
    assert "forgather = forgather_control.cli.main:main" in entry_points
    assert "forgather-control = forgather_control.cli.main:control_main" in entry_points


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["framework-installed", "framework-editable"])
def test_both_sides_answer_beside_the_real_framework(tmp_path: Path, venv: Venv, wheel: Path, editable: bool) -> None:
    source, before = install_both(tmp_path, venv, wheel, editable)
    forgather, fc, py = venv.bin("forgather"), venv.bin("forgather-control"), venv.bin("python")
    home = Path(venv.env["HOME"])

    # (a) nothing of ours under forgather/, as installed
    site = venv.site.resolve()
    scripts = {forgather.resolve(), fc.resolve()}
    ours = venv.record("forgather_control")
    assert any(p.name == "main.py" and p.parent.name == "cli" for p in ours), ours
    for p in ours:
        assert not p.is_relative_to(site / "forgather"), p
        assert p.is_relative_to(site / "forgather_control") or p.parent.name.startswith("forgather_control-") or p in scripts, p

    # (b) every framework file as it was, but the shared console script, which is now ours
    script = forgather.resolve()
    assert changed(before, framework_files(venv, source)) == {script}
    assert "forgather_control.cli.main" in script.read_text()
    if editable:
        assert not (venv.site / "forgather").exists()  # the framework lives in its source tree
    r = venv.run(py, "-c", "import forgather_control.cli.main as m; print(m.__file__)")
    assert r.returncode == 0 and Path(r.stdout.strip()).is_relative_to(venv.site), r  # our wheel's code

    # (c) our side, importing nothing of the framework
    r, imported = venv.imported(forgather, "control", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]" and not imported, (r.stdout, imported)
    r, imported = venv.imported(fc, "control", "list")
    assert r.returncode == 0 and "does not exist yet" in r.stdout and not imported, (r.stdout, imported)
    (home / "train.py").write_text("print('hello')\n")
    r, imported = venv.imported(forgather, "launch", "--dry-run", "--job-id", "coexist-1", home / "train.py")
    assert r.returncode == 0 and "forgather launch: plan (dry run" in r.stdout and not imported, (r.stdout, imported)
    r, imported = venv.imported(forgather, "control", "--help")
    assert r.returncode == 0 and "save-stop" in r.stdout and not imported, (r.stdout, imported)
    r, imported = venv.imported(forgather, "--help")
    assert r.returncode == 0 and not imported, imported
    flat = " ".join(r.stdout.split())
    assert all(f"\n  {c} " in r.stdout for c in ("control", "framework", "launch")), r.stdout
    assert "goes to the Forgather framework's own CLI" in flat and f"installed here: forgather.cli:main from forgather {FRAMEWORK_VERSION}" in flat, flat
    r = venv.run(fc, "ls")
    assert r.returncode == 2 and "No such command 'ls'" in r.stderr and "installed here" in r.stderr, r

    # (d) the framework's side: its subcommands, its global options, its exit status
    r, imported = venv.imported(forgather, "ls")
    assert r.returncode == 0 and r.stdout.strip() == f"{NO_PROJECTS} .", r
    assert "forgather.cli.main" in imported  # the import log does see the framework
    r = venv.run(forgather, "-p", tmp_path, "ls")
    assert r.returncode == 0 and r.stdout.strip() == f"{NO_PROJECTS} {tmp_path}", r
    r = venv.run(forgather, "ls", "--bogus")
    assert r.returncode == 2 and "forgather ls: error: unrecognized arguments: --bogus" in r.stderr, r  # argparse's exit 2, the framework's
    r = venv.run(forgather, "nosuch")
    assert r.returncode == 1 and r.stdout.startswith("Error: Unknown subcommand 'nosuch'"), r

    # (e) what we shadow: the framework's own `control`, through `forgather framework`
    r = venv.run(forgather, "framework", "control", "list")
    assert r.returncode == 0 and r.stdout.strip() == NO_JOBS, r
    r = venv.run(forgather, "framework", "ls", "--bogus")
    assert r.returncode == 2 and "forgather ls: error: unrecognized arguments: --bogus" in r.stderr, r
    r = venv.run(forgather, "framework", "--help")
    assert r.returncode == 0 and "Forgather CLI" in r.stdout and "Control running training jobs" in r.stdout, r
    r = venv.run(py, "-c", FRAMEWORK_MAIN, "control", "list")
    assert r.returncode == 0 and r.stdout.strip() == NO_JOBS, r
    # The real package has no forgather/cli/__main__.py: `python -m forgather.cli` is no way in.
    r = venv.run(py, "-m", "forgather.cli", "control", "list")
    assert r.returncode == 1 and "No module named forgather.cli.__main__" in r.stderr, r

    assert changed(before, framework_files(venv, source)) == {script}  # running either side changed nothing


@pytest.mark.slow
def test_uninstall_leaves_the_framework_and_takes_the_shared_script(tmp_path: Path, venv: Venv, wheel: Path) -> None:
    source, before = install_both(tmp_path, venv, wheel, editable=False)
    script = venv.bin("forgather")
    assert venv.run(script, "ls").stdout.startswith(NO_PROJECTS)

    venv.pip("uninstall", "-y", "-q", "forgather-control")
    assert not venv.bin("forgather-control").exists()
    assert not list(venv.site.glob("forgather_control-*.dist-info"))
    assert not [p for p in (venv.site / "forgather_control").rglob("*") if p.is_file()]
    # Both RECORDs list bin/forgather (ours overwrote the framework's): pip removes it.
    assert not script.exists()
    assert changed(before, framework_files(venv, source)) == {script.resolve()}  # only the shared script is gone
    r = venv.run(venv.bin("python"), "-c", FRAMEWORK_MAIN, "control", "list")
    assert r.returncode == 0 and r.stdout.strip() == NO_JOBS, r

    # Reinstalling the framework brings its own script back, its own `control` with it.
    venv.install(source, "--force-reinstall")
    assert changed(before, framework_files(venv, source)) == set()
    r = venv.run(script, "control", "list")
    assert r.returncode == 0 and r.stdout.strip() == NO_JOBS, r


@pytest.mark.slow
def test_framework_installed_after_us_takes_the_forgather_script(tmp_path: Path, venv: Venv, wheel: Path) -> None:
    """The wrong order: the framework's script replaces ours. `forgather-control` still
    answers, and reinstalling our wheel takes `forgather` back. Then the framework goes:
    `forgather ls` and `forgather framework ...` are usage errors that say it is not installed."""
    source = copy_framework(tmp_path / "framework")
    venv.install(wheel)
    venv.install(source)
    r = venv.run(venv.bin("forgather"), "control", "list")
    assert r.returncode == 0 and r.stdout.strip() == NO_JOBS, r  # the framework's control
    r = venv.run(venv.bin("forgather"), "launch", "--dry-run", "x.py")
    assert r.returncode == 1 and "Unknown subcommand 'launch'" in r.stdout, r
    r = venv.run(venv.bin("forgather-control"), "control", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
    venv.install(wheel, "--force-reinstall")
    r = venv.run(venv.bin("forgather"), "control", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
    r = venv.run(venv.bin("forgather"), "ls")
    assert r.returncode == 0 and r.stdout.strip() == f"{NO_PROJECTS} .", r
    r = venv.run(venv.bin("forgather"), "framework", "control", "list")
    assert r.returncode == 0 and r.stdout.strip() == NO_JOBS, r

    # Uninstalling the framework takes the shared script too (its RECORD lists it);
    # forgather-control stays, and reinstalling our wheel brings `forgather` back.
    venv.pip("uninstall", "-y", "-q", "forgather")
    assert not venv.bin("forgather").exists()
    r = venv.run(venv.bin("forgather-control"), "control", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
    venv.install(wheel, "--force-reinstall")
    r = venv.run(venv.bin("forgather"), "ls")
    assert r.returncode == 2 and "No such command 'ls'" in r.stderr and "not installed here" in " ".join(r.stderr.split()), r
    r = venv.run(venv.bin("forgather"), "framework", "control", "list")
    assert r.returncode == 2 and "the Forgather framework is not installed here" in r.stderr, r


# Quick: the passthrough in process, with a stand-in entry point (no framework installed).


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """run() configures the root logger as the CLI does; leave it as pytest had it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def fake_framework(monkeypatch: pytest.MonkeyPatch, behave: Any) -> list[list[str]]:
    """The framework's entry point, standing in: records sys.argv, then ``behave()``."""
    calls: list[list[str]] = []

    def framework_main() -> Any:
        calls.append(list(sys.argv[1:]))
        return behave()

    ep = SimpleNamespace(value="forgather.cli:main", dist=SimpleNamespace(name="forgather", version="9.9.9"), load=lambda: framework_main)
    monkeypatch.setattr(fw, "entry_point", lambda: ep)
    return calls


@pytest.mark.usefixtures("restore_logging")
def test_forgather_framework_hands_its_arguments_over_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_framework(monkeypatch, lambda: sys.exit(3))
    assert main.run(["framework", "control", "list", "--help", "--", "-p", "x"]) == 3
    assert main.run(["-v", "framework"]) == 3
    assert main.run(["framework", "launch", "--dry-run"], delegate=False) == 3  # forgather-control too: it was asked for
    assert calls == [["control", "list", "--help", "--", "-p", "x"], [], ["launch", "--dry-run"]]


@pytest.mark.usefixtures("restore_logging")
def test_a_framework_command_that_raises_ends_with_its_traceback_and_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """As from the framework's own script: Python's traceback, exit 1; not our 'report it'."""

    def boom() -> None:
        raise ValueError("No projects where fouund at or below .")

    fake_framework(monkeypatch, boom)
    assert main.run(["framework", "tlist"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and err.rstrip().endswith("ValueError: No projects where fouund at or below ."), err
    assert main.run(["tlist"]) == 1  # the same when delegated
    assert "ValueError" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_logging")
def test_forgather_framework_without_the_framework_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fw, "entry_point", lambda: None)
    for argv in (["framework", "control", "list"], ["framework"], ["framework", "--help"]):
        assert main.run(argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "Error: the Forgather framework is not installed here: `forgather framework ARGS` runs its own CLI" in err, err
    assert main.run(["--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  framework +The Forgather framework's own CLI", out, re.M), out


def test_the_readme_recipe_is_the_one_the_tests_build() -> None:
    """One recipe: the README's install command names exactly what support.framework
    installs, and the framework goes in with --no-deps before this package."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## With the Forgather framework's trainers") :]
    section = section[: section.index("\n## ", 4)]
    for text in (section, fwenv.__doc__ or ""):
        (line,) = [ln for ln in text.replace("\\\n", " ").splitlines() if "'torch==" in ln]
        assert re.findall(r"'([^']+)'", line) == [fwenv.TORCH, *fwenv.FRAMEWORK_DEPS], line
        assert text.index("pip install --no-deps") < text.index("forgather-control", text.index("pip install --no-deps")), text
