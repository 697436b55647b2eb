"""Other users on this machine, for the tests of a jobs directory shared by many users.

The tests run as root; ``setpriv --reuid=UID --regid=GID`` runs a command as another uid
(no passwd entry needed). What such a user runs:

- plain file operations (``OtherUser.sh``: ``/bin/sh -c``), which is all most attacks need;
- this project's command line (``OtherUser.cli``), from :func:`users_python`: a venv made
  from Debian's ``/usr/bin/python3`` (root's pyenv python lives under /root, mode 700:
  other uids cannot run it), holding the project's runtime dependencies (no torch), and
  this checkout's package copied beside it. Built once under a file lock (xdist workers
  wait for one build) and cached by its inputs; building installs packages, so only a
  ``slow`` test may call it. A fresh machine needs Debian's python3 with its venv module
  (``python3-venv``: ensurepip) and pip's index (PyPI, or the mirror pip.conf names) for
  :data:`DEPS`; ``python tests/support/users.py`` builds it (``.ci/run`` does, before pytest).

:func:`shared_dir` makes a folder every uid can reach (pytest's own temp root is root's,
mode 700) with a jobs root inside at the mode a test asks for (``0o1777``, ``0o2775``
with a group); it and everything the other users wrote in it are removed afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # not support.paths: `python tests/support/users.py` runs it as a script

#: uids and a group nobody on this machine uses (no passwd entry needed)
VICTIM_UID = 1001
ATTACKER_UID = 1002
SHARED_GID = 1500
DEBIAN_PYTHON = Path("/usr/bin/python3")
CACHE = Path(os.environ.get("FORGATHER_USERS_CACHE", "/var/tmp/forgather-control-users"))
#: the project's runtime dependencies a CLI and the page need (no torch)
DEPS = ("click>=8.1", "rich>=13", "psutil>=5.9", "msgspec>=0.18", "fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.17")
_PACKAGES = ("core", "client", "serving", "callback", "launcher", "cli", "ui")


def require_setpriv() -> None:
    """These tests need root and setpriv; without them they fail (CI=true) or skip."""
    import pytest

    why = "needs root" if os.geteuid() != 0 else ("needs setpriv" if shutil.which("setpriv") is None else None)
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"a multi-user test {why}")
        pytest.skip(why)


@dataclass(frozen=True)
class OtherUser:
    """A uid other than the tests', with its primary gid and supplementary groups."""

    uid: int
    gid: int | None = None
    groups: tuple[int, ...] = ()
    python: Path | None = None
    site: Path | None = None

    def argv(self, *cmd: str | os.PathLike[str]) -> list[str]:
        """``cmd`` run as this user (setpriv)."""
        groups = ["--groups=" + ",".join(str(g) for g in self.groups)] if self.groups else ["--clear-groups"]
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid if self.gid is not None else self.uid}", *groups, *map(str, cmd)]

    def sh(self, script: str, *, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``/bin/sh -c script`` as this user; its output captured (``check``: exit 0 required)."""
        done = subprocess.run(self.argv("/bin/sh", "-c", script), cwd=cwd, capture_output=True, text=True, timeout=60, env=self.env())
        if check and done.returncode != 0:
            raise AssertionError(f"as uid {self.uid}: {script!r} exited {done.returncode}: {done.stderr}")
        return done

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment for this user: no root HOME, this checkout's package on the path when built."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", "NO_COLOR": "1", "COLUMNS": "200"}
        if self.site is not None:
            env["PYTHONPATH"] = str(self.site)
        return {**env, **extra}

    def cli(self, *args: str) -> list[str]:
        """The ``forgather`` command line as this user (needs :meth:`with_python`)."""
        if self.python is None:
            raise AssertionError("OtherUser.cli needs with_python(users_python())")
        return self.argv(self.python, "-m", "forgather_control.cli.main", *args)

    def with_python(self, built: tuple[Path, Path]) -> OtherUser:
        python, site = built
        return OtherUser(self.uid, self.gid, self.groups, python, site)


@dataclass
class SharedDir:
    """A folder every uid can reach, and the jobs root in it."""

    base: Path
    root: Path
    group: int | None = None
    made: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def shared_dir(mode: int, *, group: int | None = None) -> Iterator[SharedDir]:
    """``base`` (0755, root's) holding ``jobs`` at ``mode`` (owned by root, group
    ``group``); removed whole afterwards, whoever wrote in it."""
    base = Path(tempfile.mkdtemp(prefix="fg-shared-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        root = base / "jobs"
        root.mkdir()
        if group is not None:
            os.chown(root, 0, group)
        os.chmod(root, mode)
        yield SharedDir(base, root, group)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- the other users' python ------------------------------------------------------------
def users_python() -> tuple[Path, Path]:
    """(python, site): a venv from Debian's python3 with :data:`DEPS`, and a folder holding
    this checkout's package, both readable by every uid. Built once (file lock), cached
    by their inputs under :data:`CACHE`. Installs packages: slow tests only."""
    if not DEBIAN_PYTHON.exists():
        raise AssertionError(f"{DEBIAN_PYTHON} is missing: other users need a python outside root's home")
    _own_folder(CACHE)
    with _locked(CACHE / ".lock"):
        venv = CACHE / f"deps-{_key(repr(DEPS).encode())}"
        if not (venv / "complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run([str(DEBIAN_PYTHON), "-m", "venv", str(venv)], "python3 -m venv (Debian: apt-get install python3-venv)", timeout=300)
            _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *DEPS], "pip install (needs the package index)", timeout=600)
            (venv / "complete").write_text("ok\n")
        site = CACHE / f"src-{_source_key()}"
        if not (site / "complete").exists():
            shutil.rmtree(site, ignore_errors=True)
            for name in _PACKAGES:
                shutil.copytree(REPO / name, site / "forgather_control" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            (site / "complete").write_text("ok\n")
        for used in (venv, site):
            os.utime(used / "complete")  # in use: kept by _prune
        _prune(keep={venv.name, site.name})
    return venv / "bin" / "python", site


#: A cached build no run has used for this long is removed (each checkout's source makes one).
UNUSED_FOR = 2 * 86400.0


def _prune(*, keep: set[str]) -> None:
    """Remove the cache's builds unused for :data:`UNUSED_FOR` (another checkout's may be in
    use right now: only age says a build is no one's)."""
    for entry in CACHE.iterdir():
        if entry.name in keep or not entry.name.startswith(("deps-", "src-")) or entry.is_symlink():
            continue
        try:
            unused = time.time() - (entry / "complete").stat().st_mtime > UNUSED_FOR
        except OSError:  # half-built: as old as the folder itself
            unused = time.time() - entry.stat().st_mtime > UNUSED_FOR
        if unused:
            shutil.rmtree(entry, ignore_errors=True)


def _run(argv: list[str], what: str, *, timeout: float) -> None:
    """``argv``, or an AssertionError saying what failed and what it printed."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"building the other users' python: {what} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")


def _source_key() -> str:
    h = hashlib.sha256()
    for name in _PACKAGES:
        for path in sorted((REPO / name).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _key(data: bytes) -> str:
    return hashlib.sha256(data + b"\0" + str(DEBIAN_PYTHON.resolve()).encode()).hexdigest()[:16]


def _own_folder(path: Path) -> None:
    """The cache holds code other uids run: it must be root's, and nobody else's to write."""
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.path.isdir(path) or os.path.islink(path):
        raise AssertionError(f"{path} is not a folder of uid {os.geteuid()} that only it writes; remove it or set FORGATHER_USERS_CACHE")
    os.chmod(path, 0o755)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main() -> int:
    """Build (or reuse) the other users' python and print it; as root only (it is root's cache)."""
    if os.geteuid() != 0:
        print("support/users.py: not root; the multi-user tests build nothing here", file=sys.stderr)
        return 0
    python, site = users_python()
    print(python, site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
