"""What each node's launcher does for the control plane while its workers run.

- It answers ``forgather control stacks`` requests posted in the job folder with its own
  workers' stacks (torchrun's children, which it may signal: no ptrace needed).
- It ends a hung job that was told to abort. An abort applies at an agreed step, and a
  hung rank never reaches one; so when an abort stays unapplied for :data:`ABORT_GRACE`
  (queued by rank 0, or lying in the inbox that rank 0 no longer reads), every node's
  launcher kills its workers and the job ends ``aborted``, its receipt saying how.

Every launcher reads the same records (the jobs directory is shared by the nodes), so
each node ends its own part; times are the launcher's own clock from when it first saw
the command, never another host's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from forgather_control.core import stacks
from forgather_control.core.commands import ABORT_GRACE, Command, State
from forgather_control.core.env import ENV_RANK
from forgather_control.core.files import TEMP_PREFIX, RecordError
from forgather_control.core.host import local_host
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import CommandFile, CommandResult, Receipt, Status, load, load_or_none
from forgather_control.core.states import JobState

log = logging.getLogger(__name__)

__all__ = ["ABORT_GRACE", "AbortWatch", "NodeDuties", "Overdue"]

#: An abort applied (the ranks agreed) but the job still running after this many
#: graces: a rank hangs on its way out (a collective in shutdown); ended by force too.
APPLIED_GRACES = 3
_OPEN = (State.SENT, State.QUEUED)


@dataclass(frozen=True)
class Overdue:
    """An abort the ranks could not carry out in time, and what to record about it."""

    command_id: str
    key: str | None
    source: str
    state: State
    waited: float

    @property
    def reason(self) -> str:
        if self.state == State.COMPLETED:
            return f"abort {self.command_id} was carried out by another node's launcher (the ranks are hung); this launcher ended its ranks too"
        if self.state == State.APPLIED:
            return f"abort {self.command_id} applied but the job did not end within {self.waited:.0f}s (a rank hangs); the launcher ended every rank"
        return f"abort {self.command_id} could not be agreed within {self.waited:.0f}s (the ranks are hung); the launcher ended every rank"

    def receipt(self, now: float) -> Receipt:
        """The abort's final receipt."""
        return Receipt(
            id=self.command_id,
            command=Command.ABORT.value,
            state=State.COMPLETED.value,
            key=self.key,
            source=self.source,
            updated_at=now,
            reason=self.reason,
            result=CommandResult(final_state=JobState.ABORTED.value, ended_by="launcher"),
        )


class AbortWatch:
    """Which abort, if any, is overdue. Pure apart from its memory of when it first saw
    each command (``now`` from the caller's monotonic clock)."""

    def __init__(self, *, run: int, grace: float = ABORT_GRACE) -> None:
        self.run = run
        self.grace = grace
        self._first_seen: dict[str, float] = {}

    def look(self, status: Status | None, inbox: list[CommandFile], now: float) -> Overdue | None:
        forced = self._forced_elsewhere(status)
        if forced is not None:
            return Overdue(forced.id or "?", forced.key, forced.source or "http", State.COMPLETED, now - self._first_seen.get(forced.id or "", now))
        for cid, key, source, state in self._aborts(status, inbox):
            first = self._first_seen.setdefault(cid, now)
            limit = self.grace * (APPLIED_GRACES if state == State.APPLIED else 1)
            if now - first >= limit:
                return Overdue(cid, key, source, state, now - first)
        return None

    def _forced_elsewhere(self, status: Status | None) -> Receipt | None:
        """The abort another node's launcher carried out on this run, if it did: the job is
        recorded aborted, and this node's ranks, hung too, will not end by themselves."""
        ran = status.restarts if status is not None and status.restarts is not None else 0
        if status is None or ran != self.run or JobState.parse(status.state) != JobState.ABORTED:
            return None
        for e in status.commands or []:
            if e.command == Command.ABORT.value and e.result is not None and e.result.ended_by == "launcher":
                return e
        return None

    def _aborts(self, status: Status | None, inbox: list[CommandFile]) -> list[tuple[str, str | None, str, State]]:
        found: list[tuple[str, str | None, str, State]] = []
        ran = status.restarts if status is not None and status.restarts is not None else 0
        if status is not None and ran == self.run and JobState.parse(status.state) in (JobState.RUNNING, JobState.STOPPING):
            for e in status.commands or []:
                state = State.parse(e.state)
                if e.command == Command.ABORT.value and state is not None and (state in _OPEN or state == State.APPLIED) and e.id is not None:
                    found.append((e.id, e.key, e.source or "http", state))
        for rec in inbox:
            if rec.command == Command.ABORT.value and rec.id is not None and len(rec.id) <= 64:
                key = rec.key if rec.key is not None and len(rec.key) <= 128 else None
                found.append((rec.id, key, "file", State.SENT))
        return found


