"""Issue 5, the parts that need no cluster: Ray stays optional and out of every other
command, and its absence (or a missing cluster) is a clear error, not a traceback.

Each check runs in a fresh interpreter so ``sys.modules`` tells the truth.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
from support.env import base_env
from support.paths import REPO
from support.ports import free_port

# Makes ``ray`` invisible the way an install without it is: PathFinder is replaced by
# one that finds everything else, so find_spec("ray") is None and importing it raises
# ModuleNotFoundError.
HIDE_RAY = """
import importlib.machinery, sys
class _HideRay:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    @staticmethod
    def invalidate_caches():
        importlib.machinery.PathFinder.invalidate_caches()
sys.meta_path[:] = [_HideRay if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""

REPORT_RAY = "import atexit, sys; atexit.register(lambda: print('RAY_IMPORTED=%s' % ('ray' in sys.modules), file=sys.stderr))\n"


def py(code: str, env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_import_and_plain_list_leave_ray_out(jobs_dir: Path) -> None:
    env = base_env(jobs_dir, RAY_AUTH_MODE="disabled")
    r = py(
        "import sys, forgather_control.client as c; c.JobHandle; c.open_job; c.scan\n"
        "print('ray' in sys.modules, 'forgather_control.client.ray_listing' in sys.modules)",
        env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
    # Touching the lazy names loads the module, still without Ray.
    r = py("import sys, forgather_control.client as c; c.list_cluster; c.RayNotInstalled; print('ray' in sys.modules)", env)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    for argv in (["control", "list"], ["control", "list", "--json"], ["control", "list", "--all", "--json"], ["control", "status", "nope"]):
        r = py(REPORT_RAY + f"from forgather_control.cli.main import run; sys.exit(run({argv!r}))", env)
        assert "RAY_IMPORTED=False" in r.stderr, (argv, r.stderr)


def test_ray_absent_is_a_clear_error(jobs_dir: Path) -> None:
    env = base_env(jobs_dir, RAY_AUTH_MODE="disabled")
    r = py(
        HIDE_RAY
        + "from forgather_control.client import list_cluster, RayNotInstalled, ControlError\n"
        + "try:\n    list_cluster(address=None, jobs_dir=None)\n"
        + "except RayNotInstalled as e:\n    print(isinstance(e, ControlError), e.exit_code, e)\n",
        env,
    )
    assert r.returncode == 0, r.stderr
    is_control_error, code, message = r.stdout.split(" ", 2)
    assert (is_control_error, code) == ("True", "2")
    assert "pip install 'forgather-control[ray]'" in message
    r = py(HIDE_RAY + "from forgather_control.client.ray_listing import find_job\nfind_job('x', address=None, jobs_dir=None)", env)
    assert "RayNotInstalled" in r.stderr and "forgather-control[ray]" in r.stderr

    # The CLI: exit 2, one line naming the extra, no traceback.
    r = py(HIDE_RAY + "import sys; from forgather_control.cli.main import run; sys.exit(run(['control', 'list', '--ray-address', '127.0.0.1:1']))", env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "forgather-control[ray]" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_no_cluster_is_a_clear_error_and_fast(jobs_dir: Path) -> None:
    """We never start a cluster: a dead address fails in seconds, saying what to do."""
    env = base_env(jobs_dir, RAY_AUTH_MODE="disabled", RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    code = (
        "import json, time; from forgather_control.client import list_cluster, RayUnavailable\n"
        "t = time.monotonic()\n"
        "try:\n    list_cluster(address=None, jobs_dir=None)\n"
        "except RayUnavailable as e:\n    print(json.dumps([e.exit_code, str(e), time.monotonic() - t]))\n"
    )
    t0 = time.monotonic()
    r = py(code, env)
    assert r.returncode == 0, r.stderr
    exit_code, message, took = json.loads(r.stdout)
    assert exit_code == 4 and env["RAY_ADDRESS"] in message and "ray start --head" in message, message
    assert took < 10 and time.monotonic() - t0 < 60
    r = py("import sys; from forgather_control.cli.main import run; sys.exit(run(['control', 'list', '--ray']))", env)
    assert r.returncode == 4, r.stderr
    assert env["RAY_ADDRESS"] in r.stderr and "Traceback" not in r.stderr, r.stderr


# A "cluster" that accepts connections and never answers (on every address: Ray
# connects to this machine's routable address, not 127.0.0.1), and a helper that calls
# ``then()`` once the caller's Ray driver is inside ray.init (its second connection,
# after the address check); ``drivers`` then holds it.
SILENT_CLUSTER = (
    "import json, socket, sys, threading, time, psutil\n"
    "from forgather_control.client import list_cluster, RayUnavailable\n"
    "srv = socket.socket(); srv.bind(('0.0.0.0', 0)); srv.listen(16); held = []; drivers = []\n"
    "threading.Thread(target=lambda: [held.append(srv.accept()) for _ in range(1000)], daemon=True).start()\n"
    "def when_the_driver_waits(then):\n"
    "    while True:\n"
    "        drivers[:] = [c for c in psutil.Process().children() if 'forgather_control.client.ray_child' in ' '.join(c.cmdline())]\n"
    "        if drivers and len(held) >= 2:\n"
    "            return then()\n"
    "        time.sleep(0.02)\n"
)


def test_a_ray_driver_that_dies_leaves_the_caller_standing(jobs_dir: Path) -> None:
    """Ray may end its driver's process from inside; the driver is a child interpreter,
    so the caller (a web page's server, a script) gets RayUnavailable and lives on. The
    "cluster" here (SILENT_CLUSTER) holds the driver inside ray.init until the test
    kills it; the caller itself never imports Ray."""
    code = SILENT_CLUSTER + (
        "def kill_the_driver():\n"
        "    drivers[0].kill()\n"
        "threading.Thread(target=when_the_driver_waits, args=(kill_the_driver,), daemon=True).start()\n"
        "try:\n    list_cluster(address='127.0.0.1:%d' % srv.getsockname()[1], jobs_dir=None, timeout=5)\n"
        "except RayUnavailable as e:\n    print(json.dumps([e.exit_code, str(e), 'ray' in sys.modules]))\n"
    )
    r = py(code, base_env(jobs_dir, RAY_AUTH_MODE="disabled"))
    assert r.returncode == 0, r.stderr
    exit_code, message, imported = json.loads(r.stdout)
    assert exit_code == 4 and "exit code -9" in message and "without an answer" in message, message
    assert imported is False


def test_a_ray_driver_never_outlives_its_caller(jobs_dir: Path) -> None:
    """A caller killed by SIGKILL cannot stop its driver; the kernel ends it (the
    driver hung in ray.init against a cluster that never answers would stay forever)."""
    code = SILENT_CLUSTER + (
        "threading.Thread(target=when_the_driver_waits, args=(lambda: print(drivers[0].pid, flush=True),), daemon=True).start()\n"
        "list_cluster(address='127.0.0.1:%d' % srv.getsockname()[1], jobs_dir=None, timeout=5)\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", code], env=base_env(jobs_dir, RAY_AUTH_MODE="disabled"), stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        driver = psutil.Process(int(caller.stdout.readline()))  # inside ray.init now
        caller.kill()
        caller.wait()
        driver.wait(timeout=30)  # raises if it outlives its caller
        assert not driver.is_running()
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        caller.stdout.close()
