"""Children that die with their parent (Linux ``PR_SET_PDEATHSIG``).

A parent killed by SIGKILL cannot stop its children; the kernel can. Used for torchrun
under the launcher and for the Ray driver under its caller.
"""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def death_signal_setter(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A call that makes the calling process receive ``sig`` when its parent dies, or
    None where there is no ``prctl`` (not Linux). The libc function is resolved here, so
    the call is safe as a ``preexec_fn`` (between fork and exec it only calls it)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return set_death_signal