def read_inbox(paths: JobPaths, *, limit: int = 64) -> list[CommandFile]:
    """The command files waiting in the job's inbox (read, never taken: rank 0 owns them);
    a file that is not a command is passed over."""
    try:
        names = sorted(n for n in os.listdir(paths.inbox) if n.endswith(".json") and not n.startswith((TEMP_PREFIX, ".")))
    except OSError:
        return []
    out = []
    for name in names[:limit]:
        try:
            rec = load(paths.inbox / name, CommandFile, max_bytes=4096, owner=os.geteuid())  # another user's file is no command
        except RecordError:
            continue
        if rec is not None:
            out.append(rec)
    return out


class NodeDuties:
    """Called from the launcher's supervising loop (``tick``); never raises into it."""

    def __init__(
        self,
        paths: JobPaths,
        *,
        node_rank: int,
        run: int,
        torchrun: Callable[[], int | None],
        grace: float = ABORT_GRACE,
        interval: float = 1.0,
    ) -> None:
        self.paths = paths
        self.node_rank = node_rank
        self.torchrun = torchrun
        self.interval = interval
        self.watch = AbortWatch(run=run, grace=grace)
        self._last = 0.0
        self._answering: threading.Thread | None = None
        self._answered: set[str] = set()

    def tick(self) -> Overdue | None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return None
        self._last = now
        try:
            self._answer_stacks()
            return self.watch.look(load_or_none(self.paths.status, Status), read_inbox(self.paths), now)
        except Exception:
            log.exception("the launcher's control duties failed this round; the job runs on")
            return None

    # -- stacks ---------------------------------------------------------------------------
    def _answer_stacks(self) -> None:
        if self._answering is not None and self._answering.is_alive():
            return
        todo = [r for r in stacks.requests(self.paths) if r not in self._answered and not stacks.answered(self.paths, r, self.node_rank)]
        if not todo:
            return
        self._answered.update(todo)
        self._answering = threading.Thread(target=self._answer, args=(todo,), name="forgather-launch-stacks", daemon=True)
        self._answering.start()

    def _answer(self, request_ids: list[str]) -> None:
        try:
            found = self.local_stacks()
            for rid in request_ids:
                stacks.answer(self.paths, rid, self.node_rank, found)
            log.info("answered stacks request(s) %s for %d rank(s)", ", ".join(request_ids), len(found))
        except Exception:
            log.exception("could not answer a stacks request")

    def local_stacks(self) -> list[stacks.RankStacks]:
        """This node's workers' stacks; a worker that registered no dump says so."""
        ranks = worker_ranks(self.torchrun())
        workers = stacks.local_workers(self.paths, pids=set(ranks))
        out = stacks.dump(workers)
        seen = {s.rank for s in out}
        host = local_host().hostname
        out += [
            stacks.RankStacks(rank, host, pid, error="it has not set up its stack dump (still starting, or not run through the forgather bootstrap)")
            for pid, rank in ranks.items()
            if rank not in seen
        ]
        return sorted(out, key=lambda s: s.rank)


def worker_ranks(torchrun_pid: int | None) -> dict[int, int]:
    """pid -> global rank of torchrun's workers (its children that carry their rank)."""
    if torchrun_pid is None:
        return {}
    import psutil

    out: dict[int, int] = {}
    try:
        children = psutil.Process(torchrun_pid).children(recursive=False)
    except psutil.Error:
        return out
    for child in children:
        try:
            rank = child.environ().get(ENV_RANK, "")
        except (psutil.Error, OSError):
            continue
        if rank.isdigit():
            out[child.pid] = int(rank)
    return out
