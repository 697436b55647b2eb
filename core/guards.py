"""Guards: rules a job watches itself with, each a condition and an action.

A person declares them at launch (``forgather launch --guard nan:abort``), in
``FORGATHER_GUARDS`` (the same texts, ``;`` between them), or as ``guards=`` of the
``Controller`` and the callbacks. The spelling is ``KIND:ACTION[,NAME=VALUE...]``:

- ``nan``: the loss is NaN or infinite on any rank. Every rank votes at each agreed
  check, so all of them act at the same step, whichever rank saw it.
- ``spike``: the loss is above ``factor`` times its average over the last ``window``
  checks, ``times`` checks in a row (rank 0's loss, the one the trainer logs).
- ``slowdown``: steps/s below ``fraction`` of the run's own median for ``for`` seconds.
- ``stall``: the job's stall (no step past the stall threshold); ``alert`` or ``abort``
  only, since a stalled loop takes no save or stop (the launcher carries the abort out).
- ``straggler``: a rank whose own time per step is ``factor`` times the median of the
  other ranks', for ``for`` seconds. Stragglers are named in the status without a guard
  too (:data:`STRAGGLER_FACTOR`, :data:`STRAGGLER_FOR`); the guard adds an action.

Actions: ``alert`` (a message to the job's sinks, nothing else), ``save``, ``save-stop``,
``stop``, ``abort``, ``pause`` (a command, through the same ledger as a person's, whose receipt names
the guard and its evidence). A rule this module cannot read is refused with a
:class:`GuardError` that says what was wrong and what is allowed, before anything starts.

The watches (:class:`SpikeWatch`, :class:`SlowdownWatch`) are pure: they are handed the
values and the time, and answer with the evidence when they fire, once per episode (they
re-arm when the condition clears).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forgather_control.core.commands import CLI_VERBS, PLAIN_VERBS, Command
from forgather_control.core.env import ENV_GUARDS

if TYPE_CHECKING:
    from forgather_control.core.records import GuardRule

__all__ = [
    "ACTIONS",
    "ENV_GUARDS",
    "KINDS",
    "STRAGGLER_FACTOR",
    "STRAGGLER_FOR",
    "GuardError",
    "SlowdownWatch",
    "SpikeWatch",
    "StragglerWatch",
    "action_command",
    "guards_from_env",
    "nonfinite",
    "parse_guard",
    "parse_guards",
]

#: A rank is a straggler when its own time per step is this many times the median of the
#: others' (a 50% slower data loader or GPU is named; noise between equal ranks is not) ...
STRAGGLER_FACTOR = 1.25
#: ... for this long (seconds): a pause of one rank (its own save) is no straggler.
STRAGGLER_FOR = 30.0

#: What a guard may do: tell people, or one of the commands a person sends (not eval).
ACTIONS: tuple[str, ...] = ("alert", *(v for v, c in PLAIN_VERBS.items() if c != Command.EVALUATE))


@dataclass(frozen=True)
class _Param:
    kind: type
    default: float | int | str
    low: float | None = None  # exclusive bounds
    high: float | None = None
    minimum: float | None = None  # inclusive
    help: str = ""

    def check(self, kind: str, name: str, raw: str) -> float | int | str:
        where = f"guard {kind!r}: {name}={raw!r}"
        if self.kind is str:
            if not raw or len(raw) > 64 or not raw.replace("_", "").replace("/", "").replace(".", "").replace("-", "").isalnum():
                raise GuardError(f"{where} is not a metric name (letters, digits, _ . / -; at most 64)")
            return raw
        try:
            value: float | int = int(raw) if self.kind is int else float(raw)
        except ValueError:
            raise GuardError(f"{where} is not {'an integer' if self.kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise GuardError(f"{where} is not a finite number")
        if (
            (self.low is not None and value <= self.low)
            or (self.high is not None and value >= self.high)
            or (self.minimum is not None and value < self.minimum)
        ):
            raise GuardError(f"{where} is out of range: {self.help}")
        return value


#: Each kind's parameters: type, default, range (what the error says when it is not met).
KINDS: dict[str, dict[str, _Param]] = {
    "nan": {"metric": _Param(str, "loss", help="the metric watched")},
    "spike": {
        "factor": _Param(float, 3.0, low=1.0, high=1e6, help="more than 1 (the loss above factor x its recent average)"),
        "window": _Param(int, 20, minimum=2, high=100_001, help="2 to 100000 checks"),
        "times": _Param(int, 3, minimum=1, high=100_001, help="1 to 100000 checks in a row"),
        "metric": _Param(str, "loss", help="the metric watched"),
    },
    "slowdown": {
        "fraction": _Param(float, 0.5, low=0.0, high=1.0, help="between 0 and 1 (of the run's median steps/s)"),
        "for": _Param(float, 120.0, minimum=0.0, high=1e7, help="0 or more seconds"),
    },
    "stall": {},
    "straggler": {
        "factor": _Param(float, STRAGGLER_FACTOR, low=1.0, high=1e6, help="more than 1 (a rank's own time per step over the median of the others')"),
        "for": _Param(float, STRAGGLER_FOR, minimum=0.0, high=1e7, help="0 or more seconds"),
    },
}
#: A stalled loop takes no save or stop: only these.
_STALL_ACTIONS = ("alert", "abort")


class GuardError(ValueError):
    """A guard that cannot be read: the message says what and what is allowed."""


def parse_guard(text: str) -> GuardRule:
    """One rule from ``KIND:ACTION[,NAME=VALUE...]``; GuardError when it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise GuardError("an empty guard; write KIND:ACTION, e.g. nan:abort")
    if len(text) > 256:
        raise GuardError(f"guard {text[:40]!r}... is longer than 256 characters")
    head, _, rest = text.strip().partition(",")
    kind, colon, action = head.partition(":")
    kind, action = kind.strip().lower(), action.strip().lower()
    if kind not in KINDS:
        raise GuardError(f"guard {text!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    if not colon or not action:
        raise GuardError(f"guard {text!r} names no action; write {kind}:ACTION with ACTION one of {', '.join(ACTIONS)}")
    if action not in ACTIONS:
        raise GuardError(f"guard {text!r}: unknown action {action!r}; actions: {', '.join(ACTIONS)}")
    if kind == "stall" and action not in _STALL_ACTIONS:
        raise GuardError(f"guard {text!r}: a stalled loop takes no {action}; a stall guard may only {' or '.join(_STALL_ACTIONS)}")
    params = KINDS[kind]
    given: dict[str, float | int | str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, raw = part.partition("=")
        name = name.strip().lower()
        if not eq:
            raise GuardError(f"guard {text!r}: {part!r} is not NAME=VALUE")
        if name not in params:
            allowed = ", ".join(params) or "none"
            raise GuardError(f"guard {text!r}: {kind} takes no {name!r}; its parameters: {allowed}")
        if name in given:
            raise GuardError(f"guard {text!r}: {name} is given twice")
        given[name] = params[name].check(kind, name, raw.strip())
    values = {name: given.get(name, p.default) for name, p in params.items()}
    canonical = ",".join([f"{kind}:{action}", *(f"{n}={_show(v)}" for n, v in values.items())])
    from forgather_control.core.records import GuardRule  # a rank without guards loads no record (issue 24)

    return GuardRule(
        kind=kind,
        action=action,
        text=canonical,
        factor=_float(values.get("factor")),
        window=_int(values.get("window")),
        times=_int(values.get("times")),
        fraction=_float(values.get("fraction")),
        for_=_float(values.get("for")),
        metric=values["metric"] if isinstance(values.get("metric"), str) else None,  # type: ignore[arg-type]
    )


def parse_guards(texts: Iterable[str] | str | None) -> tuple[GuardRule, ...]:
    """Every rule of ``texts`` (one text or several; ``;`` separates rules in one text).
    The same rule twice is one; two rules of one kind with different actions are refused
    (which would win?)."""
    if texts is None:
        return ()
    if isinstance(texts, str):
        texts = [texts]
    rules: list[GuardRule] = []
    for text in texts:
        if not isinstance(text, str):
            raise GuardError(f"a guard is text (KIND:ACTION), not {type(text).__name__}")
        for one in filter(None, (t.strip() for t in text.split(";"))):
            rule = parse_guard(one)
            if any(r.text == rule.text for r in rules):
                continue
            same = next((r for r in rules if r.kind == rule.kind), None)
            if same is not None:
                raise GuardError(f"two {rule.kind} guards ({same.text} and {rule.text}); give one per kind")
            rules.append(rule)
    return tuple(rules)


def guards_from_env(environ: Mapping[str, str]) -> tuple[GuardRule, ...]:
    """The guards ``FORGATHER_GUARDS`` names (none when unset); GuardError naming the
    variable when it cannot be read."""
    raw = environ.get(ENV_GUARDS)
    if not raw:
        return ()
    try:
        return parse_guards(raw)
    except GuardError as exc:
        raise GuardError(f"{ENV_GUARDS}: {exc}") from None


def action_command(action: str) -> Command | None:
    """The command a guard's action sends (None for ``alert``)."""
    return CLI_VERBS.get(action)


def nonfinite(value: object) -> bool:
    """NaN or infinite (a number only: a missing or textual metric is not a verdict)."""
    return isinstance(value, float) and not math.isfinite(value)


class SpikeWatch:
    """The loss above ``factor`` times its average over the previous ``window`` values,
    ``times`` values in a row. Fed one value per check; fires once per episode."""

    def __init__(self, rule: GuardRule) -> None:
        self.factor = rule.factor or 3.0
        self.times = rule.times or 3
        self._recent: deque[float] = deque(maxlen=rule.window or 20)
        self._run = 0
        self._fired = False

    def observe(self, value: object) -> tuple[str, dict[str, float]] | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return None  # a non-finite loss is the nan guard's
        v = float(value)
        full = len(self._recent) == self._recent.maxlen
        average = sum(self._recent) / len(self._recent) if self._recent else 0.0
        above = full and average > 0 and v > self.factor * average
        if not above:
            self._recent.append(v)  # a spike does not raise the bar it is measured by
            self._run = 0
            self._fired = False
            return None
        self._run += 1
        if self._run < self.times or self._fired:
            return None
        self._fired = True
        return (
            f"the loss {v:.6g} is {v / average:.3g}x its average {average:.6g} over the last {len(self._recent)} checks, {self._run} checks in a row",
            {"loss": v, "average": average, "ratio": v / average},
        )


class SlowdownWatch:
    """Steps/s below ``fraction`` of the run's own median for ``for`` seconds. Fed the
    rate and the time at each check; the median is over the checks' rates so far (the
    last 10,000, slow spells left out), so it is the run's own pace; fires once per
    episode."""

    KEEP = 10_000

    def __init__(self, rule: GuardRule) -> None:
        self.fraction = rule.fraction or 0.5
        self.duration = rule.for_ if rule.for_ is not None else 120.0
        self._sorted: list[float] = []
        self._order: deque[float] = deque()
        self._below_since: float | None = None
        self._fired = False

    def median(self) -> float | None:
        n = len(self._sorted)
        if n == 0:
            return None
        return self._sorted[n // 2] if n % 2 else (self._sorted[n // 2 - 1] + self._sorted[n // 2]) / 2

    def observe(self, rate: float | None, now: float) -> tuple[str, dict[str, float]] | None:
        if rate is None or not math.isfinite(rate) or rate <= 0:
            return None
        median = self.median()
        slow = median is not None and len(self._sorted) >= 5 and rate < self.fraction * median
        if not slow or median is None:
            self._add(rate)  # a slow spell does not lower the pace it is measured against
            self._below_since = None
            self._fired = False
            return None
        if self._below_since is None:
            self._below_since = now
        if self._fired or now - self._below_since < self.duration:
            return None
        self._fired = True
        return (
            f"{rate:.3g} steps/s is {rate / median:.0%} of the run's median {median:.3g} for {now - self._below_since:.0f} s",
            {"steps_per_second": rate, "median": median, "for": now - self._below_since},
        )

    def _add(self, rate: float) -> None:
        bisect.insort(self._sorted, rate)
        self._order.append(rate)
        if len(self._order) > self.KEEP:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]


class StragglerWatch:
    """Each rank's own time per step, as heard at each check (None: not measured yet),
    smoothed; a rank whose time is ``factor`` times the median of the others' for
    ``duration`` seconds is named, once per spell (a spell ends when it falls back under
    the midpoint between 1 and ``factor``)."""

    SMOOTHING = 0.3

    def __init__(self, *, factor: float = STRAGGLER_FACTOR, duration: float = STRAGGLER_FOR) -> None:
        self.factor = factor
        self.duration = duration
        self._smooth: dict[int, float] = {}
        self._slow_since: dict[int, float] = {}
        #: rank -> (factor when named, named since): the ranks named now
        self.named: dict[int, tuple[float, float]] = {}

    def observe(self, seconds: Sequence[float | None], now: float) -> list[tuple[int, float, float]]:
        """Take one check's times (index = rank); the ranks named at this look, each as
        (rank, factor, slow since)."""
        a = self.SMOOTHING
        for rank, value in enumerate(seconds):
            if value is not None and value > 0 and math.isfinite(value):
                old = self._smooth.get(rank)
                self._smooth[rank] = value if old is None else a * value + (1 - a) * old
        named: list[tuple[int, float, float]] = []
        clear = 1 + (self.factor - 1) / 2
        for rank, ratio in self.ratios().items():
            if ratio is None or ratio < clear:
                self._slow_since.pop(rank, None)
                self.named.pop(rank, None)
                continue
            if ratio < self.factor:
                continue  # between: the spell (or its absence) goes on
            since = self._slow_since.setdefault(rank, now)
            if rank not in self.named and now - since >= self.duration:
                self.named[rank] = (ratio, since)
                named.append((rank, ratio, since))
        return named

    def seconds(self, rank: int) -> float | None:
        return self._smooth.get(rank)

    def ratios(self) -> dict[int, float | None]:
        """Each measured rank's time over the median of the others' (None when alone)."""
        out: dict[int, float | None] = {}
        values = sorted(self._smooth.values())
        for rank, mine in self._smooth.items():
            median = _median_without(values, bisect.bisect_left(values, mine))
            out[rank] = mine / median if median else None
        return out


def _median_without(values: Sequence[float], i: int) -> float | None:
    """The median of sorted ``values`` without the one at ``i`` (no copy: a thousand
    ranks at each check)."""
    n = len(values) - 1
    if n <= 0:
        return None

    def at(k: int) -> float:
        return values[k] if k < i else values[k + 1]

    return at(n // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2


def _show(value: float | int | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None
