"""The floors hold at run time: what a training rank and a control command load.

import-linter (``pyproject.toml``, run by ``.ci/run``) checks every import statement;
these tests check what a fresh interpreter really has in ``sys.modules`` afterwards, so a
dynamic import (``importlib``, a plugin hook) that the linter cannot see is caught too.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FLOORS = ("core", "client", "serving", "callback", "launcher", "cli", "ui")


def loaded_after(statement: str) -> dict[str, list[str]]:
    """The project's modules, by floor, and the heavy third-party packages a fresh
    interpreter has loaded after ``statement``."""
    probe = f"{statement}\nimport json, sys\nmods = sorted(sys.modules)\nprint(json.dumps(mods))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120).stdout
    mods = json.loads(out.splitlines()[-1])
    by_floor: dict[str, list[str]] = {floor: [] for floor in FLOORS}
    for name in mods:
        parts = name.split(".")
        if parts[0] == "forgather_control" and len(parts) > 1 and parts[1] in by_floor:
            by_floor[parts[1]].append(name)
    by_floor["heavy"] = [m for m in mods if m.split(".")[0] in ("torch", "fastapi", "starlette", "uvicorn", "pydantic", "ray", "rich")]
    return by_floor


def test_a_training_rank_loads_core_and_callback_only():
    floors = loaded_after("import forgather_control.callback")
    assert floors["callback"], "the probe imported nothing: the test would pass vacuously"
    assert floors["core"]
    for floor in ("client", "serving", "launcher", "cli", "ui"):
        assert floors[floor] == [], f"import forgather_control.callback loaded {floor} modules: {floors[floor]}"


def test_the_client_stands_on_core_alone_and_imports_nothing_heavy():
    floors = loaded_after("import forgather_control.client")
    assert floors["client"]
    for floor in ("serving", "callback", "launcher", "cli", "ui"):
        assert floors[floor] == [], f"import forgather_control.client loaded {floor} modules: {floors[floor]}"
    assert floors["heavy"] == []


@pytest.mark.parametrize("statement", ["from forgather_control.client import open_job, list_jobs", "import forgather_control.cli.control"])
def test_a_control_command_loads_no_torch_fastapi_or_ray(statement):
    floors = loaded_after(statement)
    assert floors["heavy"] == [], f"{statement!r} loaded {floors['heavy'][:5]}"
    assert floors["callback"] == [] and floors["ui"] == []


def test_core_alone_loads_nothing_above_it():
    floors = loaded_after("import forgather_control.core, forgather_control.core.records, forgather_control.core.stacks")
    assert floors["core"]
    assert all(floors[f] == [] for f in FLOORS if f != "core")
    assert json.dumps(floors["heavy"]) == "[]"
