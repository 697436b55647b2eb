"""The learning-rate knobs, for any torch optimizer and scheduler (duck-typed: no import).

``lr_scale`` is the factor on the script's schedule (1 at start); ``lr`` is the rate of
the first parameter group now, and setting it scales by ``new / now``. A change
multiplies, in every parameter group, each rate a scheduler reads (``lr``, and
``initial_lr``, ``max_lr``, ``min_lr`` where present) and each scheduler's
``base_lrs``: schedulers recompute the rate from their base rates at every
``scheduler.step()``, so a change to ``lr`` alone would last one step. The scheduler's
last rates are rescaled too (what HF and Lightning log as the learning rate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forgather_control.core.records import KnobValue


__all__ = ["RATE_KEYS", "learning_rate_knobs", "scale_rates"]

#: The keys of a parameter group that hold a rate a scheduler reads.
RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def _inner(obj: Any, attr: str) -> Any:
    """Accelerate's and Lightning's wrappers keep the real one in ``.optimizer`` / ``.scheduler``."""
    seen = 0
    while obj is not None and seen < 4 and hasattr(obj, attr) and not hasattr(obj, "param_groups" if attr == "optimizer" else "base_lrs"):
        obj = getattr(obj, attr)
        seen += 1
    return obj


def _many(found: Any) -> list[Any]:
    if found is None:
        return []
    return list(found) if isinstance(found, (list, tuple)) else [found]


def scale_rates(optimizers: Iterable[Any], schedulers: Iterable[Any], factor: float) -> None:
    """Multiply every rate of ``optimizers`` and ``schedulers`` by ``factor``."""
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"a learning-rate factor must be a positive number, not {factor}")
    groups = []
    for opt in optimizers:
        for group in _inner(opt, "optimizer").param_groups:
            groups.append(group)
            for k in RATE_KEYS:
                if isinstance(group.get(k), (int, float)) and not isinstance(group.get(k), bool):
                    group[k] = group[k] * factor
    for sch in schedulers:
        inner = _inner(sch, "scheduler")
        if hasattr(inner, "base_lrs"):
            inner.base_lrs = [b * factor for b in inner.base_lrs]
        if isinstance(getattr(inner, "_last_lr", None), list):
            inner._last_lr = [x * factor for x in inner._last_lr]


def _first_rate(optimizers: list[Any]) -> float | None:
    for opt in optimizers:
        for group in _inner(opt, "optimizer").param_groups:
            lr = group.get("lr")
            if isinstance(lr, (int, float)):
                return float(lr)
    return None


def learning_rate_knobs(ctl: Any, optimizers: Callable[[], Any], schedulers: Callable[[], Any]) -> bool:
    """Declare ``lr`` and ``lr_scale`` on ``ctl`` (a Controller) for the optimizers and schedulers the
    callables give when a change applies (a trainer may rebuild them). False when there
    is no optimizer with a rate to change (nothing declared)."""
    first = _first_rate(_many(optimizers()))
    if first is None:
        return False

    def scale(factor: float) -> None:
        scale_rates(_many(optimizers()), _many(schedulers()), factor)

    lr: Any = None

    def scale_changed(old: KnobValue, new: KnobValue) -> None:
        scale(float(new) / float(old))
        if lr is not None:
            ctl.knobs.moved(lr, lr.value)  # the rate was set too, through its scale

    lr_scale = ctl.knob(
        "lr_scale",
        1.0,
        above=0.0,
        help="the factor on the script's learning-rate schedule",
        on_change=scale_changed,
        saved=True,
    )

    def lr_changed(old: KnobValue, new: KnobValue) -> None:
        now = _first_rate(_many(optimizers()))
        if not now:
            raise ValueError("the learning rate is 0 now: set lr_scale instead")
        factor = float(new) / now
        scale(factor)
        ctl.knobs.moved(lr_scale, float(lr_scale.value) * factor)

    # the script's rate: the rate now without the scale (a relaunch may have applied one)
    first = _first_rate(_many(optimizers())) or first
    lr = ctl.knob(
        "lr",
        first / float(lr_scale.value),
        above=0.0,
        help="the learning rate now (of the first parameter group); the others change in proportion",
        on_change=lr_changed,
        read=lambda: _first_rate(_many(optimizers())),
        carry=False,
    )
    return True
