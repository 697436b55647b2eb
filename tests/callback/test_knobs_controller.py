"""Live knobs in one process (issue 22): ``Controller.knob`` and ``Controller.optimizer``
with the real HTTP server, the loop being the test's own thread calling ``step``.

A set applies at the step its check runs, with a receipt old -> new and a mark on the
charts; a refused one (unknown name, wrong kind, out of range) is HTTP 422 with
``refused: "knob"`` and leaves nothing in the ledger; the knob values are in a
checkpoint's record; a relaunch (``FORGATHER_KNOBS``) starts each knob at the job's last
value, ``lr_scale`` relative to its value in the checkpoint resumed from.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.knobs import post_set, send_set

from forgather_control.callback import Controller
from forgather_control.client import JobHandle, find_job, probe_endpoint
from forgather_control.core import read_json
from forgather_control.core.env import ENV_KNOBS, ENV_OUTPUT_DIR, ENV_RESUME_FROM
from forgather_control.core.records import KnobChange


def make(jobs_dir: Path, **kw) -> Controller:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("signals", ())
    kw.setdefault("max_steps", 100)
    return Controller(job_id=kw.pop("job_id", "job-1"), jobs_dir=jobs_dir, **kw)


def client_for(jobs_dir: Path, job_id: str = "job-1") -> JobHandle:
    return JobHandle.from_info(find_job(jobs_dir, job_id, probe=probe_endpoint))


def until_applied(ctl: Controller, step: int, limit: int = 10_000) -> int:
    """Step on until a command applies; the step it applied at."""
    for s in range(step, step + limit):
        if ctl.step(s, {"loss": 1.0}).command is not None:  # a set's actions are nothing for the loop to do
            return s
    raise AssertionError("no command applied")


def test_a_set_changes_a_user_knob_at_the_step_it_applies_with_a_receipt_old_to_new_and_a_mark(jobs_dir: Path) -> None:
    ctl = make(jobs_dir).start()
    seen: list[tuple[float, float]] = []
    temperature = ctl.knob("temperature", 1.0, min=0.0, help="a weight the loop reads", on_change=lambda old, new: seen.append((old, new)))
    every = ctl.knob("every", 10, min=1)
    try:
        with client_for(jobs_dir) as c:
            ctl.step(1)
            sent = send_set(c, temperature="0.25", every="20")  # text as typed, read as the knobs' kinds
            assert sent.state == "queued" and sent.command == "set", sent
            assert temperature.value == 1.0  # nothing changes before the check that applies it
            at = until_applied(ctl, 2)
            assert (temperature.value, every.value, seen) == (0.25, 20, [(1.0, 0.25)]) and type(every.value) is int
            done = c.entry(str(sent.id))
            assert (done.state, done.step, done.result.step) == ("completed", at, at), done
            assert done.result.changes == [KnobChange(name="temperature", value=0.25, old=1.0), KnobChange(name="every", value=20, old=10)]
            marks = c.metrics().marks
            assert [(m.step, m.kind, m.label) for m in marks] == [(at, "set", "temperature 1 -> 0.25, every 10 -> 20")]
            knobs = {k.name: k for k in c.status().knobs}
            t = knobs["temperature"]
            assert (t.value, t.default, t.min, t.origin, t.step, t.command_id, t.kind) == (0.25, 1.0, 0.0, "set", at, sent.id, "float"), t
            assert (knobs["every"].kind, knobs["every"].origin, knobs["every"].value) == ("int", "set", 20)
    finally:
        ctl.close()


def test_a_bool_knob_is_set_on_and_off(jobs_dir: Path) -> None:
    ctl = make(jobs_dir).start()
    seen: list[tuple[bool, bool]] = []
    noisy = ctl.knob("noisy", False, on_change=lambda old, new: seen.append((old, new)))
    try:
        with client_for(jobs_dir) as c:
            ctl.step(1)
            on = send_set(c, noisy="true")
            at = until_applied(ctl, 2)
            assert (noisy.value, seen) == (True, [(False, True)])
            assert c.entry(str(on.id)).result.changes == [KnobChange(name="noisy", value=True, old=False)]
            send_set(c, noisy=False)
            until_applied(ctl, at + 1)
            assert (noisy.value, seen[-1]) == (False, (True, False))
    finally:
        ctl.close()


REFUSED = [
    ({"nope": 1}, "this job has no knob 'nope'; its knobs: lr, lr_scale, max_steps, temperature"),
    ({"max_steps": "lots"}, "max_steps is an int: 'lots' is not a number"),
    ({"max_steps": 2.5}, "max_steps is an int: 2.5 is not a whole number"),
    ({"max_steps": 0}, "max_steps must be at least 1, not 0"),
    ({"temperature": -1}, "temperature must be at least 0, not -1"),
    ({"temperature": True}, "temperature is a float, not a bool"),
    ({"lr_scale": 0}, "lr_scale must be above 0, not 0"),
    ({"lr": 0.1, "lr_scale": 0.5}, "lr and lr_scale are one setting"),
]


@pytest.mark.parametrize(("changes", "why"), REFUSED, ids=[next(iter(c)) + "-" + str(i) for i, (c, _) in enumerate(REFUSED)])
def test_a_bad_set_is_refused_with_422_and_nothing_is_queued(jobs_dir: Path, changes: dict, why: str) -> None:
    ctl = make(jobs_dir).start()
    ctl.knob("temperature", 1.0, min=0.0)
    ctl.knob("max_steps", 100, min=1)
    ctl.optimizer(SimpleNamespace(param_groups=[{"lr": 0.1}]))
    try:
        with client_for(jobs_dir) as c:
            ctl.step(1)
            before = c.status()
            code, body = post_set(jobs_dir, "job-1", **changes)
            assert (code, body.get("refused")) == (422, "knob"), body
            assert why in body["detail"], body
            assert ctl.ledger.next_pending() is None
            assert all(ctl.step(s).command is None for s in range(2, 6))  # nothing to apply
            after = c.status()
            assert after.commands == before.commands and {k.name: k.value for k in after.knobs} == {k.name: k.value for k in before.knobs}
    finally:
        ctl.close()


def test_max_steps_as_a_knob_is_the_run_length_and_below_the_current_step_ends_the_loop_finished(jobs_dir: Path) -> None:
    ctl = make(jobs_dir, max_steps=50).start()
    max_steps = ctl.knob("max_steps", 50, min=1)
    with client_for(jobs_dir) as c:
        ctl.step(1)
        send_set(c, max_steps=1000)
        step = until_applied(ctl, 2)
        assert (max_steps.value, ctl.max_steps, c.status().max_steps) == (1000, 1000, 1000)
        shorter = send_set(c, max_steps=2)
        step = until_applied(ctl, step + 1)
        assert step > 2 and max_steps.value == 2 and not step < max_steps.value  # the loop's `while step < max_steps.value` ends here
        ctl.close()
        final = c.wait(str(shorter.id), timeout=10)
    assert (final.state, final.step, final.result.changes) == ("completed", step, [KnobChange(name="max_steps", value=2, old=1000)]), final
    st = read_json(ctl.paths.status)
    assert (st["state"], st["step"], st["max_steps"]) == ("finished", step, step), st  # ended where it was, not "3 of 2"


def test_lr_scale_scales_every_group_and_the_schedulers_base_rates(jobs_dir: Path) -> None:
    opt = SimpleNamespace(param_groups=[{"lr": 0.1, "initial_lr": 0.2}, {"lr": 0.01, "initial_lr": 0.02}])
    sched = SimpleNamespace(base_lrs=[0.2, 0.02], _last_lr=[0.1, 0.01])
    ctl = make(jobs_dir).start()
    ctl.optimizer(opt, sched)
    try:
        with client_for(jobs_dir) as c:
            ctl.step(1)
            send_set(c, lr_scale=0.5)
            at = until_applied(ctl, 2)
            assert [g["lr"] for g in opt.param_groups] == [0.05, 0.005] and [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.01]
            assert sched.base_lrs == [0.1, 0.01] and sched._last_lr == [0.05, 0.005]
            opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = 0.04, 0.004  # the schedule moved it since
            lr = send_set(c, lr=0.01)  # the rate now: lr_scale follows (0.5 * 0.01 / 0.04)
            at = until_applied(ctl, at + 1)
            assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.001]) and sched.base_lrs == pytest.approx([0.025, 0.0025])
            knobs = {k.name: k for k in c.status().knobs}
            assert (knobs["lr"].value, knobs["lr_scale"].value) == (pytest.approx(0.01), pytest.approx(0.125))
            assert (knobs["lr_scale"].origin, knobs["lr_scale"].step, knobs["lr_scale"].command_id, knobs["lr"].carry) == ("set", at, lr.id, False)
    finally:
        ctl.close()


def test_a_checkpoints_record_holds_the_knob_values_of_its_time(jobs_dir: Path, tmp_path: Path) -> None:
    ctl = make(jobs_dir).start()
    ctl.knob("temperature", 1.0, min=0.0)
    try:
        with client_for(jobs_dir) as c:
            ctl.step(1)
            send_set(c, temperature=0.5)
            at = until_applied(ctl, 2)
            ckpt = tmp_path / f"ck-{at}"
            ckpt.write_text("saved")
            ctl.checkpoint_saved(str(ckpt))
            point = c.status().resume_point
            assert (point.path, point.knobs) == (str(ckpt), {"temperature": 0.5}), point
    finally:
        ctl.close()


def carried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: dict, at_checkpoint: dict | None, *, resumed: bool) -> None:
    monkeypatch.setenv(ENV_KNOBS, json.dumps({"values": values, "at_checkpoint": at_checkpoint}))
    if resumed:
        ckpt = tmp_path / "out" / "checkpoint-40.pt"
        ckpt.parent.mkdir()
        ckpt.write_text("saved")
        monkeypatch.setenv(ENV_OUTPUT_DIR, str(tmp_path / "out"))
        monkeypatch.setenv(ENV_RESUME_FROM, str(ckpt))


def test_a_relaunch_starts_each_knob_at_the_jobs_last_value_and_lr_scale_relative_to_the_checkpoints(
    jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint was written at lr_scale 0.5 (its optimizer holds the halved rate); the
    # job went on to 0.25: the resumed run scales by 0.5 more, not by 0.25 again.
    carried(monkeypatch, tmp_path, {"lr_scale": 0.25, "temperature": 0.1, "max_steps": 500}, {"lr_scale": 0.5, "temperature": 0.3}, resumed=True)
    opt = SimpleNamespace(param_groups=[{"lr": 0.05}])  # as loaded from the checkpoint
    sched = SimpleNamespace(base_lrs=[0.05])
    changed: list[tuple[float, float]] = []
    ctl = make(jobs_dir)
    try:
        ctl.optimizer(opt, sched)
        temperature = ctl.knob("temperature", 1.0, min=0.0, on_change=lambda old, new: changed.append((old, new)))
        max_steps = ctl.knob("max_steps", 100, min=1)
        other = ctl.knob("other", 3)  # not carried: the script's value
        assert (opt.param_groups[0]["lr"], sched.base_lrs) == (pytest.approx(0.025), pytest.approx([0.025]))
        # temperature's effect is not in the checkpoint: from the script's value to the last
        assert (temperature.value, changed, max_steps.value, ctl.max_steps, other.value) == (0.1, [(1.0, 0.1)], 500, 500, 3)
        knobs = {k.name: k for k in ctl.knobs.settings()}
        origins = {n: k.origin for n, k in knobs.items()}
        assert origins == {"lr": "script", "lr_scale": "resumed", "temperature": "resumed", "max_steps": "resumed", "other": "script"}
        assert {(c.name, c.old, c.value) for c in ctl.knobs.resumed} == {("lr_scale", 0.5, 0.25), ("temperature", 1.0, 0.1), ("max_steps", 100, 500)}
    finally:
        ctl.close()


def test_a_relaunch_without_a_checkpoint_applies_lr_scale_from_the_scripts_rates(jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    carried(monkeypatch, tmp_path, {"lr_scale": 0.25}, {"lr_scale": 0.5}, resumed=False)  # no checkpoint to resume: fresh rates
    opt = SimpleNamespace(param_groups=[{"lr": 0.1}])
    ctl = make(jobs_dir)
    try:
        ctl.optimizer(opt)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.025) and ctl.knobs["lr_scale"] == 0.25
    finally:
        ctl.close()


def test_a_carried_value_the_script_now_refuses_keeps_the_scripts_value(jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    carried(monkeypatch, tmp_path, {"temperature": 5.0}, None, resumed=False)
    ctl = make(jobs_dir)
    try:
        temperature = ctl.knob("temperature", 1.0, min=0.0, max=2.0)  # the range changed since the last run
        assert (temperature.value, temperature.origin, ctl.knobs.resumed) == (1.0, "script", [])
    finally:
        ctl.close()
