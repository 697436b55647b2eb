"""Guards as a person writes them (core.guards): what is read, what is refused and why,
and the pure watches that decide a spike and a slowdown from the values they are handed."""

from __future__ import annotations

import math

import pytest

from forgather_control.core.commands import Command
from forgather_control.core.guards import (
    ACTIONS,
    GuardError,
    SlowdownWatch,
    SpikeWatch,
    StragglerWatch,
    action_command,
    guards_from_env,
    nonfinite,
    parse_guard,
    parse_guards,
)
from forgather_control.core.records import GuardRule, decode, encode


def test_the_starter_guard_is_one_flag_and_spelled_canonically() -> None:
    rule = parse_guard("nan:abort")
    assert (rule.kind, rule.action, rule.text, rule.metric) == ("nan", "abort", "nan:abort,metric=loss", "loss")
    assert action_command(rule.action) == Command.ABORT and action_command("alert") is None


def test_parameters_take_their_defaults_and_are_checked() -> None:
    rule = parse_guard(" Spike:SAVE, factor=4 ,times=2")
    assert (rule.factor, rule.window, rule.times) == (4.0, 20, 2)
    assert rule.text == "spike:save,factor=4,window=20,times=2,metric=loss"
    slow = parse_guard("slowdown:alert,fraction=0.25,for=30")
    assert (slow.fraction, slow.for_) == (0.25, 30.0)
    assert decode(encode(slow), GuardRule, name="g") == slow  # the record round-trips


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "an empty guard"),
        ("nan", "names no action"),
        ("nan:explode", "unknown action 'explode'; actions: alert, save, save-stop, stop, abort, pause"),
        ("nan:eval", "unknown action 'eval'"),
        ("loss:abort", "unknown kind 'loss'; kinds: nan, spike, slowdown, stall, straggler"),
        ("spike:save,factor=1", "factor='1' is out of range: more than 1"),
        ("spike:save,factor=abc", "factor='abc' is not a number"),
        ("spike:save,factor=nan", "is not a finite number"),
        ("spike:save,window=1.5", "window='1.5' is not an integer"),
        ("spike:save,window=1", "out of range: 2 to 100000 checks"),
        ("slowdown:alert,fraction=1", "out of range: between 0 and 1"),
        ("spike:save,speed=3", "spike takes no 'speed'; its parameters: factor, window, times, metric"),
        ("stall:alert,for=3", "stall takes no 'for'; its parameters: none"),
        ("spike:save,factor", "'factor' is not NAME=VALUE"),
        ("spike:save,factor=2,factor=3", "factor is given twice"),
        ("stall:save", "a stalled loop takes no save; a stall guard may only alert or abort"),
        ("nan:abort,metric=$(rm -rf)", "is not a metric name"),
        ("x" * 300, "longer than 256 characters"),
    ],
)
def test_a_rule_that_cannot_be_read_is_refused_saying_what_and_what_is_allowed(text: str, said: str) -> None:
    with pytest.raises(GuardError, match=None) as info:
        parse_guard(text)
    assert said in str(info.value)


def test_several_rules_one_per_kind() -> None:
    rules = parse_guards(["nan:abort; spike:save", "nan:abort"])
    assert [r.kind for r in rules] == ["nan", "spike"]  # the same rule twice is one
    with pytest.raises(GuardError, match="two nan guards"):
        parse_guards(["nan:abort", "nan:alert"])
    assert parse_guards(None) == () and parse_guards("") == ()


def test_the_environment_variable_is_named_when_it_cannot_be_read() -> None:
    assert [r.text for r in guards_from_env({"FORGATHER_GUARDS": "nan:abort;stall:alert"})] == ["nan:abort,metric=loss", "stall:alert"]
    assert guards_from_env({}) == ()
    with pytest.raises(GuardError, match=r"^FORGATHER_GUARDS: guard 'nan:boom'"):
        guards_from_env({"FORGATHER_GUARDS": "nan:boom"})


def test_actions_are_alert_and_the_commands_a_person_sends_but_eval() -> None:
    assert ACTIONS == ("alert", "save", "save-stop", "stop", "abort", "pause")


def test_nonfinite_is_nan_or_infinite_numbers_only() -> None:
    assert nonfinite(math.nan) and nonfinite(math.inf) and nonfinite(-math.inf)
    assert not nonfinite(1.0) and not nonfinite(None) and not nonfinite("nan") and not nonfinite(3)


