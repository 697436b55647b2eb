"""The control API's description: its routes, request and response models, and the
errors it answers, as FastAPI and pydantic write them out: the source of ``openapi.json``
(beside this module), which rank 0 publishes at ``/openapi.json``.

Never imported at run time (pydantic and FastAPI cost rank 0 about 15 MiB): only by
``tests/callback/test_server_schema.py``, which fails when the shipped file and this
description differ and rewrites the file with ``FORGATHER_UPDATE_GOLDEN=1``, and which
holds the server's msgspec shapes (:mod:`.wire`, where the limits are written once) to
these models. Every refusal is an :class:`ErrorBody` (a string ``detail``), including the
422 FastAPI would otherwise describe as a list of validation errors. The records
themselves (status, receipt, metric history) are the classes of core/records.py.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from forgather_control.core import PROTOCOL

from .wire import COMMAND_NAMES, KEY_MAX, KNOB_NAME_PATTERN, KNOB_TEXT_MAX, MAX_CHANGES

#: Every name a command may be sent by: the wire names and the CLI's verbs.
CommandName = Literal[COMMAND_NAMES]  # type: ignore[valid-type]


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
KnobValue = bool | int | float | Annotated[str, Field(max_length=KNOB_TEXT_MAX)]


class KnobChange(BaseModel):
    """One knob change (``set``): its name and the value asked; in a receipt's result,
    ``old`` is the value before it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=KNOB_TEXT_MAX, pattern=KNOB_NAME_PATTERN)
    value: KnobValue = Field(description="a number or boolean (text is read as the knob's kind)")
    old: KnobValue | None = None


class CommandOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evaluate: bool | None = Field(default=None, description="false: a save skips the evaluation a trainer would run first")
    changes: list[KnobChange] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHANGES,
        description="set: the knob changes, applied on every rank at one step (the job's status lists its knobs)",
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


def describe() -> FastAPI:
    """The API's routes, as FastAPI describes them (the handlers are the server's, in
    :mod:`.server`; these only carry their names, parameters and documentation)."""
    app = FastAPI(title="forgather-control", version=str(PROTOCOL), docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    auth = (401, 403, 413)

    @app.get("/health", response_model=Health, responses=errors(400, 403, 413))
    async def health() -> Any: ...

    @app.get("/hello", response_model=Hello, responses=errors(400, 403, 413))
    async def hello(nonce: str = "") -> Any:
        """Proof that this server holds the job's token, before a client sends it."""

    @app.get("/jobs", response_model=JobsList, responses=errors(*auth))
    async def jobs() -> Any: ...

    @app.get("/jobs/{jid}/status", response_model=Status, responses=errors(*auth, 400, 404))
    async def job_status(jid: str) -> Any: ...

    @app.get("/jobs/{jid}/metrics", response_model=MetricHistory, responses=errors(*auth, 400, 404, 422))
    async def job_metrics(jid: str, since: int | None = None) -> Any:
        """The recorded metric history, only points after step ``since`` when given."""

    @app.get("/jobs/{jid}/commands/{cid}", response_model=Receipt, responses=errors(*auth, 400, 404))
    async def command(jid: str, cid: str) -> Any: ...

    @app.post(
        "/jobs/{jid}/control",
        status_code=202,
        response_model=Receipt,
        responses={200: {"model": Receipt, "description": "the key was seen: the first receipt"}, **errors(*auth, 400, 404, 409, 415, 422, 429)},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CommandRequest"}}}}},
    )
    async def control(jid: str, request: Request) -> Any: ...

    return app


def openapi() -> dict[str, Any]:
    """The published schema: FastAPI's, with every refusal an ErrorBody (FastAPI adds its
    own 422, a list of validation errors, to routes with parameters; ours answer every
    refusal with an ErrorBody) and the command body's models."""
    schema = describe().openapi()
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "not a command, or a parameter out of range",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                }
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema()
    request = CommandRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(request.pop("$defs", {}))
    components["CommandRequest"] = request
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema


def openapi_text() -> str:
    """``openapi.json`` as shipped: :func:`openapi`, indented for a readable diff."""
    return json.dumps(openapi(), indent=1, ensure_ascii=False) + "\n"
