"""A rank's own time per step: what names the slow rank.

DDP makes every rank's step as long as the slowest rank's: each backward ends in an
all-reduce of the gradients that waits for the last rank to arrive. So the time between
two steps is the same on every rank and cannot name the slow one; the time a rank spends
*outside* the collectives can. A slow rank (a slower data loader, a throttled GPU, a
noisy neighbour) spends more of its step in its own work and less waiting; the others
spend the difference waiting for it.

:class:`RankClock` measures, between two agreed checks, the wall time less the time the
rank sat in collectives: the wait at the end of each backward for the gradient
all-reduce, once :meth:`RankClock.watch` has hooked a DDP model (a communication hook
that does DDP's own all-reduce and notes when the step's last bucket was handed over and
when every bucket came back). The checks' own all-reduce falls outside the interval. The
result, per step, travels to rank 0 in the check's one all-reduce (a slot per rank),
where :class:`~forgather_control.core.guards.StragglerWatch` compares the ranks.

Without a hooked DDP model (a loop whose ranks only meet at the checks, or a model the
hook cannot reach) the clock measures the whole interval; where the ranks meet every
step in collectives it cannot see, it cannot tell them apart, and the status shows equal
times rather than a wrong name.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

__all__ = ["RankClock", "node_rank"]

log = logging.getLogger(__name__)


def node_rank() -> int:
    """This process's node in the job (torchrun's GROUP_RANK), 0 when not said."""
    try:
        return max(0, int(os.environ.get("GROUP_RANK", "0")))
    except ValueError:
        return 0


class RankClock:
    """Own time per step between checks. ``interval`` is called at a check (before its
    all-reduce) and ``mark`` after it; the comm hook's callbacks run on the process
    group's threads and only add to a float."""

    def __init__(self) -> None:
        self.hooked = False
        self._blocked = 0.0  # seconds waited at the end of backwards, ever
        self._pending = 0
        self._ready: float | None = None
        self._mark: tuple[float, int, float] | None = None  # (time, step, blocked) after a check

    def watch(self, model: Any) -> bool:
        """Hook a DDP-wrapped ``model`` so its gradient all-reduce waits are left out of
        this rank's own time. False (and nothing changed) for a model that is not DDP, or
        that has a communication hook of its own already (DDP takes one)."""
        if self.hooked:
            return True
        import torch.nn.parallel as parallel

        if not isinstance(model, parallel.DistributedDataParallel):
            return False
        if getattr(model, "_comm_hooks", None):
            log.info("forgather control: the model has a DDP communication hook of its own; stragglers are judged without the gradient waits")
            return False
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        clock = self

        # No annotations: DDP checks a hook's (a string under postponed annotations fails).
        def timed_allreduce(process_group, bucket):  # type: ignore[no-untyped-def]
            future = allreduce_hook(process_group, bucket)
            clock._pending += 1
            if bucket.is_last():
                clock._ready = time.monotonic()  # this rank's backward is done

            def returned(done: Any) -> Any:
                clock._pending -= 1
                if clock._pending == 0 and clock._ready is not None:
                    clock._blocked += time.monotonic() - clock._ready  # waited for the others
                    clock._ready = None
                return done.value()

            return future.then(returned)

        try:
            model.register_comm_hook(None, timed_allreduce)
        except Exception as exc:  # noqa: BLE001 - never fail training over a measurement
            log.info("forgather control: could not hook the model's gradient all-reduce (%s); stragglers are judged without it", exc)
            return False
        self.hooked = True
        log.info("forgather control: timing this rank's waits in the gradient all-reduce (stragglers are named by their own time)")
        return True

    def interval(self, step: int, now: float | None = None) -> float:
        """Seconds of own time per step since the last check, 0 when not known yet."""
        mark = self._mark
        if mark is None or step <= mark[1]:
            return 0.0
        now = time.monotonic() if now is None else now
        own = (now - mark[0]) - (self._blocked - mark[2])
        return max(0.0, own) / (step - mark[1])

    def mark(self, step: int, now: float | None = None) -> None:
        self._mark = (time.monotonic() if now is None else now, step, self._blocked)
