"""The only torch.distributed code in forgather-control.

At a check every rank makes exactly one collective: an all-reduce (MAX) of a small
int64 tensor on a gloo group of its own (one worker thread, on the job's gloo device when
there is one: :func:`check_group`), so NCCL and CUDA streams are never touched and the
job's own collectives never meet it (docs/design-notes.md, "Agreement": sharing a gloo
job's group was tried and undone). Two
slots per rank carry each rank's own time per step and its node to rank 0 (stragglers).
Rank 0 fills the command and the next check step; any rank may raise the signal level
or vote that its loss is not finite (the ``nan`` guard: callback/guarding.py).
MAX is the one reduction that lets rank 0's fields through (the others send zeros) and
lets any rank raise a flag, so one collective carries everything. No pickle, no
``broadcast_object_list``; the HTTP thread and signal handlers never get here.

Issued at the check, read ``lag`` steps later (:meth:`Agreement.start`): a synchronous
all-reduce makes every rank wait at the check for the last rank to arrive, which on
busy or oversubscribed cores is most of its cost (measured by
``benchmarks/bench_agreement.py``: 0.7% of a 10 ms step at 4 ranks, 2% at 8). Issued
asynchronously, the collective runs while the ranks train; at the agreed resolution step
every rank reads the same answer and acts on it there (the Controller's protocol:
docs/design-notes.md, "Agreement"). :meth:`Agreement.exchange` is the synchronous form,
for the checks that cannot wait (the last step, between evaluation batches).

Tracing: every exchange, as agreed, is appended to ``Agreement.trace``: the last
``TRACE_KEEP`` of them (checks come up to ten a second, for days), or all of them with
``FORGATHER_TRACE_AGREEMENT=<dir>``: each rank then writes its trace to
``<dir>/rank-<global rank>.json`` when the Controller closes, so a test can assert that
every rank made the same sequence of collectives. ``Agreement.checks`` counts them all.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from array import array
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from forgather_control.core.env import ENV_RANK, ENV_TRACE_AGREEMENT, ENV_WORLD_SIZE
from forgather_control.core.knobs import SLOTS

if TYPE_CHECKING:
    from forgather_control.core.records import AgreementTrace

log = logging.getLogger(__name__)

#: Tensor layout; keep in one place so every rank agrees on it: these fields, then a
#: ``set``'s knob changes (core.knobs.SLOTS, rank 0's), then two slots per rank.
FIELDS = ("seq", "command", "arg", "signal", "next_check", "flags", "guard", "lag", "cost")
_KNOBS = len(FIELDS)
_RANKS = _KNOBS + SLOTS
#: A trace written to a directory keeps its first entries up to this many (days of checks).
TRACE_LIMIT = 1_000_000
#: Otherwise the last this many are kept (a few tens of kilobytes).
TRACE_KEEP = 256


class Proposal(NamedTuple):
    """One rank's part of a check, or the agreed answer (a tuple: made at every check,
    where a frozen dataclass's __init__ cost several microseconds)."""

    seq: int = 0
    command: int = 0  # Command.code, 0 = none
    arg: int = 0  # rank 0's ledger sequence number of the command, for tracing
    signal: int = 0  # 0 none, 1 first signal (save and stop), 2 escalate (stop now)
    next_check: int = 0  # step of the next check, chosen by rank 0
    flags: int = 0  # the command's options, as bits (actions.FLAG_*)
    guard: int = 0  # any rank's nan vote: (rank + 1) * 4 + what it saw (guarding.decode_vote)
    lag: int = 0  # steps between the next check's start and its resolution, chosen by rank 0
    cost: int = 0  # microseconds this rank spent in control since its last proposal (MAX: the slowest rank's)
    knobs: tuple[int, ...] = ()  # a set's changes, packed by rank 0 (core.knobs.pack)

    def as_list(self) -> list[int]:
        return list(self[: len(FIELDS)])


