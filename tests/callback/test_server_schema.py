"""Rank 0's server without FastAPI or pydantic at run time, held to the description they
write (callback/api.py, imported here only):

- ``callback/openapi.json`` (what ``/openapi.json`` serves) is the description's schema;
  ``FORGATHER_UPDATE_GOLDEN=1`` rewrites it (review the diff, commit it);
- the msgspec request (callback/wire.py) accepts and refuses what the pydantic model
  does, and a receipt is answered with the model's fields;
- serving imports none of fastapi, pydantic, starlette (a fresh interpreter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pydantic import ValidationError

from forgather_control.callback import api, wire
from forgather_control.callback.server import SCHEMA_FILE, create_app
from forgather_control.core import Ledger
from forgather_control.core.records import CommandOptions, CommandResult, GuardFiring, KnobChange, Receipt, Status, encode

UPDATE = os.environ.get("FORGATHER_UPDATE_GOLDEN") == "1"


def test_the_shipped_schema_is_the_description() -> None:
    text = api.openapi_text()
    if UPDATE:
        SCHEMA_FILE.write_text(text)
    assert SCHEMA_FILE.read_text() == text, (
        f"{SCHEMA_FILE.name} differs from callback/api.py's description; if intended, rerun with FORGATHER_UPDATE_GOLDEN=1 and review"
    )


def test_the_server_publishes_it_behind_the_token() -> None:
    from fastapi.testclient import TestClient

    c = TestClient(create_app(job_id="j", ledger=Ledger(), status=Status, token="tok"), base_url="http://127.0.0.1")
    assert c.get("/openapi.json").status_code == 401
    r = c.get("/openapi.json", headers={"Authorization": "Bearer tok"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == api.openapi()


BODIES: list[Any] = [
    {"command": "save"},
    {"command": "save_checkpoint", "key": "k"},
    {"command": "stop", "key": "k" * wire.KEY_MAX},
    {"command": "stop", "key": "k" * (wire.KEY_MAX + 1)},
    {"command": "abort", "key": ""},
    {"command": "abort", "key": 5},
    {"command": "abort", "key": None},
    {"command": "explode"},
    {"command": 3},
    {"command": None},
    {"cmd": "save"},
    {},
    [1, 2],
    "save",
    None,
    {"command": "abort", "extra": 1},
    {"command": "explode", "key": 5, "extra": 1, "zzz": 2},
    {"command": "save", "options": None},
    {"command": "save", "options": {}},
    {"command": "save", "options": {"evaluate": False}},
    {"command": "save", "options": {"evaluate": None}},
    {"command": "save", "options": {"zz": 3}},
    {"command": "save", "options": 7},
    {"command": "set", "options": {"changes": []}},
    {"command": "set", "options": {"changes": [{"name": "lr_scale", "value": 0.5}]}},
    {"command": "set", "options": {"changes": [{"name": "lr_scale", "value": 1, "old": 2}]}},
    {"command": "set", "options": {"changes": [{"name": "flag", "value": True}]}},
    {"command": "set", "options": {"changes": [{"name": "mode", "value": "x" * wire.KNOB_TEXT_MAX}]}},
    {"command": "set", "options": {"changes": [{"name": "mode", "value": "x" * (wire.KNOB_TEXT_MAX + 1)}]}},
    {"command": "set", "options": {"changes": [{"name": "a" * wire.KNOB_TEXT_MAX, "value": 1}]}},
    {"command": "set", "options": {"changes": [{"name": "a" * (wire.KNOB_TEXT_MAX + 1), "value": 1}]}},
    {"command": "set", "options": {"changes": [{"name": "Lr", "value": 1}]}},
    {"command": "set", "options": {"changes": [{"name": "9lr", "value": 1}]}},
    {"command": "set", "options": {"changes": [{"name": "", "value": 1}]}},
    {"command": "set", "options": {"changes": [{"name": "lr", "value": [1]}]}},
    {"command": "set", "options": {"changes": [{"name": "lr", "value": None}]}},
    {"command": "set", "options": {"changes": [{"name": "lr"}]}},
    {"command": "set", "options": {"changes": [{"name": "lr", "value": 1, "foo": 2}]}},
    {"command": "set", "options": {"changes": [{"name": "lr", "value": 1}] * wire.MAX_CHANGES}},
    {"command": "set", "options": {"changes": [{"name": "lr", "value": 1}] * (wire.MAX_CHANGES + 1)}},
    {"command": "set", "options": {"changes": {"name": "lr", "value": 1}}},
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: json.dumps(b)[:60])
def test_the_request_accepts_and_refuses_as_its_description(body: Any) -> None:
    try:
        described = _given(api.CommandRequest.model_validate(body).model_dump())
    except ValidationError as exc:
        described = None
        pydantic_problems = exc.errors()
    ours = None
    try:
        ours = _given(msgspec.to_builtins(msgspec.json.decode(json.dumps(body), type=wire.CommandRequest)))
    except msgspec.ValidationError:
        problem = wire.describe(body)
        assert problem and len(problem.split("; ")) >= 1
    assert (ours is None) == (described is None), (ours, described, None if described else pydantic_problems)
    assert ours == described


def _given(value: Any) -> Any:
    """A decoded request without its nulls (unset and null alike)."""
    if isinstance(value, dict):
        return {k: _given(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_given(v) for v in value]
    return value


@pytest.mark.parametrize(
    "body, detail",
    [
        ([1, 2], 'expected a JSON object with a "command" field'),
        ({"cmd": "save"}, "expected a JSON object with a \"command\" field; valid commands: {valid}; unknown field 'cmd'; {only}"),
        ({"command": "explode"}, "unknown command 'explode'; valid commands: {valid}"),
        ({"command": 3}, "unknown command 3; valid commands: {valid}"),
        ({"command": "abort", "key": ""}, "key must be a non-empty string of at most 128 characters"),
        (
            {"command": "explode", "key": 5, "extra": 1},
            "unknown command 'explode'; valid commands: {valid}; key must be a non-empty string of at most 128 characters; unknown field 'extra'; {only}",
        ),
        ({"command": "save", "options": {"zz": 3}}, "unknown field 'options.zz'; {only}"),
        ({"command": "set", "options": {"changes": [{"name": "lr", "value": 1, "foo": 2}]}}, "unknown field 'options.changes.0.foo'; {only}"),
        ({"command": "set", "options": {"changes": [{"name": "lr"}]}}, "options.changes.0.value: Field required"),
        ({"command": "set", "options": {"changes": [{"name": "Lr", "value": 1}]}}, "options.changes.0.name: Expected `str` matching regex '^[a-z][a-z0-9_]*$'"),
    ],
)
def test_refusals_are_described_in_the_apis_words(body: Any, detail: str) -> None:
    from forgather_control.core import VALID_COMMANDS

    only = "only command, key and options (evaluate, changes) are accepted"
    assert wire.describe(body) == detail.format(valid=", ".join(VALID_COMMANDS), only=only)


def test_the_request_and_receipt_fields_are_the_descriptions() -> None:
    assert wire.COMMAND_NAMES == api.CommandName.__args__
    assert wire.RECEIPT_FIELDS == tuple(api.Receipt.model_fields)
    assert wire.RESULT_FIELDS == tuple(api.CommandResult.model_fields)


@pytest.mark.parametrize(
    "record",
    [
        Receipt(id="c-1", command="evaluate", state="queued", source="http", seq=1, created_at=1.0, updated_at=2.0),
        Receipt(
            id="c-2",
            command="set",
            state="completed",
            key="k",
            source="guard",
            seq=2,
            created_at=1.0,
            updated_at=2.5,
            step=7,
            options=CommandOptions(changes=[KnobChange(name="lr_scale", value=0.5)]),
            result=CommandResult(step=7, metrics={"loss": 0.25, "note": "x", "ok": True}, changes=[KnobChange(name="lr_scale", value=0.5, old=1.0)]),
            guard=GuardFiring(id="g-1", guard="nan:save", kind="nan", action="save", step=7, evidence="loss is NaN"),
        ),
        Receipt(
            id="c-3",
            command="save_checkpoint",
            state="failed",
            source="file",
            seq=3,
            created_at=1.0,
            updated_at=2.0,
            reason="boom",
            options=CommandOptions(evaluate=False),
        ),
    ],
)
def test_a_receipt_is_answered_as_its_model(record: Receipt) -> None:
    sent = wire.receipt(encode(record))
    assert sent == api.Receipt.model_validate(encode(record)).model_dump(mode="json")
    assert list(sent) == list(api.Receipt.model_validate(encode(record)).model_dump(mode="json"))


def test_serving_imports_no_fastapi_pydantic_or_starlette(tmp_path: Path) -> None:
    """What rank 0 loads to serve: the app, the server thread, a request answered."""
    code = (
        "import sys, http.client\n"
        "from forgather_control.callback.server import create_app\n"
        "from forgather_control.core import Ledger\n"
        "from forgather_control.core.records import Status\n"
        "from forgather_control.serving.thread import ServerThread\n"
        "s = ServerThread(create_app(job_id='j', ledger=Ledger(), status=lambda: Status(job_id='j', state='running'), token='t'))\n"
        "port = s.start()\n"
        "for path in ('/openapi.json', '/jobs/j/commands/c-1'):\n"
        "    c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)\n"
        "    c.request('GET', path, headers={'Authorization': 'Bearer t'})\n"
        "    assert c.getresponse().status in (200, 404)\n"
        "s.stop()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'pydantic', 'pydantic_core', 'starlette', 'h11')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
