"""What ``status`` says of a job's knobs (issue 22): each one's value now, the script's,
where it came from (the script, a set at a step by a command, the job's last run), its
range and help, for a person; ``--json`` has them as status.json does. A name or a help
text from the job is printed, never obeyed by the terminal."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from rich.console import Console
from support.cli import run_cli_here
from support.ui import write_job

from forgather_control.cli import render
from forgather_control.core.records import JobDetails, KnobSetting
from forgather_control.core.states import JobState

RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
KNOBS = [
    {
        "name": "lr_scale",
        "kind": "float",
        "value": 0.5,
        "default": 1.0,
        "above": 0.0,
        "origin": "set",
        "step": 120,
        "command_id": "c-7f3a",
        "help": "the factor",
    },
    {"name": "lr", "kind": "float", "value": 4.5e-05, "default": 0.0001, "above": 0.0, "origin": "script", "carry": False},
    {"name": "max_steps", "kind": "int", "value": 20000, "default": 10000, "min": 1, "origin": "resumed"},
    {
        "name": "temperature",
        "kind": "float",
        "value": 1.0,
        "default": 1.0,
        "min": 0.0,
        "max": 10.0,
        "origin": "script",
        "help": "sampling\x1b]0;pwned\x07 heat",
    },
    {"name": "ema\x1b[2Jx", "kind": "bool", "value": True, "default": False, "origin": "set", "step": 7},
]


def set_receipt() -> dict:
    return {
        "id": "c-7f3a",
        "command": "set",
        "state": "completed",
        "step": 120,
        "created_at": time.time() - 5,
        "updated_at": time.time() - 4,
        "options": {"changes": [{"name": "lr_scale", "value": "0.5"}]},
        "result": {"step": 120, "changes": [{"name": "lr_scale", "value": 0.5, "old": 1.0}]},
    }


def rows(text: str) -> dict[str, list[str]]:
    """The knob table's rows by knob name (the panel's border cells dropped)."""
    table = text.split("knobs (", 1)[1]
    out = {}
    for line in table.splitlines()[1:]:
        cells = [c for c in line.strip("│ ").split("  ") if c.strip()]
        if cells:
            out[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return out


def test_status_shows_each_knob_its_value_the_scripts_and_where_it_came_from(jobs_dir: Path) -> None:
    write_job(jobs_dir, "knobbed", state="running", alive=True, step=130, knobs=KNOBS, commands=[set_receipt()])
    res = run_cli_here("control", "status", "knobbed", "--jobs-dir", str(jobs_dir), env={"COLUMNS": "220"})
    assert res.code == 0, res.err
    text = res.out
    assert "knobs (change one: forgather control set knobbed NAME=VALUE)" in text
    table = rows(text)
    assert table["lr_scale"] == ["0.5", "1", "set at step 120 (c-7f3a)", "float > 0", "the factor"]
    assert table["lr"] == ["4.5e-05", "0.0001", "script", "float > 0"]
    assert table["max_steps"] == ["20000", "10000", "resumed (the job's last run)", "int >= 1"]
    assert table["temperature"] == ["1", "1", "script", "float >= 0, <= 10", "sampling\\x1b]0;pwned\\x07 heat"]
    assert table["ema\\x1b[2Jx"] == ["true", "false", "set at step 7", "true/false"]
    assert "lr_scale 1 -> 0.5" in text  # the set's receipt in the recent commands
    assert not RAW.search(text.replace("\n", "")), repr(text)


def test_status_json_has_the_knobs_as_the_job_says_them(jobs_dir: Path) -> None:
    write_job(jobs_dir, "knobbed", state="running", alive=True, step=130, knobs=KNOBS)
    res = run_cli_here("control", "status", "knobbed", "--json", "--jobs-dir", str(jobs_dir))
    assert res.code == 0, res.err
    knobs = res.json()["knobs"]
    assert [k["name"] for k in knobs] == [k["name"] for k in KNOBS]
    assert knobs[0] == KNOBS[0] and knobs[1]["carry"] is False and knobs[3]["help"] == KNOBS[3]["help"]


def test_an_ended_jobs_knobs_are_its_last_values_a_relaunch_starts_from(jobs_dir: Path) -> None:
    write_job(jobs_dir, "done", state="stopped", step=130, knobs=KNOBS[:1])
    res = run_cli_here("control", "status", "done", "--jobs-dir", str(jobs_dir), env={"COLUMNS": "220"})
    assert res.code == 0, res.err
    assert "knobs (the last values: a relaunch starts from them)" in res.out
    assert rows(res.out)["lr_scale"][:3] == ["0.5", "1", "set at step 120 (c-7f3a)"]


def test_a_job_without_knobs_shows_no_table() -> None:
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(render.status_panel(JobDetails(job_id="j", state=JobState.RUNNING)))
    assert "knobs" not in out.getvalue()
    out = io.StringIO()
    d = JobDetails(job_id="j", state=JobState.RUNNING, knobs=[KnobSetting(name="x", kind="float")])
    Console(file=out, width=160, color_system=None).print(render.status_panel(d))
    assert rows(out.getvalue())["x"] == ["-", "-", "-", "float"]