class Agreement:
    """One all-reduce(MAX) per check on a gloo group made once, at train begin.

    ``group`` may be given; otherwise a gloo group over all ranks is made
    (:func:`check_group`), which is itself a collective: every rank must construct its
    Agreement at the same point (the integrations do it at train begin, the Controller at
    its first step otherwise).
    """

    def __init__(self, group: object | None = None, *, node: int = 0, trace_all: bool = False) -> None:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised; cannot agree across ranks")
        self._dist = dist
        self._torch = torch
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        #: the group was made here, and is shut down here
        self._owned = False
        if group is None:
            group = check_group(dist, torch)
            self._owned = True
        self.group = group
        # The fields, then two slots per rank (its own time per step in microseconds, its
        # node + 1), each rank filling its own: MAX hands rank 0 every rank's (straggle.py).
        self._size = _RANKS + 2 * self.world_size
        self._mine = _RANKS + 2 * self.rank
        # The buffers are Python arrays with a tensor over the same memory
        # (torch.frombuffer), filled and read as arrays: on the check's path no torch call
        # but the collective (a torch call a few milliseconds into a step costs 50-90 us
        # here, its code cold; an array's slice, a microsecond). One for the started check
        # (reused once its answer is read: no check starts before the last resolved), one
        # for the exchanges waited for (between evaluation batches, while a check may be
        # in flight).
        self._zeros = array("q", bytes(8 * (self._size - _RANKS)))
        self._flying: Pending | None = None
        self._async = self._buffer()
        self._sync = self._buffer()
        self._node = node + 1
        #: after an exchange, on rank 0: (own microseconds per step, node or None) of every rank
        self.per_rank: list[tuple[int, int | None]] = []
        # The group's own allreduce, not dist.all_reduce: the same collective without the
        # Python checks and logging wrapper around it (about 50-90 us a check here).
        self._opts = dist.AllreduceOptions()
        self._opts.reduceOp = dist.ReduceOp.MAX
        #: The exchanges this rank made, as agreed (FIELDS): all of them when ``trace_all``
        #: (up to TRACE_LIMIT), else the last TRACE_KEEP; ``checks`` counts every one.
        self.trace: list[tuple[int, ...]] | deque[tuple[int, ...]] = [] if trace_all else deque(maxlen=TRACE_KEEP)
        self.checks = 0

    def exchange(self, proposal: Proposal, *, own_us: int = 0) -> Proposal:
        """The exchange, waited for here (every rank blocks until the last arrives)."""
        buf = self._fill(self._sync, proposal, own_us)
        self.group.allreduce([buf[1]], self._opts).wait()  # type: ignore[attr-defined]
        return self._agreed(buf[0])

    def start(self, proposal: Proposal, *, own_us: int = 0) -> Pending:
        """The exchange, started: its own buffer, read by :meth:`Pending.wait`."""
        flying = self._flying
        if flying is not None and flying._answer is None:
            self._async = self._buffer()  # the last one's answer was never read (a wait that timed out): it may still land there
        buf = self._fill(self._async, proposal, own_us)
        work = self.group.allreduce([buf[1]], self._opts)  # type: ignore[attr-defined]
        self._flying = Pending(self, work, buf[0])
        return self._flying

    def _buffer(self) -> tuple[array[int], Any]:
        values = array("q", bytes(8 * self._size))
        return values, self._torch.frombuffer(values, dtype=self._torch.int64)

    def _fill(self, buf: tuple[array[int], Any], proposal: Proposal, own_us: int) -> tuple[array[int], Any]:
        """``buf`` filled: the fields and knob slots (rank 0's; zeros elsewhere but for a
        raised flag), this rank's two slots, zeros in every other rank's."""
        values = buf[0]
        head = proposal.as_list()
        head += proposal.knobs[:SLOTS]
        head += [0] * (_RANKS - len(head))
        values[:_RANKS] = array("q", head)
        values[_RANKS:] = self._zeros
        values[self._mine] = max(0, own_us)
        values[self._mine + 1] = self._node
        return buf

    def _agreed(self, buf: array[int]) -> Proposal:
        values = buf.tolist() if self.rank == 0 else buf[:_RANKS].tolist()
        agreed = tuple(values[: len(FIELDS)])
        knobs = tuple(values[_KNOBS:_RANKS]) if any(values[_KNOBS:_RANKS]) else ()
        if self.rank == 0:
            slots = values[_RANKS:]
            self.per_rank = [(slots[i], slots[i + 1] - 1 if slots[i + 1] else None) for i in range(0, len(slots), 2)]
        self.checks += 1
        if len(self.trace) < TRACE_LIMIT:
            self.trace.append(agreed)
        return Proposal(*agreed, knobs=knobs)

    def close(self) -> None:
        """Shut a group made here down (a local operation), while the interpreter runs:
        a gloo worker still about when it finalizes can end the process with "terminate
        called without an active exception" (:func:`check_group`). A group given to
        the Agreement is its giver's to shut."""
        group, self.group = self.group, None
        self._flying = None  # nothing of a check is needed after close
        if group is None or not self._owned:
            return
        try:
            if isinstance(group, self._dist.ProcessGroupGloo):
                # made by check_group: no c10d registry entry; dropping the last reference
                # (here, while the interpreter runs) joins its worker and closes its pairs
                del group
            elif self._dist.is_initialized():
                self._dist.destroy_process_group(group)
        except Exception as exc:  # noqa: BLE001 - never fail a job's exit over this
            log.debug("could not destroy the agreement group: %s", exc)

    def dump_trace(self, directory: str | os.PathLike[str] | None = None, *, ended: AgreementTrace | None = None) -> Path | None:
        """Write this rank's trace to ``directory`` (default ``$FORGATHER_TRACE_AGREEMENT``);
        ``ended`` adds how the run ended (its trace and fields are this rank's)."""
        directory = directory or os.environ.get(ENV_TRACE_AGREEMENT)
        if not directory:
            return None
        return dump_trace(directory, self.rank, self.trace, ended=ended)


#: Agreement groups made by this process (their store prefixes): every rank makes them in
#: the same order, so the n-th has the same name on every rank.
_made = 0


