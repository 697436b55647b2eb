"""Signal handling for the control plane: handlers only set flags, then chain.

A signal (SIGTERM, SIGUSR1, SIGUSR2 by default) means "save and stop". The handler
raises a level the Controller reads at its next agreed check; it makes no collective
and does no I/O, because it runs between two bytecodes of whatever the training
thread was doing (maybe inside a collective's Python wrapper, maybe holding a lock).

Why a repeat window: under SLURM the time-limit SIGTERM reaches every process of the
step, and torchrun forwards its own SIGTERM to its workers a few milliseconds later.
Counting both as two signals would escalate a preemption into "stop without saving"
and lose the very checkpoint the signal was meant to produce. Deliveries closer than
``repeat_window`` seconds count once.

Escalation: a second signal before the first was applied raises the level to 2 (stop
without saving, agreed on every rank). A signal that arrives while a stop is already
being carried out (for example during a long save) cannot wait for another agreed
step: the handler chains to the handler that was installed before us (which may end the
process its own way) and then raises ``SystemExit(128 + signum)``, so ``finally``
blocks and ``atexit`` still run (the Controller records the job as aborted there). A
previous handler that only counts signals (the launcher's bootstrap does) therefore
cannot swallow the escalation.

Before the run's first training step there is nothing to save: a signal then ends the
process at once (:class:`StoppedEarly`), as if no handler were installed, and the owner
records the stop; waiting for a first step that may come only after the scheduler's
grace would end in a kill instead.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from forgather_control.core.env import ENV_SIGNAL_REPEAT_WINDOW

log = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
DEFAULT_REPEAT_WINDOW = 1.0


def repeat_window_from_env(default: float = DEFAULT_REPEAT_WINDOW) -> float:
    raw = os.environ.get(ENV_SIGNAL_REPEAT_WINDOW)
    if not raw:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        log.warning("ignoring %s=%r: not a number", ENV_SIGNAL_REPEAT_WINDOW, raw)
        return default


class SignalFlags:
    """Installs handlers for ``signals`` (main thread only) and counts deliveries.

    ``on_raise`` is called from the handler after the level went up; it must only set
    flags. ``stopping`` tells the handler whether this delivery is a second signal for
    a stop already being carried out (the owner knows whether an earlier signal, on
    this rank or agreed from another, caused it); then the handler ends the process
    instead of raising the level. ``early`` tells it that the run has nothing to save
    yet; then it ends the process at once, ``early_end`` naming the signal.
    """

    def __init__(
        self,
        signals: tuple[int, ...],
        *,
        on_raise: Callable[[], None],
        stopping: Callable[[], bool],
        early: Callable[[], bool] | None = None,
        repeat_window: float | None = None,
    ) -> None:
        self.signals = tuple(signals)
        self.level = 0
        #: when the level first went up (wall clock): a checkpoint finished after it answers it
        self.raised_at: float | None = None
        self.escalated: int | None = None  # the signal that ended the process, if any
        self.early_end: int | None = None  # the signal that ended it before its first step
        self.repeat_window = repeat_window_from_env() if repeat_window is None else float(repeat_window)
        self._on_raise = on_raise
        self._stopping = stopping
        self._early = early
        self._prev: dict[int, Any] = {}
        self._last_at: float | None = None

    def install(self) -> None:
        if not self.signals or threading.current_thread() is not threading.main_thread():
            if self.signals:
                log.info("forgather control: not on the main thread; signals are not handled here")
            return
        for signum in self.signals:
            try:
                self._prev[signum] = signal.signal(signum, self._handle)
            except (ValueError, OSError) as exc:
                log.debug("cannot handle signal %s: %s", signum, exc)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, prev in self._prev.items():
            try:
                signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self._prev.clear()

    def raise_level(self) -> None:
        """What a delivery does: raise the level, nothing else. Also usable by a
        launcher or a test without a real signal."""
        self.level += 1
        if self.raised_at is None:
            self.raised_at = time.time()
        self._on_raise()

    # -- the handler ----------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        prev = self._prev.get(signum)
        if self._last_at is not None and now - self._last_at < self.repeat_window:
            return  # the same event delivered twice (scheduler + torchrun)
        self._last_at = now
        if self._stopping():
            self._escalate(signum, frame, prev)
            return
        if self._early is not None and self._early():
            self.early_end = signum
            self.restore()
            if callable(prev) and prev is not signal.default_int_handler:
                prev(signum, frame)
            raise StoppedEarly(128 + signum)
        self.raise_level()
        if callable(prev) and prev is not signal.default_int_handler:
            prev(signum, frame)

    def _escalate(self, signum: int, frame: Any, prev: Any) -> None:
        self.escalated = signum
        self.level += 1
        self.restore()
        if callable(prev) and prev is not signal.default_int_handler:
            prev(signum, frame)  # it may end the process its own way (raise); if not, we do
        raise SystemExit(128 + signum)


class StoppedEarly(SystemExit):
    """A stop signal ended the process before its run's first step: an outcome (stopped,
    nothing to save yet), not a failure."""


# -- signals that arrive before any Controller runs ------------------------------------
# A launcher's worker installs ``install_early_handlers`` before the user's script runs
# (SLURM may signal while the model still loads). Deliveries are counted here and handed
# to the first Controller that starts; while a Controller runs, its own handlers act
# first and chain to ours, which then stay quiet.
EARLY_SIGNALS: tuple[int, ...] = (signal.SIGUSR1, signal.SIGUSR2)
_early_pending = 0
_early_last_at: float | None = None
_running_controllers = 0


def install_early_handlers(signals: tuple[int, ...] = EARLY_SIGNALS) -> None:
    """Count stop signals until a Controller starts; also keeps SIGUSR1/2 from killing
    the process by their default action."""
    for signum in signals:
        try:
            signal.signal(signum, _early_handler)
        except (ValueError, OSError):  # not the main thread, or not supported here
            pass


def pending_early_signals() -> int:
    """Stop signals received while no Controller ran, not yet handed to one."""
    return _early_pending


def controller_started() -> int:
    """A Controller started: it takes (and clears) the early signals, at most two
    (the second means "stop without saving")."""
    global _early_pending, _running_controllers
    _running_controllers += 1
    taken, _early_pending = min(_early_pending, 2), 0
    return taken


def controller_closed() -> None:
    global _running_controllers
    _running_controllers = max(0, _running_controllers - 1)


def _early_handler(signum: int, frame: Any) -> None:
    global _early_pending, _early_last_at
    if _running_controllers:
        return  # a Controller's handler ran first and counted it
    now = time.monotonic()
    if _early_last_at is not None and now - _early_last_at < repeat_window_from_env():
        return  # the same event delivered twice, as the Controller would count it
    _early_last_at = now
    _early_pending += 1
