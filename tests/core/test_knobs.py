"""core.knobs: the one check of a change (client and rank 0 alike), the wire that carries
it through a MAX all-reduce, and a table's declare/apply/carry rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forgather_control.core.errors import EXIT_BAD_KNOB, BadKnob
from forgather_control.core.knobs import MAX_CHANGES, SLOTS, Changed, KnobError, KnobTable, check_changes, describe, key, pack, parse_assignment, unpack
from forgather_control.core.records import KnobChange, KnobSetting


def _c(text: str) -> KnobChange:
    return parse_assignment(text)


def test_a_refusal_is_a_bad_knob_with_its_own_exit_code() -> None:
    assert issubclass(KnobError, BadKnob) and BadKnob.exit_code == EXIT_BAD_KNOB == 7


@pytest.mark.parametrize(
    "text, why",
    [
        ("lr", "is not NAME=VALUE"),
        ("=1", "is not NAME=VALUE"),
        ("lr=", "is not NAME=VALUE"),
        ("LR=1", "is not a knob name"),
        ("1lr=1", "is not a knob name"),
        ("l-r=1", "is not a knob name"),
        ("lr=" + "1" * 65, "over 64 characters"),
    ],
)
def test_an_assignment_is_a_name_and_a_value(text: str, why: str) -> None:
    with pytest.raises(KnobError, match=why):
        parse_assignment(text)


TABLE = [
    KnobSetting(name="lr", kind="float", above=0.0),
    KnobSetting(name="lr_scale", kind="float", above=0.0),
    KnobSetting(name="max_steps", kind="int", min=1),
    KnobSetting(name="warm", kind="bool"),
    KnobSetting(name="temperature", kind="float", min=0.0, max=2.0),
]


@pytest.mark.parametrize(
    "texts, values",
    [
        (["lr=1e-4"], [1e-4]),
        (["max_steps=2000"], [2000]),
        (["max_steps=2e3"], [2000]),  # a whole number written as a float is an int
        (["warm=yes", "temperature=2"], [True, 2.0]),
        (["warm=0"], [False]),
        (["temperature=0"], [0.0]),  # min is inclusive
    ],
)
def test_a_change_is_converted_to_its_knobs_kind(texts: list[str], values: list[object]) -> None:
    got = check_changes(TABLE, [_c(t) for t in texts])
    assert [c.value for c in got] == values
    assert [type(c.value) for c in got] == [type(v) for v in values]


@pytest.mark.parametrize(
    "texts, why",
    [
        ([], "at least one"),
        (["nope=1"], "this job has no knob 'nope'; its knobs: lr, lr_scale, max_steps, temperature, warm"),
        (["lr=0"], "lr must be above 0, not 0"),
        (["lr=-1"], "lr must be above 0, not -1"),
        (["lr=inf"], "must be a finite number"),
        (["lr=nan"], "must be a finite number"),
        (["max_steps=0"], "max_steps must be at least 1, not 0"),
        (["max_steps=1.5"], "not a whole number"),
        (["max_steps=1e300"], "within ±2**53"),
        (["warm=maybe"], "warm is a bool"),
        (["temperature=2.5"], "temperature must be at most 2, not 2.5"),
        (["temperature=x"], "'x' is not a number"),
        (["lr=1", "lr=2"], "lr is given twice"),
        (["lr=1", "lr_scale=2"], "give one"),
        ([f"k{i}=1" for i in range(MAX_CHANGES + 1)], f"at most {MAX_CHANGES}"),
    ],
)
def test_a_bad_change_is_refused_saying_why(texts: list[str], why: str) -> None:
    with pytest.raises(KnobError, match=why.replace("*", r"\*").replace("(", r"\(")):
        check_changes(TABLE, [_c(t) for t in texts])


def test_a_job_with_no_knobs_says_when_they_come() -> None:
    with pytest.raises(KnobError, match="none yet"):
        check_changes([], [_c("lr=1")])


values = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53), st.booleans())
names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)


@given(st.lists(st.tuples(names, values), min_size=0, max_size=MAX_CHANGES))
def test_the_wire_carries_any_values_and_every_slot_is_non_negative(pairs: list[tuple[str, object]]) -> None:
    """MAX over the ranks lets rank 0's slots through only if they are >= the zeros the
    others send: every packed slot is non-negative, and unpacks to the same floats."""
    slots = pack([(key(n), float(v)) for n, v in pairs])  # type: ignore[arg-type]
    assert len(slots) == SLOTS and all(0 <= s < 2**63 for s in slots)
    assert unpack(slots) == [(key(n), float(v)) for n, v in pairs]  # type: ignore[arg-type]
    others = [0] * SLOTS
    assert unpack([max(a, b) for a, b in zip(slots, others, strict=True)]) == unpack(slots)


def test_negative_zero_and_tiny_values_survive_the_wire() -> None:
    for v in (-0.0, 5e-324, -1e300, 1e300):
        ((_, got),) = unpack(pack([(key("x"), v)]))
        assert got == v and math.copysign(1, got) == math.copysign(1, v)


def test_a_key_is_the_same_on_every_rank_and_never_zero() -> None:
    assert key("lr_scale") == key("lr_scale") and all(1 <= key(n) < 2**31 for n in ("a", "lr", "z" * 64))


def test_apply_changes_every_declared_knob_in_order_and_says_old_and_new() -> None:
    seen: list[tuple[object, object]] = []
    t = KnobTable()
    t.declare("temperature", 1.0, min=0.0, on_change=lambda old, new: seen.append((old, new)))
    t.declare("max_steps", 100, min=1)
    done = t.apply(t.wire(t.vet([_c("temperature=0.5"), _c("max_steps=200")])), step=7, command_id="c-1")
    assert describe(done) == "temperature 1 -> 0.5, max_steps 100 -> 200"
    assert seen == [(1.0, 0.5)] and t["max_steps"] == 200
    setting = {s.name: s for s in t.settings() or []}["temperature"]
    assert (setting.value, setting.default, setting.origin, setting.step, setting.command_id) == (0.5, 1.0, "set", 7, "c-1")


def test_a_change_the_trainer_refuses_is_skipped_and_the_rest_apply() -> None:
    def refuse(old: object, new: object) -> None:
        raise ValueError("not now")

    t = KnobTable()
    t.declare("a", 1.0, on_change=refuse)
    t.declare("b", 1.0)
    done = t.apply(t.wire(t.vet([_c("a=2"), _c("b=3")])), step=1, command_id=None)
    assert [c.name for c in done] == ["b"] and t["a"] == 1.0 and t["b"] == 3.0


def test_a_change_for_a_knob_this_rank_never_declared_is_skipped() -> None:
    rank0, other = KnobTable(), KnobTable()
    rank0.declare("temperature", 1.0)
    assert other.apply(rank0.wire(rank0.vet([_c("temperature=2")])), step=1, command_id=None) == []


def test_the_scripts_value_must_be_in_its_own_range() -> None:
    with pytest.raises(KnobError):
        KnobTable().declare("temperature", -1.0, min=0.0)
    with pytest.raises(ValueError, match="not a knob name"):
        KnobTable().declare("Bad Name", 1.0)


def test_a_relaunch_starts_a_knob_at_the_jobs_last_value() -> None:
    seen: list[tuple[object, object]] = []
    t = KnobTable({"temperature": 2.0, "max_steps": 500})
    knob = t.declare("temperature", 1.0, on_change=lambda old, new: seen.append((old, new)))
    assert (knob.value, knob.origin, knob.default) == (2.0, "resumed", 1.0) and seen == [(1.0, 2.0)]
    assert t.changed() == {"temperature": 2.0}


def test_a_saved_knob_moves_from_the_checkpoints_value_not_the_scripts() -> None:
    """lr_scale is in the optimizer's and scheduler's state: a checkpoint written at 0.5
    comes back at 0.5, so a last value of 0.25 is a factor of 0.5 from there, and a last
    value of 0.5 changes nothing (it is never halved twice)."""
    for last, at_checkpoint, factor in ((0.25, 0.5, 0.5), (0.5, 0.5, None), (0.5, None, 0.5)):
        seen: list[float] = []

        def scaled(old: object, new: object, seen: list[float] = seen) -> None:
            seen.append(float(new) / float(old))  # type: ignore[arg-type]

        t = KnobTable({"lr_scale": last}, {"lr_scale": at_checkpoint} if at_checkpoint is not None else None)
        t.declare("lr_scale", 1.0, above=0.0, saved=True, on_change=scaled)
        assert seen == ([factor] if factor is not None else []) and t["lr_scale"] == last


def test_a_knob_that_is_not_carried_keeps_the_scripts_value_and_is_not_carried_on() -> None:
    t = KnobTable({"lr": 0.5})
    knob = t.declare("lr", 1.0, carry=False)
    assert knob.value == 1.0 and knob.origin == "script"
    t.apply(t.wire(t.vet([_c("lr=0.25")])), step=3, command_id=None)
    assert t.changed() == {} and {s.name: s for s in t.settings() or []}["lr"].carry is False


def test_a_carried_value_out_of_range_keeps_the_scripts() -> None:
    t = KnobTable({"temperature": 99.0})
    assert t.declare("temperature", 1.0, max=2.0).value == 1.0


def test_a_change_a_rank_made_is_the_record_rank_0s_receipt_carries() -> None:
    # A rank makes no record to apply a set (issue 24): its Changed becomes a KnobChange
    # only in rank 0's receipt, with the same fields.
    t = KnobTable()
    t.declare("temperature", 1.0, min=0.0)
    (done,) = t.apply(t.wire(t.vet([_c("temperature=0.5")])), step=3, command_id=None)
    assert isinstance(done, Changed) and set(Changed._fields) == set(KnobChange.__struct_fields__)
    assert done.as_record() == KnobChange(name="temperature", value=0.5, old=1.0)
