"""The control API's request and answer shapes as rank 0 reads and writes them: msgspec,
no pydantic (it and FastAPI cost rank 0 about 15 MiB: docs/design-notes.md, "A hostile
world").

:mod:`.api` describes the same shapes for ``/openapi.json`` and takes its limits from
here; ``tests/callback/test_server_schema.py`` holds the two to one another (the same
bodies accepted and refused, the same fields answered).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from forgather_control.core import CLI_VERBS, VALID_COMMANDS
from forgather_control.core.knobs import MAX_CHANGES

__all__ = ["KEY_MAX", "KNOB_NAME_PATTERN", "KNOB_TEXT_MAX", "MAX_CHANGES", "RECEIPT_FIELDS", "RESULT_FIELDS", "CommandRequest", "describe", "receipt"]

#: The longest idempotency key accepted.
KEY_MAX = 128
#: A knob's name as the schema publishes it (ECMA and Rust regex: ``$`` is the end).
KNOB_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
#: The longest knob name, and the longest text value a ``set`` may carry.
KNOB_TEXT_MAX = 64
#: Every name a command may be sent by: the wire names and the CLI's verbs.
COMMAND_NAMES: tuple[str, ...] = tuple(dict.fromkeys((*VALID_COMMANDS, *CLI_VERBS)))

# Python's ``$`` also matches before a final newline: the end is ``\Z`` here.
_NAME_RE = KNOB_NAME_PATTERN[:-1] + r"\Z"
_KnobName = Annotated[str, Meta(min_length=1, max_length=KNOB_TEXT_MAX, pattern=_NAME_RE)]
_KnobValue = bool | int | float | Annotated[str, Meta(max_length=KNOB_TEXT_MAX)]


class KnobChange(Struct, forbid_unknown_fields=True):
    name: _KnobName
    value: _KnobValue
    old: _KnobValue | None = None


class CommandOptions(Struct, forbid_unknown_fields=True):
    evaluate: bool | None = None
    changes: Annotated[list[KnobChange], Meta(min_length=1, max_length=MAX_CHANGES)] | None = None


class CommandRequest(Struct, forbid_unknown_fields=True):
    """A command to queue (``api.CommandRequest`` is its description)."""

    command: Literal[COMMAND_NAMES]  # type: ignore[valid-type]
    key: Annotated[str, Meta(min_length=1, max_length=KEY_MAX)] | None = None
    options: CommandOptions | None = None


_FIELDS: dict[str, Any] = {f.name: f.type for f in msgspec.structs.fields(CommandRequest)}
#: "Expected `str`, got `int` - at `$.changes[0].name`": the problem, and where
_PROBLEM = re.compile(r"(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>.*)`", re.DOTALL)
_MISSING = re.compile(r"Object missing required field `(?P<name>.*)`", re.DOTALL)


def describe(data: Any) -> str:
    """Why ``data`` (a body decoded from JSON) is not a :class:`CommandRequest`, in the
    words of the API: each field's first problem in the order of the fields, then each
    unknown field, at most five."""
    valid = f"valid commands: {', '.join(VALID_COMMANDS)}"
    if not isinstance(data, dict):
        return 'expected a JSON object with a "command" field'
    problems = []
    if "command" not in data:
        problems.append(f'expected a JSON object with a "command" field; {valid}')
    for name, kind in _FIELDS.items():
        if name not in data:
            continue
        try:
            msgspec.convert(data[name], kind)
        except msgspec.ValidationError as exc:
            if name == "command":
                problems.append(f"unknown command {data[name]!r}; {valid}")
            elif name == "key":
                problems.append(f"key must be a non-empty string of at most {KEY_MAX} characters")
            else:
                problems.append(_problem(name, str(exc)))
    problems += [_unknown(str(name)) for name in data if name not in _FIELDS]
    return "; ".join(problems[:5])


def _unknown(where: str) -> str:
    return f"unknown field {where!r}; only command, key and options (evaluate, changes) are accepted"


def _problem(field: str, message: str) -> str:
    """One msgspec problem inside ``field``, its place written as the API's dotted path
    (``options.changes.0.name``)."""
    match = _PROBLEM.fullmatch(message)
    msg, at = (match.group("msg"), match.group("at") or "") if match else (message, "")
    where = ".".join([field, *(part for part in re.split(r"[.\[\]]+", at) if part)])
    unknown = _UNKNOWN.fullmatch(msg)
    if unknown:
        return _unknown(f"{where}.{unknown.group('name')}")
    missing = _MISSING.fullmatch(msg)
    if missing:
        return f"{where}.{missing.group('name')}: Field required"
    return f"{where}: {msg.replace(repr(_NAME_RE), repr(KNOB_NAME_PATTERN))}"


#: A receipt's fields as the API answers them, each null when unset (``api.Receipt``'s,
#: in its order); a record's other fields (``guard``) follow. Its parts have only theirs.
RECEIPT_FIELDS = ("id", "command", "state", "key", "source", "seq", "created_at", "updated_at", "step", "result", "reason", "options")
#: The same for a receipt's ``result`` (``api.CommandResult``).
RESULT_FIELDS = ("checkpoint", "step", "saved_at_step", "metrics", "final_state", "final_step", "ended_by", "changes")
_OPTION_FIELDS = ("evaluate", "changes")
_CHANGE_FIELDS = ("name", "value", "old")


def _whole(fields: tuple[str, ...], given: dict[str, Any], *, others: bool = False) -> dict[str, Any]:
    """``fields`` in order, null when not given; with ``others``, the rest after them."""
    out = {name: given.get(name) for name in fields}
    if others:
        out.update((name, value) for name, value in given.items() if name not in out)
    return out


def _changes(changes: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    return None if changes is None else [_whole(_CHANGE_FIELDS, change) for change in changes]


def receipt(record: dict[str, Any]) -> dict[str, Any]:
    """A receipt record (``encode``d) as the API sends it: every field of ``api.Receipt``,
    its result and options whole, null when unset."""
    out = _whole(RECEIPT_FIELDS, record, others=True)
    if out["result"] is not None:
        result = out["result"] = _whole(RESULT_FIELDS, out["result"])
        result["changes"] = _changes(result["changes"])
    if out["options"] is not None:
        options = out["options"] = _whole(_OPTION_FIELDS, out["options"])
        options["changes"] = _changes(options["changes"])
    return out
