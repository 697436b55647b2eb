"""What a relaunch carries of the job's knobs (core.knobs.carry_from, FORGATHER_KNOBS),
and how a rank starts a knob from it (KnobTable): the last run's values a person gave,
the values of the checkpoint's time, and ``--script-knobs``."""

from __future__ import annotations

from forgather_control.core.knobs import KnobTable, carry_from
from forgather_control.core.records import CheckpointRecord, KnobCarry, KnobSetting


def setting(name: str, value: object, origin: str | None, **fields: object) -> KnobSetting:
    return KnobSetting(name=name, kind="float", value=value, default=1.0, origin=origin, **fields)  # type: ignore[arg-type]


LAST = [
    setting("lr_scale", 0.5, "set", step=40, command_id="c1"),
    setting("temperature", 2.0, "resumed"),
    setting("lr", 5e-5, "set", carry=False),
    setting("eval_every", 100.0, "script"),
    setting("unknown_origin", 3.0, None),
]
POINT = CheckpointRecord(path="/out/checkpoint-40", step=40, knobs={"lr_scale": 0.5, "temperature": 2.0, "lr": 5e-5})


def test_a_relaunch_carries_what_a_person_or_an_earlier_relaunch_gave_and_the_checkpoints_values() -> None:
    carry = carry_from(LAST, POINT)
    assert carry == KnobCarry(values={"lr_scale": 0.5, "temperature": 2.0}, at_checkpoint={"lr_scale": 0.5, "temperature": 2.0, "lr": 5e-5})


def test_nothing_to_carry_is_no_carry() -> None:
    assert carry_from(None, None) is None
    assert carry_from([setting("lr_scale", 1.0, "script")], CheckpointRecord(path="/out/ck")) is None
    assert carry_from([], None, script=True) is None


def test_without_a_checkpoint_the_values_alone_are_carried() -> None:
    assert carry_from(LAST, None) == KnobCarry(values={"lr_scale": 0.5, "temperature": 2.0}, at_checkpoint=None)


def test_script_knobs_carries_no_value_but_still_the_checkpoints() -> None:
    """The optimizer comes back from the checkpoint with its scale of then: the rank
    needs it to bring the rate back to the script's schedule."""
    assert carry_from(LAST, POINT, script=True) == KnobCarry(values={}, at_checkpoint=POINT.knobs)
    assert carry_from(LAST, None, script=True) is None


def test_a_knob_the_last_run_never_declared_keeps_what_that_run_was_given() -> None:
    before = KnobCarry(values={"lr_scale": 0.25, "max_steps": 900, "temperature": 3.0})
    # the last run declared lr_scale (set again) and temperature (the script's: refused or --script-knobs), not max_steps
    last = [setting("lr_scale", 0.5, "set"), setting("temperature", 1.0, "script")]
    assert carry_from(last, None, before=before) == KnobCarry(values={"max_steps": 900, "lr_scale": 0.5})
    assert carry_from(None, None, before=before) == KnobCarry(values=before.values)  # it ended before declaring any
    assert carry_from(None, None, before=before, script=True) is None


def test_a_name_no_knob_can_have_is_not_carried() -> None:
    hostile = [setting("\x1b[31mred", 2.0, "set"), setting("Upper", 2.0, "set"), setting("ok", 2.0, "set")]
    point = CheckpointRecord(path="/out/ck", knobs={"\x1b]0;x\x07": 1.0, "ok": 1.0})
    assert carry_from(hostile, point) == KnobCarry(values={"ok": 2.0}, at_checkpoint={"ok": 1.0})


class Rates:
    """An optimizer's rate as a saved knob's ``on_change`` scales it."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.calls: list[tuple[object, object]] = []

    def scale(self, old: object, new: object) -> None:
        self.calls.append((old, new))
        self.rate *= float(new) / float(old)  # type: ignore[arg-type]


def test_a_carried_scale_moves_from_the_checkpoints_not_halved_twice() -> None:
    carry = carry_from([setting("lr_scale", 0.5, "set")], CheckpointRecord(path="/ck", knobs={"lr_scale": 0.5}))
    assert carry is not None
    rates = Rates(0.05)  # loaded from the checkpoint: already half of the script's 0.1
    table = KnobTable(carry.values, carry.at_checkpoint)
    knob = table.declare("lr_scale", 1.0, above=0.0, on_change=rates.scale, saved=True)
    assert (knob.value, knob.origin, rates.rate, rates.calls) == (0.5, "resumed", 0.05, [])


def test_script_knobs_brings_a_saved_scale_back_to_the_scripts_from_the_checkpoints() -> None:
    carry = carry_from(
        [setting("lr_scale", 0.5, "set"), setting("temperature", 2.0, "set")],
        CheckpointRecord(path="/ck", knobs={"lr_scale": 0.5, "temperature": 2.0}),
        script=True,
    )
    assert carry is not None
    rates = Rates(0.05)
    table = KnobTable(carry.values, carry.at_checkpoint)
    scale = table.declare("lr_scale", 1.0, above=0.0, on_change=rates.scale, saved=True)
    temperature = table.declare("temperature", 1.0)  # not in the trainer's state: the script's value, untouched
    assert (scale.value, scale.origin, rates.calls) == (1.0, "script", [(0.5, 1.0)])
    assert abs(rates.rate - 0.1) < 1e-12
    assert (temperature.value, temperature.origin) == (1.0, "script") and table.resumed == [] and table.changed() == {}


def test_a_saved_knob_at_the_scripts_value_in_the_checkpoint_is_left_alone() -> None:
    rates = Rates(0.1)
    table = KnobTable(None, {"lr_scale": 1.0})
    table.declare("lr_scale", 1.0, above=0.0, on_change=rates.scale, saved=True)
    assert rates.calls == []