def test_a_spike_fires_after_times_checks_in_a_row_once_per_episode() -> None:
    watch = SpikeWatch(parse_guard("spike:save,factor=3,window=4,times=2"))
    assert [watch.observe(v) for v in (1.0, 1.0, 1.0, 1.0)] == [None] * 4  # filling the window
    assert watch.observe(10.0) is None  # once is not enough
    said, values = watch.observe(12.0) or ("", {})
    assert values == {"loss": 12.0, "average": 1.0, "ratio": 12.0}
    assert "12x its average 1 over the last 4 checks, 2 checks in a row" in said
    assert watch.observe(13.0) is None  # the same episode
    assert watch.observe(1.0) is None  # cleared: re-armed
    assert watch.observe(9.0) is None and watch.observe(9.0) is not None


def test_a_spike_is_not_judged_before_the_window_is_full_nor_on_a_non_finite_loss() -> None:
    watch = SpikeWatch(parse_guard("spike:save,window=5,times=1"))
    assert [watch.observe(v) for v in (1.0, 100.0, 1.0)] == [None, None, None]
    watch = SpikeWatch(parse_guard("spike:save,window=2,times=1"))
    watch.observe(1.0)
    watch.observe(1.0)
    assert watch.observe(math.nan) is None and watch.observe("text") is None and watch.observe(5.0) is not None


def test_a_slowdown_fires_when_below_the_fraction_of_the_runs_median_for_the_duration() -> None:
    watch = SlowdownWatch(parse_guard("slowdown:alert,fraction=0.5,for=10"))
    for t in range(20):
        assert watch.observe(100.0 + (t % 3), float(t)) is None
    assert watch.median() == 101.0
    assert watch.observe(40.0, 20.0) is None  # slow since 20
    assert watch.observe(40.0, 29.0) is None  # 9 s
    said, values = watch.observe(40.0, 30.0) or ("", {})
    assert values == {"steps_per_second": 40.0, "median": 101.0, "for": 10.0}
    assert "40 steps/s is 40% of the run's median 101 for 10 s" in said
    assert watch.observe(40.0, 31.0) is None  # once per episode; the slow spell left the median alone
    assert watch.median() == 101.0
    assert watch.observe(100.0, 32.0) is None and watch.observe(40.0, 33.0) is None  # re-armed, a new spell


def test_a_slowdown_needs_a_pace_first_and_ignores_no_rate() -> None:
    watch = SlowdownWatch(parse_guard("slowdown:alert,for=0"))
    assert watch.observe(None, 0.0) is None and watch.observe(0.0, 1.0) is None and watch.median() is None
    for t in range(4):
        watch.observe(10.0, float(t))
    assert watch.observe(1.0, 5.0) is None  # four rates are no pace yet
    watch.observe(10.0, 6.0)
    assert watch.observe(1.0, 7.0) is not None


def test_a_rank_half_again_as_slow_is_named_after_the_duration_once_per_spell() -> None:
    watch = StragglerWatch(factor=1.25, duration=10)
    assert watch.observe([0.010, 0.015, 0.010, 0.010], 0.0) == []  # slow since 0
    assert watch.observe([0.010, 0.015, 0.010, 0.010], 9.0) == []
    [(rank, factor, since)] = watch.observe([0.010, 0.015, 0.010, 0.010], 10.0)
    assert (rank, round(factor, 6), since) == (1, 1.5, 0.0)
    assert watch.named == {1: (factor, 0.0)}
    assert watch.observe([0.010, 0.015, 0.010, 0.010], 20.0) == []  # named once
    for t in range(21, 40):  # recovers: under the midpoint, the spell ends
        watch.observe([0.010, 0.010, 0.010, 0.010], float(t))
    assert watch.named == {}


def test_two_ranks_compare_each_with_the_other_and_equal_ranks_are_never_named() -> None:
    watch = StragglerWatch(factor=1.25, duration=0)
    [(rank, factor, _)] = watch.observe([0.010, 0.0135], 0.0)
    assert rank == 1 and round(factor, 3) == 1.35  # against the median of the others: rank 0
    equal = StragglerWatch(factor=1.25, duration=0)
    for t in range(50):
        assert equal.observe([0.010 + 0.0005 * (t % 3), 0.010, 0.0102], float(t)) == []
    alone = StragglerWatch(duration=0)
    assert alone.observe([0.5], 0.0) == [] and alone.ratios() == {0: None}


def test_a_rank_not_measured_yet_is_left_out() -> None:
    watch = StragglerWatch(duration=0)
    assert [rank for rank, _, _ in watch.observe([None, 0.02, 0.01], 0.0)] == [1]
    assert set(watch.ratios()) == {1, 2}
