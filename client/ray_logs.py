"""A job's logs through a Ray cluster whose nodes keep their own jobs directories.

The way ``list --ray`` and ``stacks --ray`` go (:mod:`.ray_listing`): a task pinned to
every alive node reads *that node's* copy of the job's logs (``core/logs.py``: owner
checked, no link followed, bounded) and answers a :class:`NodeLogs` as JSON bytes (Ray
carries bytes, never an object of ours); the driver, in a child interpreter
(:mod:`.ray_driver`), decodes each answer once, resolves the job id across the nodes
and this host's own jobs directory, and keeps, for each rank, the copy that holds the
most of it. Lines are made safe to print on the node, and again checked as text here.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

from forgather_control.client import ray_driver
from forgather_control.core.errors import AmbiguousJob, JobNotFound
from forgather_control.core.files import RecordError
from forgather_control.core.jobs import JobPaths, resolve_jobs_dir
from forgather_control.core.logs import LogRead, LogsFolder, LogText
from forgather_control.core.records import Count, Host, MissingNode, Rank, RayNode, Record, Str128, Text, decode, parse_json, to_json
from forgather_control.core.states import JobState

__all__ = ["NodeLogs", "RankText", "logs_cluster", "logs_here"]

#: A line as a node sends it: made printable there (a control character is 4 characters).
Line = Annotated[str, Meta(max_length=1 << 16)]
#: Job ids a node names for a prefix, at most.
MAX_IDS = 20


class RankText(Record):
    """One rank's text as a node read it (:class:`~forgather_control.core.logs.LogText`)."""

    rank: Rank
    lines: list[Line] = msgspec.field(default_factory=list)
    offset: Count = 0
    skipped: Count = 0
    host: Host | None = None

    def text(self) -> LogText:
        return LogText(self.rank, list(self.lines), self.offset, self.skipped, self.host)


class NodeLogs(Record):
    """One node's answer (:func:`logs_node`, as JSON bytes): the ids of its jobs the
    reference names, the one it read (``job_id``: the reference exactly, else the only
    one), that job's state as judged there, its ranks' texts, the ranks asked for that
    have no log there, and why its logs could not be read."""

    hostname: Host | None = None
    job_ids: list[Str128] = msgspec.field(default_factory=list)
    job_id: Str128 | None = None
    state: Str128 | None = None
    ranks: list[RankText] = msgspec.field(default_factory=list)
    missing: list[Rank] = msgspec.field(default_factory=list)
    have: list[Rank] = msgspec.field(default_factory=list)
    error: Text | None = None


class ClusterLogs(Record):
    """The driver's answer (:func:`logs_here`): every node's answer, and the nodes that did not answer."""

    nodes: list[NodeLogs] = msgspec.field(default_factory=list)
    missing: list[MissingNode] = msgspec.field(default_factory=list)
    names: list[Text] = msgspec.field(default_factory=list)

    def add(self, node: RayNode, answer: object) -> None:
        what = "answered something that is not a logs answer"
        try:
            if not isinstance(answer, bytes):
                raise RecordError(f"{what} ({type(answer).__name__})")
            self.nodes.append(decode(parse_json(answer, name=what), NodeLogs, name=f"the logs from Ray node {node.node!r}"))
            self.names.append(str(node.node))
        except RecordError as exc:
            self.missing.append(MissingNode(**msgspec.structs.asdict(node), reason=str(exc)[:4000]))


# -- on each node -------------------------------------------------------------------------
def logs_node(jobs_dir: str | None, ref: str, ranks: list[int] | None, tail: int | None, after: dict[str, int], partial: bool) -> bytes:
    """Runs on one node, in a Ray worker: the logs of the job ``ref`` names in *this
    node's* jobs directory, as a :class:`NodeLogs` in JSON bytes. ``after``: offsets by
    rank (JSON keys are text)."""
    from forgather_control.client.listing import job_ids, judge_job

    root = resolve_jobs_dir(jobs_dir)
    out = NodeLogs(hostname=socket.gethostname())
    ids = [i for i in job_ids(root) if i.startswith(ref)]
    out.job_ids = ids[:MAX_IDS]
    chosen = ref if ref in ids else ids[0] if len(ids) == 1 else None
    if chosen is None:
        return to_json(out)
    out.job_id = chosen
    paths = JobPaths(root, chosen)
    offsets = {int(k): int(v) for k, v in after.items()}
    try:
        with LogsFolder(paths.dir) as folder:
            read = folder.read(LogRead(chosen), ranks, tail=tail, after=offsets, partial=partial)
        out.have, out.missing = read.have, read.missing
        out.ranks = [RankText(rank=t.rank, lines=t.lines, offset=t.offset, skipped=t.skipped, host=t.host) for t in read.texts]
        if read.notes:
            out.error = "; ".join(read.notes)[:4000]
    except FileNotFoundError:
        out.missing = list(ranks or [])
    except (OSError, RecordError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:4000]
    try:
        info = judge_job(paths)
        out.state = "dead" if info.liveness.value == "dead" else info.state.value
    except Exception as exc:  # noqa: BLE001 - a state this node cannot judge is not known
        out.state = None
        out.error = out.error or f"the job's state: {type(exc).__name__}: {exc}"[:4000]
    return to_json(out)


