r"""A Python 3.12 environment with the real Forgather framework beside forgather-control.

The framework needs Python >= 3.12. Installed with its own pins it pulls another torch,
datasets and a numpy/pyarrow pair that does not import; its trainers need far less. The
recipe a user follows (CPU, Python 3.12, the framework from a checkout), and the one built
here:

    python3.12 -m venv fg && . fg/bin/activate
    pip install 'torch==2.13.0' 'transformers~=4.57' 'accelerate~=1.11' 'torchdata~=0.11' \
        'aiohttp~=3.9' 'Jinja2~=3.1' 'platformdirs~=3.10' 'PyYAML~=6.0' 'tensorboard~=2.16'
    pip install --no-deps ./forgather        # the framework's checkout
    pip install ./forgather-control          # last: `forgather` is then ours

``--no-deps``: everything the framework's trainers and CLI import is in the second line
(checked by importing them after each build, see ``IMPORTS``), at the framework's own pins
where they install (transformers~=4.57: 5.x imports, but no trainer of the framework has
been run on it). forgather-control last, so the shared ``forgather`` script is ours.

Here that is two cached layers under ``$FORGATHER_FRAMEWORK_CACHE`` (else
``~/.cache/forgather-control/framework``), built once under a file lock (parallel xdist
workers wait for one build): ``deps-KEY``, the heavy venv (torch, the line above, this
package's own dependencies, setuptools), keyed by that list; ``fw-KEY``, a venv without
pip stacked on it by a ``.pth`` file, holding the framework (from a copy of
``$FORGATHER_FRAMEWORK_SRC``, else ``../shared/vendor/forgather-f92f8b8`` beside the
checkout) and this checkout's package, editable, keyed by the framework's source, this
checkout's path and its pyproject.toml. ``python tests/support/framework.py`` builds both
and prints the interpreter (``.ci/run`` does it before pytest).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"
#: What the framework's trainers and CLI import, beside torch (the recipe's second line).
FRAMEWORK_DEPS = (
    "transformers~=4.57",
    "accelerate~=1.11",
    "torchdata~=0.11",
    "aiohttp~=3.9",
    "Jinja2~=3.1",
    "platformdirs~=3.10",
    "PyYAML~=6.0",
    "tensorboard~=2.16",
)
#: Imported after each build: the recipe holds only if these import.
IMPORTS = (
    "forgather.ml.trainer",
    "forgather.ml.trainer.accelerate.accel_trainer",
    "forgather.ml.trainer.pipeline.pipeline_trainer",
    "forgather.ml.trainer.callbacks.control_callback",
    "forgather.cli.main",
    "forgather_control.cli.main",
)
#: Bump when the way the layers are built changes.
BUILDER = 1
SRC_ENV = "FORGATHER_FRAMEWORK_SRC"
CACHE_ENV = "FORGATHER_FRAMEWORK_CACHE"
PYTHON_ENV = "FORGATHER_PYTHON312"
#: Layers nobody used for this long are removed when another one is built.
UNUSED_FOR = 2 * 86400
COMPLETE = "complete.json"
_IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc")


class Unavailable(Exception):
    """No Python 3.12 or no framework source here: a test skips (fails under CI)."""


class BuildFailed(Exception):
    """A build step failed; the message ends with its output's tail."""


def framework_source() -> Path:
    src = Path(os.environ.get(SRC_ENV) or REPO.parent / "shared" / "vendor" / "forgather-f92f8b8")
    if not (src / "pyproject.toml").is_file() or not (src / "src" / "forgather").is_dir():
        raise Unavailable(f"no Forgather framework source at {src} (set {SRC_ENV} to a checkout of it)")
    return src.resolve()


@functools.lru_cache(maxsize=1)
def find_python312() -> Path:
    """A Python 3.12 with venv and ensurepip: $FORGATHER_PYTHON312, pyenv's, else on PATH."""
    if os.environ.get(PYTHON_ENV):
        candidates = [os.environ[PYTHON_ENV]]
    else:
        pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
        found = sorted(pyenv.glob("3.12*/bin/python3.12"), key=lambda p: [int(x) if x.isdigit() else -1 for x in p.parts[-3].split(".")], reverse=True)
        candidates = [str(p) for p in found] + [c for c in (shutil.which("python3.12"), "/usr/bin/python3.12", "/usr/local/bin/python3.12") if c]
    probe = "import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 12); print(sys.executable)"
    for c in candidates:
        try:
            r = subprocess.run([c, "-c", probe], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and r.stdout.strip():
            return Path(r.stdout.strip().splitlines()[-1])
    where = f"${PYTHON_ENV}={os.environ[PYTHON_ENV]}" if os.environ.get(PYTHON_ENV) else "pyenv's versions, PATH"
    raise Unavailable(f"no Python 3.12 with venv and ensurepip found ({where}); `pyenv install 3.12` or set {PYTHON_ENV}")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "forgather-control" / "framework")


def site_packages(venv: Path) -> Path:
    return venv / "lib" / "python3.12" / "site-packages"


