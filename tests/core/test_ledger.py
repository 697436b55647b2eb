"""The command vocabulary and ledger (pure logic, no sockets)."""

from __future__ import annotations

import threading

import pytest

from forgather_control.core import VALID_COMMANDS, Command, Ledger, QueueFull, State, StopPending, UnknownCommand, UnknownEntry, parse_command
from forgather_control.core.records import CommandResult


def test_vocabulary() -> None:
    assert VALID_COMMANDS == ("save_checkpoint", "evaluate", "save_and_stop", "graceful_stop", "abort", "set", "pause")
    assert parse_command("save") is Command.SAVE_CHECKPOINT
    assert parse_command("save-stop") is Command.SAVE_AND_STOP
    assert parse_command("abort") is Command.ABORT
    assert parse_command("pause") is Command.PAUSE
    for c in Command:
        assert Command.from_code(c.code) is c and c.code > 0
    with pytest.raises(UnknownCommand) as exc:
        parse_command("explode")
    for name in VALID_COMMANDS:
        assert name in str(exc.value)


def test_lifecycle_queued_applied_completed() -> None:
    led = Ledger()
    e, created = led.submit("save_checkpoint")
    assert created and e.state == State.QUEUED and led.has_pending
    assert led.next_pending() is e
    led.mark_applied(e.id, 7)
    assert e.state == State.APPLIED and e.step == 7 and not led.has_pending
    led.complete(e.id, CommandResult(checkpoint="/x"))
    assert led.get(e.id).as_record().state == "completed"
    assert led.get(e.id).result == CommandResult(checkpoint="/x")
    # a final entry never changes again
    led.fail(e.id, "late")
    assert led.get(e.id).state == State.COMPLETED


def test_idempotency_key_queues_once() -> None:
    led = Ledger()
    a, c1 = led.submit("evaluate", key="k1")
    b, c2 = led.submit("evaluate", key="k1")
    assert c1 and not c2 and a is b
    assert led.pending_count() == 1


def test_bounded_queue_and_stop_refusals() -> None:
    led = Ledger(max_pending=2)
    led.submit("evaluate")
    led.submit("evaluate")
    with pytest.raises(QueueFull, match="limit is 2"):
        led.submit("evaluate")
    assert led.pending_count() == 2
    led2 = Ledger()
    led2.submit("graceful_stop")
    with pytest.raises(StopPending, match="already stopping"):
        led2.submit("save_checkpoint")
    _, created = led2.submit("abort")  # abort may still escalate a stop
    assert created
    with pytest.raises(StopPending):
        led2.submit("abort")


def test_drop_pending_and_unknown() -> None:
    led = Ledger()
    e, _ = led.submit("evaluate")
    dropped = led.drop_pending("job ended")
    assert dropped == [e] and e.state == State.DROPPED and e.reason == "job ended"
    with pytest.raises(UnknownEntry):
        led.get("c-nope")


def test_reject_records_refusal() -> None:
    led = Ledger()
    r = led.reject("explode", reason="unknown command")
    assert r.state == State.REJECTED and r.as_record().command == "explode"
    assert led.pending_count() == 0


def test_history_is_bounded_but_keeps_queued() -> None:
    led = Ledger(max_pending=1000, history=10)
    ids = []
    for _ in range(30):
        e, _ = led.submit("evaluate")
        ids.append(e.id)
    assert led.pending_count() == 30, "queued commands are never trimmed"
    for cid in ids[:25]:
        led.mark_applied(cid, 1)
        led.complete(cid)
    led.submit("evaluate")
    assert len(led.recent(1000)) <= 10 + 5


def test_concurrent_submits_are_all_recorded() -> None:
    led = Ledger(max_pending=10_000, history=10_000)
    n = 8

    def worker() -> None:
        for _ in range(200):
            led.submit("evaluate")

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert led.pending_count() == n * 200
    assert len({e.id for e in led.recent(10_000)}) == n * 200
