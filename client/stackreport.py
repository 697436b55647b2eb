"""Every rank's stacks for one job, from wherever they can be had, in bounded time.

The ways in, all at once:

- every node whose launcher is alive is asked through the job folder (its launcher
  signals its own workers and writes the answer back);
- workers on this host that no live launcher answers for (a job started with plain
  torchrun, or one whose launcher died) are signalled directly;
- with Ray, a task on every node does the direct part there (no shared folder needed).

Ranks that did not answer by the deadline are named, with what is known of why.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field

import msgspec

from forgather_control.client.jobinfo import JobInfo
from forgather_control.core import stacks
from forgather_control.core.errors import UsageError
from forgather_control.core.liveness import STALE_AFTER, fresh, pid_alive, same_pid_namespace
from forgather_control.core.records import UNSET, Job, Node, Record, StackRank, StallNotice, Text, UnsetType
from forgather_control.core.states import JobState, is_final

__all__ = ["DEFAULT_TIMEOUT", "StacksRecord", "StacksReport", "collect", "native_stacks"]

#: How long ``stacks`` waits for every rank (seconds).
DEFAULT_TIMEOUT = 10.0


class StacksRecord(Record, omit_defaults=False):
    """``stacks --json``: every rank's stacks, who did not answer, and (from the command)
    the job's state and stall; ``native`` only when py-spy was asked."""

    job_id: Text
    world_size: int | None = None
    ranks: list[StackRank] = msgspec.field(default_factory=list)
    missing: list[int] = msgspec.field(default_factory=list)
    nodes: list[int] = msgspec.field(default_factory=list)
    silent_nodes: list[int] = msgspec.field(default_factory=list)
    notes: list[Text] = msgspec.field(default_factory=list)
    native: dict[str, str] | UnsetType = UNSET
    state: JobState | UnsetType = UNSET
    stall: StallNotice | UnsetType | None = UNSET


@dataclass
class StacksReport:
    job_id: str
    world_size: int | None
    ranks: list[stacks.RankStacks]
    #: ranks expected (from the world size) that nobody answered for
    missing: list[int] = field(default_factory=list)
    #: node ranks whose launcher answered, and those whose live launcher did not in time
    nodes: list[int] = field(default_factory=list)
    silent_nodes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: rank -> py-spy's native dump (``--native``)
    native: dict[int, str] = field(default_factory=dict)

    def as_record(self) -> StacksRecord:
        return StacksRecord(
            job_id=self.job_id,
            world_size=self.world_size,
            ranks=[s.as_record() for s in self.ranks],
            missing=self.missing,
            nodes=self.nodes,
            silent_nodes=self.silent_nodes,
            notes=self.notes,
            native={str(k): v for k, v in self.native.items()} if self.native else UNSET,
        )


def collect(info: JobInfo, *, timeout: float = DEFAULT_TIMEOUT, now: float | None = None) -> StacksReport:
    """The stacks of every rank of the job ``info`` describes (read from its folder)."""
    paths = info.paths
    now = time.time() if now is None else now
    nodes = [n.node_rank for n in info.nodes if n.node_rank is not None and _node_live(n, now)]
    rid = stacks.ask(paths) if nodes else None
    deadline = time.monotonic() + timeout
    try:
        found = {s.rank: s for s in stacks.dump([w for w in stacks.local_workers(paths) if w.launcher is None], timeout=min(timeout, stacks.DUMP_TIMEOUT))}
        answered: dict[int, list[stacks.RankStacks]] = {}
        while rid is not None:
            answered = stacks.answers(paths, rid)
            if set(nodes) <= set(answered) or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    finally:
        if rid is not None:
            stacks.withdraw(paths, rid)
    for node_ranks in answered.values():
        for s in node_ranks:
            if s.rank not in found or found[s.rank].error is not None:
                found[s.rank] = s
    world = _world_size(info)
    report = StacksReport(info.job_id, world, [found[r] for r in sorted(found)], nodes=sorted(answered), silent_nodes=sorted(set(nodes) - set(answered)))
    if world is not None:
        report.missing = [r for r in range(world) if r not in found]
    if report.silent_nodes:
        report.notes.append(
            f"node(s) {stacks.rank_list(report.silent_nodes)} did not answer within {timeout:g}s: "
            "their launcher may be stuck, or the jobs directory is not shared"
        )
    if not nodes and not found:
        report.notes.append(
            "no live launcher and no worker of this job on this host: run this on the host where the job runs, or pass --ray when the nodes share no storage"
        )
    return report


def native_stacks(pids: dict[int, int], *, timeout: float = 20.0) -> dict[int, str]:
    """rank -> ``py-spy dump --native`` of its local process (optional: needs py-spy and
    ptrace permission, which clusters often deny; the error is the answer then)."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise UsageError("--native needs py-spy (pip install py-spy) and permission to ptrace the ranks; the Python stacks need neither")
    out: dict[int, str] = {}
    for rank, pid in sorted(pids.items()):
        try:
            proc = subprocess.run([exe, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=timeout, check=False)
            out[rank] = proc.stdout if proc.returncode == 0 else f"py-spy failed (exit {proc.returncode}): {proc.stderr.strip()}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            out[rank] = f"py-spy failed: {exc}"
    return out


def _node_live(node: Node, now: float) -> bool:
    """A launcher that can answer: not ended, and alive (its pid in this host's PID
    namespace, its heartbeat elsewhere)."""
    if is_final(node.state):
        return False
    if same_pid_namespace(node):
        return pid_alive(node)
    return fresh(node.heartbeat_at, now, STALE_AFTER)


def _world_size(info: JobInfo) -> int | None:
    status = info.current_status
    if status is not None and status.world_size:
        return status.world_size
    job = info.job or Job()
    nnodes, nproc = job.nnodes or "", job.nproc_per_node or ""
    if nnodes.isdigit() and nproc.isdigit():
        return int(nnodes) * int(nproc)
    return None
