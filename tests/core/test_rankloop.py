"""A worker's one control thread (core/rankloop.py): timers, pokes, readers, a task that
raises, a cancel that waits for the task's run, and no thread once nothing is left."""

from __future__ import annotations

import os
import threading

from forgather_control.core.rankloop import THREAD_NAME, ControlLoop


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "test-control-loop"]


def test_timers_readers_and_pokes_run_in_one_thread(wait_for) -> None:
    loop = ControlLoop("test-control-loop")
    where: set[str] = set()
    ticks: list[int] = []
    slow: list[int] = []
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    got: list[bytes] = []
    try:
        fast = loop.every(0.01, lambda: (ticks.append(1), where.add(threading.current_thread().name)), name="fast")
        poked = loop.every(3600.0, lambda: slow.append(1), name="an hour")
        reader = loop.reader(read_fd, lambda: (got.append(os.read(read_fd, 64)), where.add(threading.current_thread().name)), name="reader")
        assert len(loop_threads()) == 1 and loop.ident == loop_threads()[0].ident
        wait_for(lambda: len(ticks) >= 3, timeout=30, what="three ticks")
        assert slow == []  # an hour is not up
        poked.poke()
        wait_for(lambda: slow == [1], timeout=30, what="the poked timer")
        os.write(write_fd, b"d")
        wait_for(lambda: got == [b"d"], timeout=30, what="the reader")
        assert where == {"test-control-loop"} and fast.active and reader.active
        for task in (fast, poked, reader):
            task.cancel()
        assert not fast.active
        wait_for(lambda: not loop_threads() and not loop.alive, timeout=30, what="the thread to go with the last task")
        n = len(ticks)
        again = loop.every(0.01, lambda: ticks.append(1), name="again")  # a new task starts a new thread
        wait_for(lambda: len(ticks) > n, timeout=30, what="a tick in the new thread")
        again.cancel()
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_task_that_raises_is_kept_and_the_others_run(wait_for) -> None:
    loop = ControlLoop("test-control-loop")
    calls: list[str] = []

    def bad() -> None:
        calls.append("bad")
        raise RuntimeError("boom")

    a = loop.every(0.01, bad, name="bad")
    b = loop.every(0.01, lambda: calls.append("good"), name="good")
    try:
        wait_for(lambda: calls.count("bad") >= 2 and calls.count("good") >= 2, timeout=30, what="both tasks, twice")
    finally:
        a.cancel()
        b.cancel()


def test_cancel_returns_once_the_run_under_way_has_ended(wait_for) -> None:
    loop = ControlLoop("test-control-loop")
    inside, release = threading.Event(), threading.Event()
    done: list[int] = []

    def long_round() -> None:
        inside.set()
        release.wait(30)
        done.append(1)

    task = loop.every(0.0, long_round, name="long")
    assert inside.wait(30)
    canceller = threading.Thread(target=task.cancel)
    canceller.start()
    canceller.join(0.2)
    assert canceller.is_alive() and done == []  # still waiting for the round
    release.set()
    canceller.join(30)
    assert not canceller.is_alive() and done == [1]
    n = len(done)
    wait_for(lambda: not loop.alive, timeout=30, what="the loop to end")
    assert len(done) == n  # never ran again


def test_a_task_cancels_itself_from_its_own_run(wait_for) -> None:
    loop = ControlLoop("test-control-loop")
    runs: list[int] = []
    box: list = []

    def once() -> None:
        runs.append(1)
        box[0].cancel()  # from within: no waiting on itself

    box.append(loop.every(0.0, once, name="once"))
    wait_for(lambda: not loop.alive, timeout=30, what="the loop to end")
    assert runs == [1]


def test_the_shared_loop_is_named() -> None:
    from forgather_control.core.rankloop import shared

    assert shared().name == THREAD_NAME and shared() is shared()


def test_a_hosted_coroutine_runs_in_the_loops_thread_beside_timers_readers_and_pokes(wait_for) -> None:
    """Rank 0's HTTP server is hosted so: no thread of its own (issue 24)."""
    import asyncio

    loop = ControlLoop("test-control-loop")
    stop = threading.Event()
    served: list[str] = []
    ticks: list[str] = []
    slow: list[int] = []
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    got: list[bytes] = []

    async def serve() -> str:
        while not stop.is_set():  # as uvicorn's main loop polls should_exit
            served.append(threading.current_thread().name)
            await asyncio.sleep(0.01)
        return "ended"

    try:
        fast = loop.every(0.01, lambda: ticks.append(threading.current_thread().name), name="fast")
        hosted = loop.host(serve)
        poked = loop.every(3600.0, lambda: slow.append(1), name="an hour")
        reader = loop.reader(read_fd, lambda: got.append(os.read(read_fd, 64)), name="reader")
        wait_for(lambda: len(served) >= 3 and len(ticks) >= 3, timeout=30, what="the hosted coroutine and the timer, both")
        assert len(loop_threads()) == 1 and set(served) == set(ticks) == {"test-control-loop"}
        poked.poke()
        wait_for(lambda: slow == [1], timeout=30, what="the poked timer while hosting")
        os.write(write_fd, b"d")
        wait_for(lambda: got == [b"d"], timeout=30, what="the reader while hosting")
        stop.set()
        assert hosted.done.wait(30) and hosted.error is None
        n = len(ticks)
        wait_for(lambda: len(ticks) > n, timeout=30, what="the timer after the hosted coroutine ended")
        assert len(loop_threads()) == 1
        for task in (fast, poked, reader):
            task.cancel()
        wait_for(lambda: not loop_threads() and not loop.alive, timeout=30, what="the thread to go with the last task")
    finally:
        stop.set()
        os.close(read_fd)
        os.close(write_fd)


def test_a_hosted_coroutine_alone_keeps_the_thread_and_its_error_is_kept(wait_for) -> None:
    loop = ControlLoop("test-control-loop")

    async def fails() -> None:
        raise SystemExit(1)  # uvicorn, when it cannot bind

    hosted = loop.host(fails)
    assert hosted.done.wait(30) and isinstance(hosted.error, SystemExit)
    wait_for(lambda: not loop_threads() and not loop.alive, timeout=30, what="the thread to go: nothing left")


def test_two_hosted_coroutines_run_together_and_end_one_by_one(wait_for) -> None:
    """A process running two Controllers serves both from its one control thread."""
    import asyncio

    loop = ControlLoop("test-control-loop")
    stops = [threading.Event(), threading.Event()]
    beats = [0, 0]

    def serving(i: int):
        async def serve() -> None:
            while not stops[i].is_set():
                beats[i] += 1
                await asyncio.sleep(0.01)

        return serve

    first = loop.host(serving(0))
    wait_for(lambda: beats[0] >= 2, timeout=30, what="the first")
    second = loop.host(serving(1))  # joins the running asyncio loop
    wait_for(lambda: beats[1] >= 2, timeout=30, what="the second, beside the first")
    assert len(loop_threads()) == 1
    stops[0].set()
    assert first.done.wait(30) and not second.done.is_set()
    n = beats[1]
    wait_for(lambda: beats[1] > n, timeout=30, what="the second goes on alone")
    stops[1].set()
    assert second.done.wait(30) and first.error is None and second.error is None
    wait_for(lambda: not loop_threads() and not loop.alive, timeout=30, what="the thread to go: nothing left")