def _our_dependencies() -> list[str]:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return [d for d in deps if not d.replace(" ", "").startswith("torch")]  # torch is pinned above


def _key(material: object) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not p.is_symlink() and not {"build", "dist", "__pycache__"} & set(rel.parts) and not any(s.endswith(".egg-info") for s in rel.parts):
            h.update(str(rel).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _say(msg: str) -> None:
    print(f"framework venv: {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str | Path], what: str, timeout: float = 1800) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        r = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BuildFailed(f"{what}: timed out after {timeout:.0f}s: {' '.join(map(str, argv))}") from exc
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-40:])
        raise BuildFailed(f"{what} failed (exit {r.returncode}): {' '.join(map(str, argv))}\n{tail}")
    return r.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _complete(layer: Path, key: str) -> bool:
    try:
        done = json.loads((layer / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return done.get("key") == key and (layer / "venv" / "bin" / "python").exists()


def _finish(layer: Path, key: str, **material: object) -> None:
    (layer / COMPLETE).write_text(json.dumps({"key": key, **material}, indent=1, sort_keys=True) + "\n")


def _prune(root: Path, prefix: str, keep: Path) -> None:
    """Remove other layers of this kind that nobody used lately, or whose checkout is
    gone (a CI clone), or whose build never finished; never one being built."""
    now = time.time()
    for layer in root.glob(f"{prefix}-*"):
        if layer == keep or not layer.is_dir():
            continue
        with open(root / f"{layer.name}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # being built or checked right now
            marker = layer / COMPLETE
            try:
                checkout = json.loads(marker.read_text()).get("checkout")
                stale = now - marker.stat().st_mtime > UNUSED_FOR or (checkout is not None and not Path(checkout).is_dir())
            except (OSError, ValueError):
                stale = True  # an unfinished build: nobody holds its lock
            if stale:
                shutil.rmtree(layer, ignore_errors=True)


def stacked_venv(root: Path, deps: Path | None = None) -> Path:
    """A venv without pip at ``root`` that also sees the deps layer's packages (torch,
    the framework's dependencies, ours, pip, setuptools) through a ``.pth`` file; its own
    packages come first. Returns its python."""
    deps = deps or deps_layer()
    _run([find_python312(), "-m", "venv", "--without-pip", root], "creating a venv")
    site = site_packages(root)
    (site / "_forgather_deps_layer.pth").write_text(f"import site; site.addsitedir({str(site_packages(deps))!r})\n")
    return root / "bin" / "python"


def deps_layer() -> Path:
    """The heavy venv: torch, the framework's dependencies and ours (built when missing)."""
    py = find_python312()
    recipe = {"builder": BUILDER, "python": str(py), "requirements": [TORCH, *FRAMEWORK_DEPS, *_our_dependencies(), "setuptools>=68"]}
    key = _key(recipe)
    root = cache_root()
    layer = root / f"deps-{key}"
    with _locked(root / f"{layer.name}.lock"):
        if _complete(layer, key):
            (layer / COMPLETE).touch()
            return layer / "venv"
        _say(f"building {layer} (torch's CUDA wheels: about 5 GB, a minute or two)")
        t0 = time.monotonic()
        shutil.rmtree(layer, ignore_errors=True)
        layer.mkdir(parents=True)
        _run([py, "-m", "venv", layer / "venv"], "creating the deps venv")
        _run([layer / "venv" / "bin" / "python", "-m", "pip", "install", "-q", *recipe["requirements"]], "installing torch and the framework's dependencies")
        _finish(layer, key, **recipe)
        _say(f"built {layer} in {time.monotonic() - t0:.0f}s")
    _prune(root, "deps", layer)
    return layer / "venv"


def framework_venv() -> Path:
    """The venv (root) with the framework and this checkout's package, ours installed last."""
    src = framework_source()
    deps = deps_layer()
    recipe = {"builder": BUILDER, "deps": str(deps), "framework": _tree_hash(src), "checkout": str(REPO), "pyproject": (REPO / "pyproject.toml").read_text()}
    key = _key(recipe)
    root = cache_root()
    layer = root / f"fw-{key}"
    venv = layer / "venv"
    with _locked(root / f"{layer.name}.lock"):
        if _complete(layer, key) and _points_here(venv):
            (layer / COMPLETE).touch()
            return venv
        _say(f"building {layer} (the framework from {src}, forgather-control from {REPO})")
        shutil.rmtree(layer, ignore_errors=True)
        layer.mkdir(parents=True)
        py = stacked_venv(venv, deps)
        copy = layer / "framework-src"
        shutil.copytree(src, copy, ignore=_IGNORE)  # the build writes beside the sources; shared/ is read-only
        pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
        _run([*pip, copy], "installing the framework (--no-deps)")
        _run([*pip, "-e", REPO], "installing forgather-control from this checkout (editable)")
        shutil.rmtree(copy)
        _run([py, "-c", "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]", *IMPORTS], "importing the framework's trainers and CLI")
        script = (venv / "bin" / "forgather").read_text()
        if "forgather_control.cli.main" not in script:
            raise BuildFailed(f"{venv / 'bin' / 'forgather'} is not forgather-control's script:\n{script}")
        _finish(layer, key, checkout=str(REPO), framework_source=str(src), deps=str(deps))
    _prune(root, "fw", layer)
    return venv


def _points_here(venv: Path) -> bool:
    """Whether forgather-control in ``venv`` is the editable install of this checkout."""
    for info in site_packages(venv).glob("forgather_control-*.dist-info"):
        try:
            url = json.loads((info / "direct_url.json").read_text())
        except (OSError, ValueError):
            return False
        return url.get("url") == REPO.as_uri() and bool(url.get("dir_info", {}).get("editable"))
    return False


def framework_python() -> Path:
    """The python3.12 of the framework venv (built when missing), for a test: skips when
    no Python 3.12 or framework source is here (fails under CI=true); a failed build fails."""
    return _in_test(framework_venv) / "bin" / "python"


def framework_deps() -> Path:
    """The deps layer (built when missing), for a test that stacks venvs of its own on it
    (``Venv.create``); skips or fails as ``framework_python`` does."""
    return _in_test(deps_layer)


def _in_test(build: Callable[[], Path]) -> Path:
    import pytest

    from support.services import require_service

    try:
        return build()
    except Unavailable as exc:
        require_service("the Forgather framework on Python 3.12", False, str(exc))
        raise  # not reached: require_service skips or fails
    except BuildFailed as exc:
        pytest.fail(f"building the framework venv (tests/support/framework.py) failed: {exc}", pytrace=False)


@dataclass
class Venv:
    """A throw-away venv on the deps layer, for installing the framework and our wheel in
    the orders users do (tests/callback/test_coexist.py): its own HOME, jobs dir and PATH."""

    root: Path
    env: dict[str, str]
    site: Path

    @classmethod
    def create(cls, root: Path, home: Path, deps: Path) -> Venv:
        stacked_venv(root, deps)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "PYTHON", "PIP_", "FORGATHER_", "VIRTUAL_ENV"))}
        env.update(PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}", HOME=str(home), FORGATHER_JOBS_DIR=str(home / "jobs"))
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        home.mkdir(parents=True, exist_ok=True)
        return cls(root, env, site_packages(root))

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def run(self, *argv: str | Path, extra_env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **(extra_env or {})}
        return subprocess.run([str(a) for a in argv], env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def pip(self, *args: str | Path) -> None:
        """``pip ARGS`` with nothing from an index (everything else is in the deps layer)."""
        r = self.run(self.bin("python"), "-m", "pip", *args)
        assert r.returncode == 0, r.stdout + r.stderr

    def install(self, what: Path, *opts: str) -> None:
        self.pip("install", "-q", "--no-deps", "--no-index", "--no-build-isolation", *opts, what)

    def record(self, dist: str) -> list[Path]:
        """The files pip recorded for a distribution, as paths."""
        (info,) = self.site.glob(f"{dist}-*.dist-info")
        with open(info / "RECORD", newline="") as f:
            return [(self.site / row[0]).resolve() for row in csv.reader(f) if row]

    def imported(self, *argv: str | Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        """Run ``argv``; also the modules of the framework (``forgather``, ``forgather.*``)
        it imported, from Python's own import log (its stderr is the log's too)."""
        r = self.run(*argv, extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
        names = {line.rpartition("|")[2].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
        return r, {n for n in names if n == "forgather" or n.startswith("forgather.")}


def framework_files(venv: Venv, source: Path) -> dict[Path, str]:
    """sha256 of every file of the framework: what its RECORD lists, everything under the
    installed forgather/ and under its sources (an editable install). Bytecode aside: pip
    rewrites it whenever it reinstalls."""
    files = set(venv.record("forgather"))
    for tree in (venv.site / "forgather", source / "src" / "forgather"):
        if tree.is_dir():
            files.update(p.resolve() for p in tree.rglob("*") if p.is_file())
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files) if p.is_file() and "__pycache__" not in p.parts}


def copy_framework(dest: Path) -> Path:
    """A copy of the framework's source to install from (a build writes beside it)."""
    shutil.copytree(framework_source(), dest, ignore=_IGNORE)
    return dest


def framework_env(python: Path, jobs_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """``support.env.base_env`` with the framework venv's bin/ first on PATH, so
    ``forgather`` there is the venv's (ours, handing the framework its commands)."""
    from support.env import base_env

    env = base_env(jobs_dir, **extra)
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


def main() -> int:
    """Build (or reuse) the framework venv and print its python; 1 when that fails, or
    under CI=true when no Python 3.12 or framework source is here."""
    try:
        py = framework_venv() / "bin" / "python"
    except Unavailable as exc:
        ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
        _say(f"{exc}: the framework's tests will {'fail (CI=true)' if ci else 'be skipped'}")
        return 1 if ci else 0
    except BuildFailed as exc:
        _say(str(exc))
        return 1
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
