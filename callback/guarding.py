"""A rank's side of its job's guards (core.guards): what it votes, what rank 0 judges,
and the record of what fired.

Two kinds of decision, two places:

- ``nan`` is every rank's: each rank looks at its own loss at an agreed check and votes
  in the check's one all-reduce (the ``guard`` field: the highest rank that saw a NaN or
  an infinity, and which). Every rank gets the same answer at the same step, so all of
  them act there, whichever rank saw it; deciding on rank 0 alone would leave the others
  in a collective rank 0 never joins, or training on a poisoned model.
- ``spike`` and ``slowdown`` are rank 0's, from the loss the trainer logs and the job's
  steps/s, and so is ``straggler``, from every rank's own time per step (its watch runs
  with defaults when no straggler guard was declared: stragglers are always named);
  ``stall`` is rank 0's I/O round's (the training thread is the one stuck).
  Their commands go into the ledger as a person's would and are agreed at a check like
  any other.

Every firing is a :class:`GuardFiring` (guard, step, rank, evidence) kept for the
status (``guard_events``) and carried by the receipt of the command it queued.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from functools import cache
from typing import TYPE_CHECKING

from forgather_control.core.commands import new_command_id

if TYPE_CHECKING:
    from forgather_control.core.guards import SlowdownWatch, SpikeWatch, StragglerWatch
    from forgather_control.core.records import GuardFiring, GuardRule, Stall

__all__ = ["EVENTS_KEPT", "GuardBook", "decode_vote", "number"]

#: Firings kept for the status (the newest).
EVENTS_KEPT = 64
_KINDS = {1: "nan", 2: "inf", 3: "-inf"}


@cache
def _named_without_a_guard() -> GuardRule:
    """Who names a straggler when no straggler guard was declared: an alert, nothing
    else (made when rank 0 first names one: a rank loads no record to train, issue 24)."""
    from forgather_control.core.records import GuardRule

    return GuardRule(kind="straggler", action="alert", text="straggler (named without a guard: no action)")


def _vote_code(value: float) -> int:
    return 1 if value != value else 2 if value > 0 else 3


def number(value: object) -> float | None:
    """A metric as a float, at a check: a float or int as is, a one-element tensor or a
    numpy scalar converted here (on a GPU that waits for the step's kernels, once a check,
    never per step); None for anything else (a text, a vector, nothing)."""
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    if isinstance(value, float):
        return value
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return None


def decode_vote(vote: int) -> tuple[int, str] | None:
    """(rank, what it saw) from an agreed ``guard`` field; None for no vote."""
    if vote <= 0:
        return None
    return vote // 4 - 1, _KINDS.get(vote % 4, "nan")


class GuardBook:
    """The guards of one rank: ``vote`` (every rank, at a check), ``judge`` (rank 0, at a
    check), ``agreed`` (every rank, after the check), ``stalled`` (rank 0's I/O round)."""

    def __init__(self, rules: tuple[GuardRule, ...], *, rank: int) -> None:
        self.rules = rules
        self.rank = rank
        by_kind = {r.kind: r for r in rules}
        self.nan = by_kind.get("nan")
        self.spike_rule = by_kind.get("spike")
        self.slowdown_rule = by_kind.get("slowdown")
        self.stall = by_kind.get("stall")
        straggler = by_kind.get("straggler")
        self._straggler_rule = straggler
        self._stragglers: StragglerWatch | None = None
        self._spike: SpikeWatch | None = None
        self._slowdown: SlowdownWatch | None = None
        if self.spike_rule is not None or self.slowdown_rule is not None:
            from forgather_control.core.guards import SlowdownWatch, SpikeWatch  # rank 0's rules

            self._spike = SpikeWatch(self.spike_rule) if self.spike_rule is not None else None
            self._slowdown = SlowdownWatch(self.slowdown_rule) if self.slowdown_rule is not None else None
        #: the job's NaN episode: fired once until every rank's loss is finite again
        self._nan_fired = False
        self._stall_fired = False
        self._seen_metrics: object = None
        #: this rank's own latest loss, as the trainer returned it (a tensor: read only at
        #: a check), set by integrations whose per-step metrics do not carry it (HF, the
        #: Forgather framework); preferred over ``metrics["loss"]`` by the nan vote
        self.loss: object = None
        self.events: deque[GuardFiring] = deque(maxlen=EVENTS_KEPT)
        self._lock = threading.Lock()

    @property
    def stragglers(self) -> StragglerWatch:
        """Rank 0's straggler watch (made when it first compares the ranks: another rank
        never does, and loads no guard's code without guards, issue 24)."""
        if self._stragglers is None:
            from forgather_control.core.guards import STRAGGLER_FACTOR, STRAGGLER_FOR, StragglerWatch

            rule = self._straggler_rule
            self._stragglers = StragglerWatch(
                factor=rule.factor if rule is not None and rule.factor else STRAGGLER_FACTOR,
                duration=rule.for_ if rule is not None and rule.for_ is not None else STRAGGLER_FOR,
            )
        return self._stragglers

    @property
    def timed(self) -> bool:
        """Guards that need checks on a clock, even in a process alone (which otherwise
        checks only when a command or a signal comes)."""
        return self.nan is not None or self._spike is not None or self._slowdown is not None

    # -- every rank, at a check ---------------------------------------------------------
    def vote(self, metrics: object) -> int:
        """This rank's vote: (rank + 1) * 4 + what it saw when its loss is not finite,
        else 0. MAX over ranks names the highest rank that saw one."""
        if self.nan is None:
            return 0
        name = self.nan.metric or "loss"
        if name == "loss" and self.loss is not None:
            value = number(self.loss)
        elif isinstance(metrics, dict):
            value = number(metrics.get(name))
        else:
            return 0
        from forgather_control.core.guards import nonfinite  # a nan guard's rank: it has its rules

        if value is None or not nonfinite(value):
            return 0
        return (self.rank + 1) * 4 + _vote_code(value)

    def agreed(self, vote: int, step: int) -> GuardFiring | None:
        """The agreed vote at ``step``: the firing every rank acts on (once per episode)."""
        seen = decode_vote(vote)
        if self.nan is None:
            return None
        if seen is None:
            self._nan_fired = False
            return None
        if self._nan_fired:
            return None
        self._nan_fired = True
        rank, what = seen
        name = self.nan.metric or "loss"
        return self._fire(self.nan, step=step, rank=rank, evidence=f"the {name} is {what} on rank {rank} at step {step}", values={"rank": float(rank)})

    # -- rank 0, at a check -------------------------------------------------------------
    def judge(self, step: int, metrics: object, rate: float | None, now: float) -> list[GuardFiring]:
        """Rank 0's own guards at the check at ``step``: the loss it logged (each logged
        value once) and the job's steps/s."""
        fired: list[GuardFiring] = []
        if self._spike is not None and isinstance(metrics, dict):
            value = metrics.get(self.spike_rule.metric or "loss")  # type: ignore[union-attr]
            if value is not None and metrics is not self._seen_metrics:
                self._seen_metrics = metrics
                hit = self._spike.observe(number(value))
                if hit is not None:
                    fired.append(self._fire(self.spike_rule, step=step, rank=0, evidence=hit[0], values=hit[1]))  # type: ignore[arg-type]
        if self._slowdown is not None:
            hit = self._slowdown.observe(rate, now)
            if hit is not None:
                fired.append(self._fire(self.slowdown_rule, step=step, rank=None, evidence=hit[0], values=hit[1]))  # type: ignore[arg-type]
        return fired

    def straggler(self, rank: int, node: int | None, factor: float, lasted: float, step: int) -> GuardFiring:
        """Rank 0: ``rank`` was just named a straggler (its factor, for ``lasted`` s)."""
        where = f" (node {node})" if node is not None else ""
        return self._fire(
            self._straggler_rule or _named_without_a_guard(),
            step=step,
            rank=rank,
            evidence=f"rank {rank}{where} spends {factor:.2f}x the other ranks' median own time a step, for {lasted:.0f} s",
            values={"factor": factor, "seconds": self.stragglers.seconds(rank) or 0.0},
        )

    # -- rank 0's I/O round ----------------------------------------------------------------
    def stalled(self, stall: Stall | None) -> GuardFiring | None:
        """The stall guard, once per stall."""
        if self.stall is None:
            return None
        with self._lock:
            if stall is None:
                self._stall_fired = False
                return None
            if self._stall_fired:
                return None
            self._stall_fired = True
        return self._fire(
            self.stall,
            step=stall.step,
            rank=None,
            evidence=f"no step for {stall.for_ or 0:.0f} s (the threshold is {stall.after or 0:.0f} s), in {stall.phase or 'training'}",
            values={"for": float(stall.for_ or 0), "after": float(stall.after or 0)},
        )

    def _fire(self, rule: GuardRule, *, step: int | None, rank: int | None, evidence: str, values: dict[str, float]) -> GuardFiring:
        from forgather_control.core.records import GuardFiring  # fired: a record from here on (issue 24)

        return GuardFiring(
            id=new_command_id(),
            guard=rule.text,
            kind=rule.kind,
            action=rule.action,
            step=step,
            rank=rank,
            at=time.time(),
            evidence=evidence,
            values=values,
        )

    def record(self, firing: GuardFiring) -> None:
        with self._lock:
            self.events.append(firing)

    def recent(self) -> list[GuardFiring]:
        with self._lock:
            return list(self.events)
