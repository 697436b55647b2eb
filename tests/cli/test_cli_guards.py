"""What ``status`` says of a job's guards (issue 21): the rules it watches with and what
fired (guard, step, rank, evidence, the command it queued), for a person and in
``--json``; a receipt a guard queued reads "by guard X: evidence". Text from the job
(evidence, a rule) is printed, never obeyed by the terminal."""

from __future__ import annotations

import re
import time
from pathlib import Path

from support.cli import run_cli_here
from support.ui import write_job

from forgather_control.cli.output import describe_entry
from forgather_control.core.records import GuardFiring, Receipt

RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
RULES = [
    {"kind": "nan", "action": "abort", "text": "nan:abort,metric=loss", "metric": "loss"},
    {"kind": "slowdown", "action": "alert", "text": "slowdown:alert,fraction=0.5,for=2", "fraction": 0.5, "for": 2.0},
]


def firing(**kw) -> dict:
    return {
        "id": "c-nan",
        "guard": "nan:abort,metric=loss",
        "kind": "nan",
        "action": "abort",
        "step": 31,
        "rank": 1,
        "at": time.time() - 5,
        "evidence": "the loss is nan on rank 1 at step 31",
        "values": {"rank": 1.0},
        "command_id": "c-abort",
        **kw,
    }


def guarded_job(jobs_dir: Path) -> None:
    slow = firing(
        id="c-slow",
        guard="slowdown:alert,fraction=0.5,for=2",
        kind="slowdown",
        action="alert",
        step=12,
        rank=None,
        command_id=None,
        evidence="3 steps/s is 20% of the run's median\x1b]0;pwned\x07 15 for 2 s",
    )
    receipt = {
        "id": "c-abort",
        "command": "abort",
        "state": "completed",
        "source": "guard",
        "step": 31,
        "created_at": time.time() - 5,
        "updated_at": time.time() - 4,
        "result": {"final_state": "aborted"},
        "guard": firing(),
    }
    write_job(jobs_dir, "guarded", state="aborted", step=31, commands=[receipt], guards=RULES, guard_events=[slow, firing()])


def test_status_shows_the_guards_and_what_fired(jobs_dir: Path) -> None:
    guarded_job(jobs_dir)
    res = run_cli_here("control", "status", "guarded", "--jobs-dir", str(jobs_dir), env={"COLUMNS": "220"})
    assert res.code == 0, res.err
    text = res.out
    assert "nan:abort,metric=loss; slowdown:alert,fraction=0.5,for=2" in text
    assert "guards fired" in text and "the loss is nan on rank 1 at step 31" in text and "abort c-abort" in text
    assert "alert only" in text and "abort (guard)" in text
    assert not RAW.search(text.replace("\n", "")), repr(text)


def test_status_json_carries_the_guards_and_their_events(jobs_dir: Path) -> None:
    guarded_job(jobs_dir)
    res = run_cli_here("control", "status", "guarded", "--json", "--jobs-dir", str(jobs_dir))
    assert res.code == 0, res.err
    d = res.json()
    assert [g["text"] for g in d["guards"]] == [r["text"] for r in RULES] and d["guards"][1]["for"] == 2.0
    assert [(e["kind"], e["step"], e.get("rank"), e.get("command_id")) for e in d["guard_events"]] == [("slowdown", 12, None, None), ("nan", 31, 1, "c-abort")]
    [receipt] = d["commands"]
    assert receipt["source"] == "guard" and receipt["guard"]["evidence"] == "the loss is nan on rank 1 at step 31"


def test_a_receipt_a_guard_queued_names_it_and_its_evidence() -> None:
    guard = GuardFiring(id="g", guard="spike:save,factor=3", kind="spike", action="save", step=640, rank=0, evidence="the loss 91\x1b[2J is 90x")
    line = describe_entry(Receipt(id="c-1", command="save_checkpoint", state="completed", source="guard", step=640, guard=guard))
    assert line.startswith("save (c-1): completed; by guard spike:save,factor=3: the loss 91") and "at step 640" in line
    assert "\x1b" not in line
    assert "by guard" not in describe_entry(Receipt(id="c-2", command="save_checkpoint", state="completed", source="http"))
