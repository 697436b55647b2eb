"""Ray's driver in a child interpreter: whatever Ray does to its process cannot end ours.

Ray ends a driver's process from inside on some failures (its core worker exits the
process when Python touches it after ``ray.shutdown()``); it once ended a test process
whose listing thread saw a node die. A CLI could live with that, but the web page's
server, a notebook or a user's script must not die because a node did. So each Ray
operation of :mod:`.ray_listing` runs in a child interpreter: the request goes in as
JSON on stdin, the answer (the operation's record) comes back as JSON on stdout and is
decoded once, by :func:`run`, and a child that dies or hangs becomes
:class:`RayUnavailable` in the caller. The child runs :mod:`.ray_child`, which
maps an operation's name to its function in :mod:`.ray_listing`; this module knows
neither (ray_listing imports it, for the errors and :func:`run`). A caller that already holds
a Ray connection of its own is asked in-process, on that connection, as before.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from forgather_control.core.deathsig import death_signal_setter
from forgather_control.core.errors import ControlError, Unreachable, UsageError
from forgather_control.core.files import RecordError
from forgather_control.core.records import Pid, Record, from_json, to_json

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'forgather-control[ray]'"
#: The child interpreter's entry point (a module name, run with ``python -m``).
CHILD = "forgather_control.client.ray_child"
#: Beyond the operation's own timeout: connecting to Ray and disconnecting (seconds).
MARGIN = 120.0
#: What starts the child's line that holds its answer (the operation's record, as JSON),
#: or the error its operation raised (a :class:`DriverError`).
ANSWER = "forgather-ray-answer "
ERROR = "forgather-ray-error "

R = TypeVar("R", bound=Record)


class RayNotInstalled(UsageError):
    """``--ray`` was asked for but Ray cannot be imported here."""


class RayUnavailable(Unreachable):
    """No Ray cluster answers at the address (we never start one)."""


def not_installed(why: str) -> str:
    """What to say when Ray cannot be imported (here, or in the driver's interpreter)."""
    return f"listing through Ray needs Ray, which cannot be imported here ({why}). Install it with: {INSTALL_HINT}"


class DriverRequest(Record):
    """What the child is asked (on its stdin): the operation's name and its call arguments,
    and the caller's pid (the child never outlives it)."""

    op: str
    kwargs: dict[str, Any]
    parent: Pid


class DriverError(Record):
    """The child's word that its operation raised: the error's class name and message."""

    error: str = ""
    message: str = ""


def run(op: str, kwargs: dict[str, Any], *, here: Callable[..., R], answer: type[R], timeout: float) -> R:
    """Run ``op`` with ``kwargs`` (its call arguments, plain JSON values) as a Ray driver
    and return its answer, an ``answer`` record; raises RayNotInstalled or RayUnavailable
    as the operation itself would. ``here`` is the operation's function, called in this
    process when it already holds a Ray connection of its own; otherwise the child runs it
    by name."""
    if _connected_here():
        return here(**kwargs)
    if importlib.util.find_spec("ray") is None:
        raise RayNotInstalled(not_installed("No module named 'ray'"))
    argv = [sys.executable, "-m", CHILD]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(to_json(DriverRequest(op=op, kwargs=kwargs, parent=os.getpid())).decode(), timeout=timeout + MARGIN)
    except subprocess.TimeoutExpired:
        raise RayUnavailable(f"the Ray driver did not answer within {timeout + MARGIN:g}s (connecting to the cluster hung?)") from None
    finally:
        if proc.poll() is None:  # a timeout, or Ctrl-C in the caller
            proc.kill()
            proc.wait()
    for line in err.splitlines():
        log.debug("ray driver: %s", line)
    return read_reply(out, err, proc.returncode, answer)


def read_reply(out: str, err: str, returncode: int | None, answer: type[R]) -> R:
    """The child's answer in its stdout, decoded once into ``answer``; RayNotInstalled or
    RayUnavailable when it says its operation raised one, when it ended without an answer
    (``err``, its stderr, and ``returncode`` say how), or when its answer is not one."""
    replies = [line for line in out.splitlines() if line.startswith((ANSWER, ERROR))]
    if not replies:
        last = err.strip().splitlines()[-1] if err.strip() else "nothing on stderr"
        raise RayUnavailable(f"the Ray driver process ended (exit code {returncode}) without an answer: {last}")
    try:
        if replies[-1].startswith(ERROR):
            error = from_json(replies[-1][len(ERROR) :], DriverError, name="the Ray driver's error")
        else:
            return from_json(replies[-1][len(ANSWER) :], answer, name="the Ray driver's answer")
    except RecordError as exc:
        raise RayUnavailable(str(exc)) from None
    kind = RayNotInstalled if error.error == "RayNotInstalled" else RayUnavailable
    raise kind(error.message)


def _connected_here() -> bool:
    """This process already holds a Ray connection (its own driver): use it."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(getattr(ray, "is_initialized", lambda: False)())


def serve(operations: Mapping[str, Callable[..., Record]]) -> int:
    """The child's side (:mod:`.ray_child`): one request on stdin, one answer line on
    stdout (the operation's record as JSON, or the error it raised). ``operations``: the
    names :func:`run` may ask for, and their functions."""
    request = from_json(sys.stdin.read(), DriverRequest, name="the Ray driver's request")
    # Never outlive the caller: a caller killed by SIGKILL cannot stop a driver hung in
    # ray.init. The death signal is set first, then the parent checked (it may be gone).
    setter = death_signal_setter()
    if setter is not None:
        setter()
    if os.getppid() != request.parent:
        return 1
    try:
        line = ANSWER + to_json(operations[request.op](**request.kwargs)).decode()
    except ControlError as exc:
        line = ERROR + to_json(DriverError(error=type(exc).__name__, message=str(exc))).decode()
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return 0
