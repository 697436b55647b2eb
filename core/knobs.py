"""Live knobs: values a person changes in a running job, on every rank at one step.

A knob is declared on every rank with a kind, the script's value and a range: the
trainer integrations declare the built-ins (:data:`BUILTIN`) for what their trainer can
change, a loop its own with ``Controller.knob``. A change (``set lr_scale=0.5``) is
checked by :func:`check_change` before it is queued: by the client against the table
the job's status shows, then by rank 0 against its own table (the authority); a refused
change leaves nothing in the ledger. Queued, it travels to every rank in the agreement's
one all-reduce (:func:`pack` / :func:`unpack`: the name's key and the value's float64
bits in non-negative halves, so MAX lets rank 0's through) and every rank applies it at
the check's agreed step (:meth:`KnobTable.apply`).

Learning rates are one state: ``lr_scale``, the factor on the script's schedule (1 at
start). ``set lr=X`` is ``lr_scale`` times ``X / lr now``; every parameter group and the
scheduler's base rates change in proportion, so the schedule keeps the change. A
checkpoint records the knob values of its time (``CheckpointRecord.knobs``): a resumed
run's optimizer and scheduler come back with that scale, and the job's last value is
applied relative to it (:meth:`KnobTable.carry`).
"""

from __future__ import annotations

import logging
import math
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from forgather_control.core.commands import Command, KnobRefused
from forgather_control.core.errors import BadKnob

if TYPE_CHECKING:
    from forgather_control.core.records import CheckpointRecord, CommandOptions, KnobCarry, KnobChange, KnobSetting, KnobValue

log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN",
    "KINDS",
    "MAX_CHANGES",
    "SLOTS",
    "Changed",
    "Knob",
    "KnobError",
    "KnobTable",
    "carry_from",
    "check_change",
    "check_changes",
    "describe",
    "describe_value",
    "key",
    "pack",
    "parse_assignment",
    "unpack",
]

#: The kinds of knob; a value travels as a float64 whatever its kind.
KINDS = ("float", "int", "bool")
#: The most changes one ``set`` carries: two agreement slots each.
MAX_CHANGES = 8
SLOTS = 2 * MAX_CHANGES
#: The knobs the trainer integrations declare where their trainer can do it.
BUILTIN = ("lr", "lr_scale", "max_steps", "eval_every", "save_every", "log_every", "max_grad_norm")
#: The largest integer a knob holds exactly (a float64's).
INT_LIMIT = 2**53
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

#: Origins of a knob's value, as the status says them.
SCRIPT, SET, RESUMED = "script", "set", "resumed"


class Changed(NamedTuple):
    """A knob this process changed (an applied ``set``, a relaunch's last value):
    ``name``, ``old`` -> ``value``. Rank 0's receipt carries it as a record
    (:meth:`as_record`); a rank other than 0 makes none (issue 24: no typed record to
    train)."""

    name: str
    value: KnobValue
    old: KnobValue

    def as_record(self) -> KnobChange:
        from forgather_control.core.records import KnobChange

        return KnobChange(name=self.name, value=self.value, old=self.old)


class KnobError(BadKnob):
    """A change refused: unknown knob, wrong type, out of range (nothing is queued)."""


class Spec(Protocol):
    """What a change is checked against: a declared :class:`Knob`, or a
    :class:`~.records.KnobSetting` read from a job's status."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def min(self) -> float | None: ...
    @property
    def max(self) -> float | None: ...
    @property
    def above(self) -> float | None: ...


def parse_assignment(text: str) -> KnobChange:
    """``NAME=VALUE`` as typed; the value stays text until checked against the knob."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise KnobError(f"{text!r} is not NAME=VALUE (for example lr_scale=0.5)")
    if not _NAME.fullmatch(name):
        raise KnobError(f"{name[:64]!r} is not a knob name (lowercase letters, digits and _, starting with a letter)")
    if len(value) > 64:
        raise KnobError(f"the value for {name} is over 64 characters")
    from forgather_control.core.records import KnobChange  # a client's or rank 0's (a training rank loads no record: issue 24)

    return KnobChange(name=name, value=value)


