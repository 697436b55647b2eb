"""forgather-control installed beside the Forgather framework, as users do it.

The framework is a regular package ``forgather`` with its CLI at ``forgather/cli`` and its
own ``forgather`` console script. Here a tiny stand-in of it (written by the test: its
``__init__`` records every import in a marker file) goes into a fresh venv first, our
wheel (built from this tree) second, and the test checks that:

- our wheel ships nothing under ``forgather/`` and changes no framework file (only the
  shared ``bin/forgather`` script becomes ours);
- ``forgather`` runs our ``launch`` and ``control`` without importing the framework, and
  hands everything else, exit status included, to the framework's CLI;
- the same holds with the framework installed editable (``pip install -e``);
- uninstalling our wheel leaves the framework's package intact; the shared script goes
  with it, and reinstalling the framework brings its own back.

The venv sees the system's site-packages (torch, click ...), so nothing is downloaded;
every install is ``--no-deps --no-index``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.paths import REPO

pytestmark = pytest.mark.slow

FRAMEWORK_VERSION = "9.9.9"
MARKER_ENV = "STANDIN_FORGATHER_IMPORTED"

#: The stand-in framework: a regular package, its CLI in forgather/cli, its own `control`.
STANDIN: dict[str, str] = {
    "pyproject.toml": f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "forgather"
        version = "{FRAMEWORK_VERSION}"

        [project.scripts]
        forgather = "forgather.cli:main"

        [tool.setuptools.packages.find]
        where = ["src"]
        """,
    "src/forgather/__init__.py": f"""
        import os

        _marker = os.environ.get("{MARKER_ENV}")
        if _marker:
            with open(_marker, "a") as f:
                f.write("forgather imported\\n")
        """,
    "src/forgather/cli/__init__.py": """
        from .main import main

        __all__ = ["main"]
        """,
    "src/forgather/cli/__main__.py": """
        from .main import main

        if __name__ == "__main__":
            main()
        """,
    "src/forgather/cli/main.py": """
        import argparse
        import sys


        def main():
            parser = argparse.ArgumentParser(prog="forgather")
            parser.add_argument("-p", "--project-dir", default=".")
            parser.add_argument("command")
            parser.add_argument("rest", nargs=argparse.REMAINDER)
            args = parser.parse_args()
            if args.command == "ls":
                print(f"STANDIN-LS project={args.project_dir} rest={args.rest}")
            elif args.command == "control":
                from .control import control_cmd

                control_cmd(args.rest)
            elif args.command == "fail":
                sys.exit(int(args.rest[0]))
            else:
                print(f"Error: Unknown subcommand '{args.command}'")
                sys.exit(1)
        """,
    "src/forgather/cli/control.py": """
        def control_cmd(rest):
            print(f"STANDIN-CONTROL {rest}")
        """,
}


def write_standin(root: Path) -> Path:
    for rel, text in STANDIN.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "PYTHON", "PIP_", "FORGATHER_"))}
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our wheel, built once per module from a copy of this tree (the build writes
    build/ and *.egg-info next to the sources; the working tree is not ours to litter)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv", "out"))
    out = base / "dist"
    r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)], clean_env(), base)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("forgather_control-*.whl")
    return whl


@dataclass
class Venv:
    root: Path
    env: dict[str, str]
    site: Path

    @classmethod
    def create(cls, root: Path, home: Path) -> Venv:
        r = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)], clean_env(), home)
        assert r.returncode == 0, r.stderr
        env = clean_env()
        env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["FORGATHER_JOBS_DIR"] = str(home / "jobs")
        env[MARKER_ENV] = str(home / "framework-imported")
        py = str(root / "bin" / "python")
        site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env, home).stdout.strip())
        if sys.prefix != sys.base_prefix:
            # Run from a venv: --system-site-packages reaches the base interpreter's,
            # not this one's; make this one's packages (torch, click ...) visible too.
            import site as site_mod

            (site / "_outer_site.pth").write_text("\n".join(site_mod.getsitepackages()) + "\n")
        return cls(root, env, site)

    def run(self, *argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run([str(a) for a in argv], self.env, cwd or self.root.parent)

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def pip(self, *args: str | Path) -> None:
        r = self.run(self.bin("python"), "-m", "pip", *args)
        assert r.returncode == 0, r.stdout + r.stderr

    def record(self, dist: str) -> list[Path]:
        """The files pip recorded for a distribution, as paths."""
        (info,) = self.site.glob(f"{dist}-*.dist-info")
        with open(info / "RECORD", newline="") as f:
            return [(self.site / row[0]).resolve() for row in csv.reader(f) if row]


def snapshot(venv: Venv, framework_src: Path) -> dict[Path, str]:
    """sha256 of every framework file: what its RECORD lists, everything under the
    installed forgather/ and the stand-in's sources (for an editable install). Bytecode
    caches aside: they are derived, and pip rewrites them (with new source mtimes in
    them) whenever it reinstalls."""
    files = set(venv.record("forgather"))
    for tree in (venv.site / "forgather", framework_src / "src" / "forgather"):
        if tree.is_dir():
            files.update(p.resolve() for p in tree.rglob("*") if p.is_file())
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files) if p.is_file() and "__pycache__" not in p.parts}


