"""The control API's shapes: request and response models, and the errors it answers.

These are what ``/openapi.json`` publishes and what the server really sends: every
refusal is an :class:`ErrorBody` (a string ``detail``), including the 422 FastAPI would
otherwise describe as a list of validation errors. The records themselves (status,
receipt, metric history) are the classes of core/records.py; the server hands them to
these models as JSON (``encode``), at the HTTP edge only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgather_control.core import CLI_VERBS, VALID_COMMANDS

#: The longest idempotency key accepted.
KEY_MAX = 128
#: Every name a command may be sent by: the wire names and the CLI's verbs.
CommandName = Literal[(*VALID_COMMANDS, *CLI_VERBS)]  # type: ignore[valid-type]


class ErrorBody(BaseModel):
    """A refusal: what was wrong and what to do."""

    detail: str
    valid_commands: list[str] | None = None
    #: what kind of refusal (``knob``: a set the job refused; nothing was queued)
    refused: str | None = None


class Health(BaseModel):
    ok: bool
    protocol: int


class Hello(BaseModel):
    """The server's proof that it holds the job's token (see core/proof.py)."""

    job_id: str
    proof: str
    protocol: int


class JobSummary(BaseModel):
    job_id: str
    state: str | None = None
    step: int | None = None
    max_steps: int | None = None


class JobsList(BaseModel):
    jobs: list[JobSummary]


#: A knob's value as sent: a number, a boolean, or the text a person typed.
KnobValue = bool | int | float | Annotated[str, Field(max_length=64)]


class KnobChange(BaseModel):
    """One knob change (``set``): its name and the value asked; in a receipt's result,
    ``old`` is the value before it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    value: KnobValue = Field(description="a number or boolean (text is read as the knob's kind)")
    old: KnobValue | None = None


class CommandOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evaluate: bool | None = Field(default=None, description="false: a save skips the evaluation a trainer would run first")
    changes: list[KnobChange] | None = Field(
        default=None, min_length=1, max_length=8, description="set: the knob changes, applied on every rank at one step (the job's status lists its knobs)"
    )


class CommandRequest(BaseModel):
    """A command to queue. ``key`` makes a retry safe: the same key returns the first
    receipt; a key that names another command is refused with 409."""

    model_config = ConfigDict(extra="forbid")

    command: CommandName = Field(description="a command's wire name, or the CLI's verb for it")
    key: str | None = Field(default=None, min_length=1, max_length=KEY_MAX)
    options: CommandOptions | None = None


#: A metric's value: a number (a diverging loss is NaN), a short text, a boolean or null.
MetricValue = float | int | str | bool | None


class CommandResult(BaseModel):
    """What came of a command (``core.records.CommandResult`` is the record)."""

    checkpoint: str | None = None
    step: int | None = None
    saved_at_step: int | None = None
    metrics: dict[str, MetricValue] | None = None
    final_state: str | None = None
    final_step: int | None = None
    ended_by: str | None = None
    changes: list[KnobChange] | None = None


class Receipt(BaseModel):
    """A command's ledger entry."""

    model_config = ConfigDict(extra="allow")

    id: str
    command: str
    state: str
    key: str | None = None
    source: str
    seq: int
    created_at: float
    updated_at: float
    step: int | None = None
    result: CommandResult | None = None
    reason: str | None = None
    options: CommandOptions | None = None


class Status(BaseModel):
    """The job's status record (status.json has the same fields)."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    state: str
    step: int | None = None
    max_steps: int | None = None
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    commands: list[Receipt] = Field(default_factory=list)


class Series(BaseModel):
    step: list[int]
    time: list[float]
    value: list[float | None]


class Mark(BaseModel):
    """Something that happened at a step (a knob change), drawn on the charts."""

    step: int
    time: float
    kind: str
    label: str


class MetricHistory(BaseModel):
    """The recorded curves: per series, steps ascending."""

    version: int
    job_id: str
    series: dict[str, Series]
    marks: list[Mark] = Field(default_factory=list)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry declaring ``codes`` as ErrorBody answers."""
    return {code: {"model": ErrorBody} for code in codes}