def _coerce(spec: Spec, raw: object) -> KnobValue:
    """``raw`` (text as typed, or a JSON number or boolean) as a value of ``spec``'s kind."""
    name, kind = spec.name, spec.kind
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        if type(raw) is int and raw in (0, 1):
            return bool(raw)
        raise KnobError(f"{name} is a bool: give true or false, not {str(raw)[:64]!r}")
    number: float | int
    if isinstance(raw, bool):
        raise KnobError(f"{name} is {_a(kind)}, not a bool")
    if isinstance(raw, (int, float)):
        number = raw
    elif isinstance(raw, str):
        try:
            number = int(raw)
        except ValueError:
            try:
                number = float(raw)
            except ValueError:
                raise KnobError(f"{name} is {_a(kind)}: {raw[:64]!r} is not a number") from None
    else:
        raise KnobError(f"{name} is {_a(kind)}, not {type(raw).__name__}")
    if not math.isfinite(number):
        raise KnobError(f"{name} must be a finite number, not {raw!r}")
    if kind == "int":
        if isinstance(number, float):
            if not number.is_integer():
                raise KnobError(f"{name} is an int: {raw!r} is not a whole number")
            number = int(number)
        if abs(number) > INT_LIMIT:
            raise KnobError(f"{name} must be within ±2**53")
        return number
    return float(number)


def _a(kind: str) -> str:
    return "an int" if kind == "int" else f"a {kind}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def check_change(spec: Spec, raw: object) -> KnobValue:
    """The value ``raw`` asks for ``spec``, checked (kind, range); :class:`KnobError` says why not."""
    value = _coerce(spec, raw)
    if spec.kind != "bool":
        number = float(value)
        if spec.above is not None and not number > spec.above:
            raise KnobError(f"{spec.name} must be above {_fmt(spec.above)}, not {_fmt(number)}")
        if spec.min is not None and number < spec.min:
            raise KnobError(f"{spec.name} must be at least {_fmt(spec.min)}, not {_fmt(number)}")
        if spec.max is not None and number > spec.max:
            raise KnobError(f"{spec.name} must be at most {_fmt(spec.max)}, not {_fmt(number)}")
    return value


def check_changes(specs: Iterable[Spec], changes: Sequence[KnobChange]) -> list[KnobChange]:
    """Every change of one ``set`` checked against a job's knobs (``specs``): at least one,
    at most MAX_CHANGES, each name once, known, and its value of the knob's kind and
    range. Returns the changes with their values converted; the first refusal raises."""
    table = {s.name: s for s in specs}
    if not changes:
        raise KnobError("set needs at least one NAME=VALUE")
    if len(changes) > MAX_CHANGES:
        raise KnobError(f"one set changes at most {MAX_CHANGES} knobs, not {len(changes)}")
    names = [c.name for c in changes]
    for name in names:
        if names.count(name) > 1:
            raise KnobError(f"{name} is given twice")
    if "lr" in names and "lr_scale" in names:
        raise KnobError("lr and lr_scale are one setting (the rate is the script's schedule times the scale): give one")
    from forgather_control.core.records import KnobChange

    out = []
    for change in changes:
        spec = table.get(change.name)
        if spec is None:
            known = ", ".join(sorted(table)) or "none yet (the trainer declares them when training starts)"
            raise KnobError(f"this job has no knob {change.name!r}; its knobs: {known}")
        out.append(KnobChange(name=change.name, value=check_change(spec, change.value)))
    return out


# -- on the wire: two non-negative int64 slots per change --------------------------------
def key(name: str) -> int:
    """A name's key on the wire, in 1 .. 2**31 - 1 (the same on every rank)."""
    return zlib.crc32(name.encode()) % (2**31 - 1) + 1


def pack(changes: Sequence[tuple[int, float]]) -> list[int]:
    """``(key, value)`` pairs as SLOTS non-negative ints (zeros after the last): the first
    slot holds the key and the value's high 32 bits, the second its low 32 bits."""
    slots = [0] * SLOTS
    for i, (k, value) in enumerate(changes[:MAX_CHANGES]):
        (bits,) = struct.unpack("<Q", struct.pack("<d", float(value)))
        slots[2 * i] = (k << 32) | (bits >> 32)
        slots[2 * i + 1] = bits & 0xFFFF_FFFF
    return slots


def unpack(slots: Sequence[int]) -> list[tuple[int, float]]:
    """What :func:`pack` packed: the ``(key, value)`` pairs, in order."""
    out = []
    for i in range(0, min(len(slots), SLOTS), 2):
        first, low = int(slots[i]), int(slots[i + 1])
        if first <= 0:
            break
        bits = ((first & 0xFFFF_FFFF) << 32) | (low & 0xFFFF_FFFF)
        (value,) = struct.unpack("<d", struct.pack("<Q", bits))
        out.append((first >> 32, value))
    return out