def changed(before: dict[Path, str], after: dict[Path, str]) -> set[Path]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def install_both(tmp_path: Path, wheel: Path, editable: bool) -> tuple[Venv, Path, dict[Path, str]]:
    """A venv with the stand-in framework installed first (editable or not) and our
    wheel second; returns it, the framework's sources, and the framework's files as
    they were before our install."""
    framework = write_standin(tmp_path / "framework")
    venv = Venv.create(tmp_path / "venv", tmp_path)
    venv.pip("install", "--no-deps", "--no-index", "--no-build-isolation", "-q", *(["-e"] if editable else []), framework)
    before = snapshot(venv, framework)
    assert venv.bin("forgather").is_file()
    venv.pip("install", "--no-deps", "--no-index", "-q", wheel)
    return venv, framework, before


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


@pytest.mark.parametrize("editable", [False, True], ids=["framework-installed", "framework-editable"])
def test_both_sides_answer_beside_the_framework(tmp_path: Path, wheel: Path, editable: bool) -> None:
    venv, framework, before = install_both(tmp_path, wheel, editable)
    marker = Path(venv.env[MARKER_ENV])
    forgather, fc = venv.bin("forgather"), venv.bin("forgather-control")

    # (a) nothing of ours under forgather/, as installed
    site = venv.site.resolve()
    scripts = {forgather.resolve(), fc.resolve()}
    ours = venv.record("forgather_control")
    assert any(p.name == "main.py" and p.parent.name == "cli" for p in ours), ours
    for p in ours:
        assert not p.is_relative_to(site / "forgather"), p
        assert p.is_relative_to(site / "forgather_control") or p.parent.name.startswith("forgather_control-") or p in scripts, p

    # (b) every framework file as it was, but the shared console script, which is now ours
    after = snapshot(venv, framework)
    script = forgather.resolve()
    assert changed(before, after) == {script}, changed(before, after)
    assert "forgather_control.cli.main" in script.read_text()
    if editable:
        assert not (venv.site / "forgather").exists()  # the framework lives in its source tree

    # our code runs from the wheel, not from a checkout this interpreter can also see
    r = venv.run(venv.bin("python"), "-c", "import forgather_control.cli.main as m; print(m.__file__)")
    assert r.returncode == 0 and Path(r.stdout.strip()).is_relative_to(venv.site), r

    # (c) our side, and (d) none of it imports the framework
    r = venv.run(forgather, "control", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
    r = venv.run(fc, "control", "list")
    assert r.returncode == 0 and "does not exist yet" in r.stdout, r
    (tmp_path / "train.py").write_text("print('hello')\n")
    r = venv.run(forgather, "launch", "--dry-run", "--job-id", "coexist-1", tmp_path / "train.py")
    assert r.returncode == 0 and "forgather launch: plan (dry run" in r.stdout, r
    r = venv.run(forgather, "control", "--help")
    assert r.returncode == 0 and "STANDIN" not in r.stdout and "save-stop" in r.stdout, r
    r = venv.run(forgather, "--help")
    assert r.returncode == 0 and "launch" in r.stdout and "control" in r.stdout, r
    flat = " ".join(r.stdout.split())
    assert "goes to the Forgather framework's own CLI" in flat and f"installed here: forgather.cli:main from forgather {FRAMEWORK_VERSION}" in flat, r.stdout
    r = venv.run(fc, "ls")
    assert r.returncode == 2 and "No such command 'ls'" in r.stderr and "installed here" in r.stderr, r
    assert not marker.exists(), "our own commands imported the framework"

    # (c) the framework's side: subcommands, its global options, its exit status
    r = venv.run(forgather, "ls", "--all")
    assert r.returncode == 0 and r.stdout.strip() == "STANDIN-LS project=. rest=['--all']", r
    assert marker.read_text() == "forgather imported\n"  # the marker works
    r = venv.run(forgather, "-p", tmp_path, "ls")
    assert r.returncode == 0 and r.stdout.strip() == f"STANDIN-LS project={tmp_path} rest=[]", r
    r = venv.run(forgather, "fail", "7")
    assert r.returncode == 7, r
    r = venv.run(forgather, "nosuch")
    assert r.returncode == 1 and "Unknown subcommand 'nosuch'" in r.stdout, r  # the framework's own answer
    r = venv.run(venv.bin("python"), "-m", "forgather.cli", "control", "x")
    assert r.returncode == 0 and r.stdout.strip() == "STANDIN-CONTROL ['x']", r  # its own control, its own way
    r = venv.run(venv.bin("python"), "-m", "forgather.cli", "ls")
    assert r.returncode == 0 and r.stdout.startswith("STANDIN-LS"), r

    assert changed(before, snapshot(venv, framework)) == {script}  # running either side changed nothing


def test_uninstall_leaves_the_framework_and_takes_the_shared_script(tmp_path: Path, wheel: Path) -> None:
    venv, framework, before = install_both(tmp_path, wheel, editable=False)
    script = venv.bin("forgather")
    assert venv.run(script, "ls").stdout.startswith("STANDIN-LS")

    venv.pip("uninstall", "-y", "-q", "forgather-control")
    assert not venv.bin("forgather-control").exists()
    assert not list(venv.site.glob("forgather_control-*.dist-info"))
    assert not [p for p in (venv.site / "forgather_control").rglob("*") if p.is_file()]
    # Both RECORDs list bin/forgather (ours overwrote the framework's): pip removes it.
    assert not script.exists()
    after = snapshot(venv, framework)
    assert changed(before, after) == {script.resolve()}  # only the shared script is gone
    r = venv.run(venv.bin("python"), "-m", "forgather.cli", "ls")
    assert r.returncode == 0 and r.stdout.startswith("STANDIN-LS"), r

    # Reinstalling the framework brings its own script back, its own `control` with it.
    venv.pip("install", "--no-deps", "--no-index", "--no-build-isolation", "-q", "--force-reinstall", framework)
    assert changed(before, snapshot(venv, framework)) == set()
    r = venv.run(script, "control", "list")
    assert r.returncode == 0 and r.stdout.strip() == "STANDIN-CONTROL ['list']", r


def test_framework_installed_after_us_takes_the_forgather_script(tmp_path: Path, wheel: Path) -> None:
    """The wrong order: the framework's script replaces ours. `forgather-control` still
    answers, and reinstalling our wheel takes `forgather` back. Then the framework goes:
    `forgather ls` becomes a usage error that says the framework is not installed."""
    framework = write_standin(tmp_path / "framework")
    venv = Venv.create(tmp_path / "venv", tmp_path)
    venv.pip("install", "--no-deps", "--no-index", "-q", wheel)
    venv.pip("install", "--no-deps", "--no-index", "--no-build-isolation", "-q", framework)
    r = venv.run(venv.bin("forgather"), "control", "list")
    assert r.stdout.strip() == "STANDIN-CONTROL ['list']", r
    r = venv.run(venv.bin("forgather-control"), "control", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
    venv.pip("install", "--no-deps", "--no-index", "-q", "--force-reinstall", wheel)
    r = venv.run(venv.bin("forgather"), "control", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
    r = venv.run(venv.bin("forgather"), "ls")
    assert r.returncode == 0 and r.stdout.startswith("STANDIN-LS"), r

    # Uninstalling the framework takes the shared script too (its RECORD lists it);
    # forgather-control stays, and reinstalling our wheel brings `forgather` back.
    venv.pip("uninstall", "-y", "-q", "forgather")
    assert not venv.bin("forgather").exists()
    r = venv.run(venv.bin("forgather-control"), "control", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
    venv.pip("install", "--no-deps", "--no-index", "-q", "--force-reinstall", wheel)
    r = venv.run(venv.bin("forgather"), "ls")
    assert r.returncode == 2 and "No such command 'ls'" in r.stderr and "not installed here" in " ".join(r.stderr.split()), r