def check_group(dist: Any, torch: Any) -> Any:
    """The check's own gloo group: one worker thread, on the job's gloo device when the
    job's group is gloo (its event loop thread then serves both), else ``new_group``'s
    (a device of its own: three threads; under NCCL, say). Its threads run
    ``SCHED_BATCH`` (:func:`_batched`).

    Its own group, not the job's (sharing it, tried, saved every thread): a gloo job's
    group races the interpreter's exit. Gloo's worker destroys each work it ran, and a
    work issued during ``backward()`` (DDP's) holds a Python object in its thread-local
    state (autograd stashes the context there), whose release takes the GIL; once the
    main thread is finalizing, a thread taking the GIL is ended, inside a destructor:
    "terminate called without an active exception". A bare 2-rank DDP loop aborted so in
    3 exits of 30, and as often with our checks on its group; with this group, shut at
    close while the interpreter runs, 0 of 30 (design notes, "Agreement").

    Made collectively: every rank calls it at the same point (a rendezvous on the job's
    store, under a name of its own)."""
    global _made
    try:  # the same answer on every rank (the same torch, the same job's backend)
        default = dist.distributed_c10d._get_default_group()
        job = default._get_backend(torch.device("cpu"))
        if not isinstance(job, dist.ProcessGroupGloo):
            raise TypeError(f"the job's CPU backend is {type(job).__name__}")
        opts = dist.ProcessGroupGloo._Options()
        opts._devices = job.options._devices  # the job's device: no event loop thread of ours
        opts._threads = 1  # one check at a time is in flight
        opts._timeout = job.options._timeout
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, TypeError, RuntimeError) as exc:
        log.debug("the agreement makes a gloo group of its own with new_group (%s)", exc)
        return _batched(lambda: dist.new_group(backend="gloo"))
    name = f"forgather-control/agreement/{_made}/"
    _made += 1
    return _batched(lambda: dist.ProcessGroupGloo(dist.PrefixStore(name, store), dist.get_rank(), dist.get_world_size(), opts))


def _batched(make: Any) -> Any:
    """``make()``, and the threads it started set to ``SCHED_BATCH``: woken by a check's
    issue, a gloo worker of the normal policy preempts the training thread on a busy
    core, which then waits a time slice (about 3.8 ms here) inside the issue. That was
    most of a check's cost at 2 ranks on 2 cores (one check in fifteen; benchmarks/README,
    issue 24); a batch thread runs when the training thread yields the core. Where the
    policy cannot be set (not Linux), the threads keep theirs."""
    before = _tasks()
    group = make()
    for tid in _tasks() - before:
        try:
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
        except (OSError, AttributeError) as exc:  # gone already, or no such policy here
            log.debug("could not batch the check's thread %s: %s", tid, exc)
    return group


def _tasks() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


class Pending:
    """A started exchange; :meth:`wait` blocks until every rank's part is in (at once,
    usually: it ran while the ranks trained) and returns the answer, the same every time.
    ``waited``: how long the wait blocked, which tells rank 0 whether the lag is enough;
    ``took``: how long from its start until the wait returned: the collective's time when
    the wait blocked, an upper bound on it when the answer was in before it was read."""

    def __init__(self, agreement: Agreement, work: Any, buf: array[int]) -> None:
        self._agreement = agreement
        self._work = work
        self._buf = buf
        self._answer: Proposal | None = None
        self._started = time.perf_counter()
        self.waited = 0.0
        self.took = 0.0

    def wait(self, timeout: float | None = None) -> Proposal:
        if self._answer is None:
            t = time.perf_counter()
            if timeout is None:
                self._work.wait()
            else:
                import datetime

                self._work.wait(timeout=datetime.timedelta(seconds=timeout))
            now = time.perf_counter()
            self.waited, self.took = now - t, now - self._started
            self._work = None  # done: its handle is not kept (see Agreement.close)
            self._answer = self._agreement._agreed(self._buf)
        return self._answer


def dump_trace(directory: str | os.PathLike[str], rank: int, trace: list[tuple[int, ...]], *, ended: AgreementTrace | None = None) -> Path:
    import msgspec  # here: a trace is a test's (issue 24: a rank loads no record to agree)

    from forgather_control.core.records import AgreementTrace, encode

    record = msgspec.structs.replace(ended or AgreementTrace(rank=rank, fields=[], trace=[]), rank=rank, fields=list(FIELDS), trace=[list(t) for t in trace])
    path = Path(directory) / f"rank-{int(rank)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(encode(record)))
    os.replace(tmp, path)
    return path


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else the launcher's
    environment, else a single process. Reading the environment needs no torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except Exception:  # noqa: BLE001 - a half-imported torch  # pragma: no cover
            pass
    try:
        return int(os.environ.get(ENV_RANK, "0")), int(os.environ.get(ENV_WORLD_SIZE, "1"))
    except ValueError:
        return 0, 1


def distributed_ready() -> bool:
    """True when torch.distributed is imported and initialised (no import forced)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return False
    try:
        return bool(dist.is_available() and dist.is_initialized())
    except Exception:  # noqa: BLE001 - a half-imported torch  # pragma: no cover
        return False
