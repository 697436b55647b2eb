"""Output that needs no rich: JSON for scripts, ages and durations for people.

The ``--json`` paths stay on this module so they never pay for importing rich, and
every object printed goes through :func:`scrub` so a token can never reach stdout.
Everything a record, a server or another host wrote reaches a person's terminal only
through :func:`printable`: an escape sequence in a host name must not retitle the
terminal, clear it, plant a link or forge a line of the status panel.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import msgspec

from forgather_control.core.commands import State, verb
from forgather_control.core.knobs import describe
from forgather_control.core.records import GuardFiring, KnobChange, Receipt, Record, StallNotice, Status, encode
from forgather_control.core.safe import SECRET_KEYS, json_safe, printable, scrub
from forgather_control.core.states import JobState

#: The safe-output rules are core's (the web page uses them too); the CLI's modules take them from here.
__all__ = ["SECRET_KEYS", "age", "describe_entry", "duration", "json_safe", "print_json", "printable", "progress_line", "scrub", "silence_stdout", "stall_line"]


def print_json(value: Any) -> None:
    """One JSON document on stdout, secrets removed, stable key order. A record in it is
    written as its file is (``records.encode``: msgspec's own conversion)."""
    plain = encode(value) if isinstance(value, Record) else msgspec.to_builtins(value, enc_hook=str)
    try:
        sys.stdout.write(json.dumps(json_safe(scrub(plain)), indent=2, sort_keys=True, default=str, allow_nan=False))
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `forgather control list --json | head`: the reader left, which is not a failure
        # (click would turn it into exit 1).
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def age(ts: Any, now: float | None = None) -> str:
    """``12s ago`` / ``3m ago`` / ``2h ago`` / ``4d ago``; ``-`` when unknown."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        return "-"
    delta = (time.time() if now is None else now) - float(ts)
    if delta < -5:
        return "in the future"  # clock skew between hosts; say so rather than lie
    return f"{duration(max(0.0, delta))} ago"


def duration(seconds: Any) -> str:
    """A short human duration: ``45s``, ``3m``, ``2h05m``, ``4d``; ``-`` when unknown."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    return f"{s // 86400}d"


def describe_entry(entry: Receipt) -> str:
    """One line for a ledger entry: what, state, where, result or reason (printable)."""
    ident = "" if entry.id is None else f" ({entry.id})"  # None: no receipt (framework_jobs)
    parts = [f"{verb(entry.command) if entry.command else '?'}{ident}: {entry.state or '?'}"]
    if entry.guard is not None:  # queued by a guard, not a person
        parts.append(guard_line(entry.guard))
    if entry.step is not None:
        parts.append(f"at step {entry.step}")
    result = entry.result
    if result is not None and result.changes:
        parts.append(knob_changes(result.changes))
    elif entry.options is not None and entry.options.changes and not (State.parse(entry.state) or State.QUEUED).final:
        parts.append("asks " + ", ".join(f"{c.name}={c.value}" for c in entry.options.changes))
    if result is not None and result.checkpoint:
        parts.append(f"checkpoint {result.checkpoint}")
    if result is not None and result.metrics:
        parts.append(", ".join(f"{k}={_num(v)}" for k, v in list(result.metrics.items())[:6]))
    if result is not None and result.final_state:
        parts.append(f"job {result.final_state}")
    if entry.reason:
        parts.append(f"reason: {entry.reason}")
    return printable("; ".join(parts))


def knob_changes(changes: list[KnobChange]) -> str:
    """``lr_scale 1 -> 0.5, max_steps 1000 -> 2000`` (printable)."""
    return printable(describe(changes))


def guard_line(firing: GuardFiring) -> str:
    """``by guard nan:abort,metric=loss: the loss is nan on rank 1 at step 31`` (printable)."""
    return printable(f"by guard {firing.guard}: {firing.evidence or firing.kind}")


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def stall_line(stall: StallNotice | None) -> str:
    """One line: ``no step for 5m (at step 41): rank 0 waits in the agreement collective...``."""
    stall = stall or StallNotice()
    at = f" (at step {stall.step})" if stall.step is not None else ""
    return printable(f"no step for {duration(stall.for_)}{at}: {stall.why or 'its step does not move'}")


def progress_line(job_id: str, status: Status) -> str:
    """One plain line of a job's progress: state, step of max, and, while it runs, speed,
    ETA and loss (an ended job has no speed and no ETA)."""
    step, total = status.step, status.max_steps
    parts = [f"{job_id}", str(status.state or "unknown"), f"step {step}/{total}" if total else f"step {step}"]
    if status.state in (JobState.RUNNING, JobState.STOPPING):
        rate = status.steps_per_second
        parts.append(f"{rate:.1f} steps/s" if isinstance(rate, (int, float)) else "- steps/s")
        parts.append(f"ETA {duration(status.eta_seconds)}")
    loss = (status.metrics or {}).get("loss")
    if isinstance(loss, (int, float)):
        parts.append(f"loss {_num(loss)}")
    return printable("  ".join(parts))