# -- the driver ---------------------------------------------------------------------------
def logs_cluster(
    ref: str,
    *,
    address: str | None,
    jobs_dir: str | None,
    ranks: Sequence[int] | None,
    tail: int | None,
    after: Mapping[int, int],
    partial: bool,
    timeout: float = 15.0,
) -> LogRead:
    """The job's logs from every node of the Ray cluster and this host's jobs directory
    (what ``LogSource.read`` answers, :mod:`.logs`). JobNotFound or
    AmbiguousJob as the id resolves across them; RayNotInstalled or RayUnavailable when
    there is no cluster to ask."""
    kwargs = {
        "ref": ref,
        "address": address,
        "jobs_dir": jobs_dir,
        "ranks": None if ranks is None else list(ranks),
        "tail": tail,
        "after": {str(k): int(v) for k, v in after.items()},
        "partial": partial,
        "timeout": timeout,
    }
    answer = ray_driver.run("logs", kwargs, here=logs_here, answer=ClusterLogs, timeout=timeout)
    return merge(ref, answer)


def logs_here(
    *, ref: str, address: str | None, jobs_dir: str | None, ranks: list[int] | None, tail: int | None, after: dict[str, int], partial: bool, timeout: float
) -> ClusterLogs:
    """The driver's side of :func:`logs_cluster`, in this process."""
    from forgather_control.client.ray_listing import _connected, _on_every_node

    out = ClusterLogs()
    args = (jobs_dir, ref, ranks, tail, after, partial)

    def local() -> None:
        try:
            out.nodes.append(decode(parse_json(logs_node(*args), name="this host's logs"), NodeLogs, name="this host's logs"))
            out.names.append(f"{socket.gethostname()} (local)")
        except RecordError as exc:
            out.missing.append(MissingNode(node=f"{socket.gethostname()} (local)", reason=str(exc)[:4000]))

    with _connected(address) as (ray, _addr):
        out.missing += _on_every_node(ray, logs_node, args, name="forgather-control-logs", timeout=timeout, on_answer=out.add, meanwhile=local)
    return out


def merge(ref: str, answer: ClusterLogs) -> LogRead:
    """The nodes' answers as one read: the id resolved across them (the reference
    exactly, else the only id it starts), each rank from the node holding most of it."""
    ids = sorted({i for n in answer.nodes for i in n.job_ids})
    notes = [f"Ray node {m.node} did not answer: {m.reason}" for m in answer.missing]
    where = f"on the {len(answer.nodes)} Ray node(s) that answered nor in the local jobs directory"
    if ref in ids:
        job_id = ref
    elif len(ids) == 1:
        job_id = ids[0]
    elif not ids:
        hint = f"; {len(answer.missing)} node(s) did not answer and may hold it" if answer.missing else ""
        raise JobNotFound(f"no job {ref!r} {where}{hint}")
    else:
        shown = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
        raise AmbiguousJob(f"{ref!r} matches {len(ids)} jobs {where} ({shown}); give more of the id")
    best: dict[int, RankText] = {}
    states: list[JobState | None] = []
    missing: set[int] = set()
    have: set[int] = set()
    for name, node in zip(answer.names, answer.nodes, strict=False):
        if node.job_id != job_id:
            continue
        states.append(JobState.parse(node.state) if node.state != "dead" else JobState.DEAD)
        if node.error:
            notes.append(f"on {name}: {node.error}")
        missing.update(node.missing)
        have.update(node.have)
        for r in node.ranks:
            if r.rank not in best or r.offset > best[r.rank].offset:
                best[r.rank] = r
    texts = [best[r].text() for r in sorted(best)]
    ended = bool(states) and all(s is not None and (s.final or s == JobState.DEAD) for s in states)
    return LogRead(job_id, texts, sorted(missing - have), sorted(have), ended, notes)
