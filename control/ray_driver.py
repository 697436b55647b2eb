"""Ray's driver in a child interpreter: whatever Ray does to its process cannot end ours.

Ray ends a driver's process from inside on some failures (its core worker exits the
process when Python touches it after ``ray.shutdown()``); it once ended a test process
whose listing thread saw a node die. A CLI could live with that, but the web page's
server, a notebook or a user's script must not die because a node did. So each Ray
operation of :mod:`.ray_listing` runs in a child interpreter: the request goes in as
JSON on stdin, the answer comes back as JSON on stdout, and a child that dies or hangs
becomes :class:`~.ray_listing.RayUnavailable` in the caller. A caller that already holds
a Ray connection of its own is asked in-process, on that connection, as before.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from typing import Any

from .deathsig import death_signal_setter

log = logging.getLogger(__name__)

#: operation name -> the function of ray_listing that runs it inside the driver
OPERATIONS = {"gather": "gather_here", "stacks": "stacks_here"}
#: Beyond the operation's own timeout: connecting to Ray and disconnecting (seconds).
MARGIN = 120.0
_ANSWER = "forgather-ray-answer "


def run(op: str, kwargs: dict[str, Any], *, timeout: float) -> Any:
    """Run ``op`` with ``kwargs`` (plain JSON values) as a Ray driver and return its
    value; raises RayNotInstalled or RayUnavailable as the operation itself would."""
    from . import ray_listing

    fn = getattr(ray_listing, OPERATIONS[op])
    if _connected_here():
        return fn(**kwargs)
    if importlib.util.find_spec("ray") is None:
        raise ray_listing.RayNotInstalled(ray_listing.not_installed("No module named 'ray'"))
    argv = [sys.executable, "-m", __name__]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(json.dumps({"op": op, "kwargs": kwargs, "parent": os.getpid()}), timeout=timeout + MARGIN)
    except subprocess.TimeoutExpired:
        raise ray_listing.RayUnavailable(f"the Ray driver did not answer within {timeout + MARGIN:g}s (connecting to the cluster hung?)") from None
    finally:
        if proc.poll() is None:  # a timeout, or Ctrl-C in the caller
            proc.kill()
            proc.wait()
    for line in err.splitlines():
        log.debug("ray driver: %s", line)
    answers = [line[len(_ANSWER) :] for line in out.splitlines() if line.startswith(_ANSWER)]
    if not answers:
        last = err.strip().splitlines()[-1] if err.strip() else "nothing on stderr"
        raise ray_listing.RayUnavailable(f"the Ray driver process ended (exit code {proc.returncode}) without an answer: {last}")
    answer = json.loads(answers[-1])
    if "error" in answer:
        kind = ray_listing.RayNotInstalled if answer["error"] == "RayNotInstalled" else ray_listing.RayUnavailable
        raise kind(str(answer.get("message", "")))
    return answer["value"]


def _connected_here() -> bool:
    """This process already holds a Ray connection (its own driver): use it."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(getattr(ray, "is_initialized", lambda: False)())


def main() -> int:
    """The child's side: one request on stdin, one answer line on stdout."""
    from . import ray_listing
    from .errors import ControlError

    request = json.loads(sys.stdin.read())
    # Never outlive the caller: a caller killed by SIGKILL cannot stop a driver hung in
    # ray.init. The death signal is set first, then the parent checked (it may be gone).
    setter = death_signal_setter()
    if setter is not None:
        setter()
    if os.getppid() != request.get("parent"):
        return 1
    try:
        value = getattr(ray_listing, OPERATIONS[request["op"]])(**request["kwargs"])
        answer: dict[str, Any] = {"value": value}
    except ControlError as exc:
        answer = {"error": type(exc).__name__, "message": str(exc)}
    sys.stdout.write(_ANSWER + json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