# -- a job's knobs ------------------------------------------------------------------------
@dataclass(eq=False)
class Knob:
    """One declared knob: read ``value`` each step (a plain attribute). ``on_change(old,
    new)`` runs on every rank, in the training thread, at the agreed step (the integration
    changes its trainer there); ``read()`` gives the value now when the trainer owns it
    (the learning rate, which its schedule moves)."""

    name: str
    kind: str
    default: KnobValue
    min: float | None = None
    max: float | None = None
    above: float | None = None
    help: str | None = None
    on_change: Callable[[KnobValue, KnobValue], None] | None = None
    read: Callable[[], KnobValue | None] | None = None
    #: its effect is in the trainer's checkpoint (the optimizer's and scheduler's state)
    saved: bool = False
    #: a relaunch carries its last value (not ``lr``: its changes are ``lr_scale``'s)
    carry: bool = True
    value: KnobValue = field(init=False)
    origin: str = field(default=SCRIPT, init=False)
    step: int | None = field(default=None, init=False)
    command_id: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.value = self.default

    def now(self) -> KnobValue:
        """The value as the status shows it: the trainer's own when it keeps it."""
        if self.read is not None:
            try:
                found = self.read()
            except Exception:  # noqa: BLE001 - a status must not fail on a trainer's state
                found = None
            if isinstance(found, (int, float)) and math.isfinite(found):
                return found
        return self.value

    def setting(self) -> KnobSetting:
        from forgather_control.core.records import KnobSetting  # rank 0's status

        return KnobSetting(
            name=self.name,
            kind=self.kind,
            value=self.now(),
            default=self.default,
            min=self.min,
            max=self.max,
            above=self.above,
            origin=self.origin,
            step=self.step,
            command_id=self.command_id,
            help=self.help,
            carry=None if self.carry else False,
        )


class KnobTable:
    """The knobs of one process, by name (declared in any order: a change names its knob
    by :func:`key`). Declared and applied in the training thread; read (settings) from
    the I/O and HTTP threads."""

    def __init__(self, carried: Mapping[str, KnobValue] | None = None, at_checkpoint: Mapping[str, KnobValue] | None = None) -> None:
        self._knobs: dict[str, Knob] = {}
        self._by_key: dict[int, Knob] = {}
        self._lock = threading.Lock()
        #: the job's last values (a relaunch), applied as each knob is declared
        self._carried = dict(carried or {})
        self._at_checkpoint = dict(at_checkpoint or {})
        #: what a relaunch applied, for the run's first log line
        self.resumed: list[Changed] = []
        self._moved: list[Knob] = []
        #: rules over several knobs (:meth:`rule`), by name
        self._rules: dict[str, Callable[[Mapping[str, KnobValue]], str | None]] = {}

    def declare(
        self,
        name: str,
        default: KnobValue,
        *,
        kind: str | None = None,
        min: float | None = None,
        max: float | None = None,
        above: float | None = None,
        help: str | None = None,
        on_change: Callable[[KnobValue, KnobValue], None] | None = None,
        read: Callable[[], KnobValue | None] | None = None,
        saved: bool = False,
        carry: bool = True,
    ) -> Knob:
        """Declare ``name`` (again: the new declaration replaces the old, keeping a value
        set meanwhile). Its kind is ``default``'s unless given."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a knob name: lowercase letters, digits and _, starting with a letter, at most 64")
        kind = kind or ("bool" if isinstance(default, bool) else "int" if isinstance(default, int) else "float")
        if kind not in KINDS:
            raise ValueError(f"knob {name}: kind {kind!r} is not one of {', '.join(KINDS)}")
        knob = Knob(name, kind, default, min=min, max=max, above=above, help=help, on_change=on_change, read=read, saved=saved, carry=carry)
        knob.default = knob.value = check_change(knob, default)  # the script's own value is in range
        k = key(name)
        with self._lock:
            other = self._by_key.get(k)
            if other is not None and other.name != name:
                raise ValueError(f"knob names {name!r} and {other.name!r} share a key; rename one")
            old = self._knobs.get(name)
            if old is not None and old.origin != SCRIPT:
                knob.value, knob.origin, knob.step, knob.command_id = old.value, old.origin, old.step, old.command_id
            self._knobs[name] = knob
            self._by_key[k] = knob
        if old is None and carry and name in self._carried:
            self._resume(knob, self._carried.pop(name))
        elif old is None and saved and name in self._at_checkpoint:
            self._back_to_script(knob, self._at_checkpoint[name])
        return knob

    def _back_to_script(self, knob: Knob, saved_at: object) -> None:
        """A knob whose effect is in the checkpoint, not carried (``--script-knobs``, or
        the last run started it at the script's value): the trainer's state comes back
        with the value of the checkpoint's time; bring it to the script's."""
        try:
            old = check_change(knob, saved_at)
        except KnobError:
            return
        if old == knob.value or knob.on_change is None:
            return
        try:
            knob.on_change(old, knob.value)
        except Exception as exc:  # noqa: BLE001 - the run goes on; the log says what it trains with
            log.error(
                "forgather control: knob %s could not be brought back to the script's %s from the checkpoint's %s: %s",
                knob.name,
                _show(knob.value),
                _show(old),
                exc,
            )
            return
        log.warning("forgather control: knob %s starts at the script's %s (the checkpoint was saved with %s)", knob.name, _show(knob.value), _show(old))

    def _resume(self, knob: Knob, target: object) -> None:
        """Start ``knob`` at the job's last value. A knob whose effect is in the trainer's
        checkpoint starts from the value of the checkpoint's time and moves from there."""
        try:
            value = check_change(knob, target)
        except KnobError as exc:
            log.warning("forgather control: knob %s keeps the script's value; the last run's is refused: %s", knob.name, exc)
            return
        if knob.saved and knob.name in self._at_checkpoint:
            try:
                knob.value = check_change(knob, self._at_checkpoint[knob.name])
            except KnobError:
                pass
        old = knob.value
        if value != old and knob.on_change is not None:
            knob.on_change(old, value)
        knob.value, knob.origin = value, RESUMED
        self.resumed.append(Changed(knob.name, value, old))

    def __contains__(self, name: object) -> bool:
        return name in self._knobs

    def __getitem__(self, name: str) -> KnobValue:
        return self._knobs[name].value

    def get(self, name: str) -> Knob | None:
        return self._knobs.get(name)

    def __len__(self) -> int:
        return len(self._knobs)

    def rule(self, name: str, check: Callable[[Mapping[str, KnobValue]], str | None]) -> None:
        """A rule over several knobs, named (declared again, it replaces the last):
        ``check(values)`` gets every knob's value as it would be after a ``set`` and says
        why that is refused, or None. Rank 0 refuses such a ``set`` when it is sent
        (:meth:`vet`), instead of each rank failing it at the agreed step. It judges the
        values now: a ``set`` still queued is not counted, so the knob's ``on_change``
        checks again when it applies."""
        with self._lock:
            self._rules[name] = check

    def vet(self, changes: Sequence[KnobChange]) -> list[KnobChange]:
        """Rank 0's check of a ``set`` against its knobs (:func:`check_changes`) and their
        rules (:meth:`rule`)."""
        with self._lock:
            specs = list(self._knobs.values())
            rules = list(self._rules.values())
        vetted = check_changes(specs, changes)
        after: dict[str, KnobValue] = {k.name: k.value for k in specs}
        after.update((c.name, c.value) for c in vetted if not isinstance(c.value, str))  # converted: never a str
        for check in rules:
            why = check(after)
            if why is not None:
                raise KnobError(why)
        return vetted

    def vet_command(self, command: Command, options: CommandOptions | None) -> CommandOptions | None:
        """The ledger's ``vet``: a ``set``'s changes checked against this table, their
        values converted (:class:`~.commands.KnobRefused` otherwise); anything else passes."""
        if command != Command.SET or options is None or not options.changes:
            return options
        from forgather_control.core.records import CommandOptions

        try:
            return CommandOptions(changes=self.vet(options.changes))
        except KnobError as exc:
            raise KnobRefused(str(exc)) from None

    def wire(self, changes: Sequence[KnobChange]) -> list[int]:
        """A vetted ``set`` as agreement slots."""
        return pack([(key(c.name), float(c.value)) for c in changes])

    def apply(self, slots: Sequence[int], *, step: int, command_id: str | None) -> list[Changed]:
        """Every rank, at the agreed step: the changes the slots carry, applied in order
        (the trainer's ``on_change`` first; a change it refuses or fails is skipped and
        logged). Returns what changed, old -> new."""
        done = []
        for k, number in unpack(slots):
            knob = self._by_key.get(k)
            if knob is None:
                log.error("forgather control: a change for a knob this rank has not declared (key %s) is skipped", k)
                continue
            try:
                value = check_change(knob, number != 0 if knob.kind == "bool" else number)  # a bool travels as 0.0 or 1.0
                old = knob.now()
                if knob.on_change is not None:
                    knob.on_change(knob.value, value)
            except Exception as exc:  # noqa: BLE001 - the loop goes on without this change
                log.error("forgather control: knob %s not changed at step %s: %s", knob.name, step, exc)
                continue
            knob.value, knob.origin, knob.step, knob.command_id = value, SET, step, command_id
            done.append(Changed(knob.name, value, old))
            for moved in self._moved:
                moved.step, moved.command_id = step, command_id
            self._moved.clear()
        return done

    def moved(self, knob: Knob, value: KnobValue) -> None:
        """``knob`` moved by another's change (``lr`` moves ``lr_scale``), from its
        ``on_change``: its value is set, its trainer is not called again."""
        knob.value, knob.origin = value, SET
        self._moved.append(knob)

    def settings(self) -> list[KnobSetting] | None:
        with self._lock:
            knobs = list(self._knobs.values())
        return [k.setting() for k in knobs[:64]] or None

    def values(self) -> dict[str, KnobValue] | None:
        """Every knob's own value (not the trainer's reading), for a checkpoint's record."""
        with self._lock:
            return {k.name: k.value for k in list(self._knobs.values())[:64]} or None

    def changed(self) -> dict[str, KnobValue]:
        """The knobs whose value is not the script's: what a relaunch carries."""
        with self._lock:
            return {k.name: k.value for k in self._knobs.values() if k.origin != SCRIPT and k.carry}


def carry_from(
    knobs: Sequence[KnobSetting] | None,
    resume_point: CheckpointRecord | None,
    *,
    before: KnobCarry | None = None,
    script: bool = False,
) -> KnobCarry | None:
    """What a relaunch carries from the job's last run (``FORGATHER_KNOBS``), or None
    when there is nothing to carry. ``knobs``: the last run's status (its ``knobs``); a
    knob there is carried when a person or an earlier relaunch gave its value (origin
    ``set`` or ``resumed``, not ``script``) and it is not marked ``carry`` false (``lr``,
    whose changes are ``lr_scale``'s). A knob that run never declared (it ended before)
    keeps what ``before`` (the carry that run was given) says. ``at_checkpoint``: the
    knob values of ``resume_point``'s time, whatever is carried: a knob whose effect is
    in the checkpoint (the learning-rate scale in the optimizer's state) moves from
    there. ``script`` (``--script-knobs``): no value is carried, every knob starts at the
    script's, and a saved one is brought back to it from the checkpoint's value."""
    values: dict[str, KnobValue] = {}
    if not script:
        declared = {k.name for k in knobs or ()}
        if before is not None:
            values.update({name: v for name, v in before.values.items() if name not in declared})
        for k in knobs or ():
            if k.origin is not None and k.origin != SCRIPT and k.carry is not False and k.value is not None:
                values[k.name] = k.value
    values = {name: v for name, v in values.items() if _NAME.fullmatch(name)}  # a name no knob can have is nobody's
    at_checkpoint = {name: v for name, v in (resume_point.knobs or {}).items() if _NAME.fullmatch(name)} if resume_point is not None else None
    if not values and not at_checkpoint:
        return None
    from forgather_control.core.records import KnobCarry

    return KnobCarry(values=dict(list(values.items())[:64]), at_checkpoint=at_checkpoint)


def describe(changes: Sequence[Changed] | Sequence[KnobChange]) -> str:
    """``lr_scale 1 -> 0.5, max_steps 1000 -> 2000``: a change as a person reads it."""
    return ", ".join(f"{c.name} {_show(c.old)} -> {_show(c.value)}" for c in changes)


def describe_value(value: object) -> str:
    """A knob's value as a person reads it: ``0.5``, ``20000``, ``true``."""
    return _show(value)


def _show(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "?"
    if isinstance(value, float):
        return _fmt(value) if value.is_integer() else f"{value:.6g}"
    return str(value)
