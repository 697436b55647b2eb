"""Cluster-wide ``forgather control list`` through an existing Ray cluster.

On clusters without shared storage every node keeps its own jobs directory, and pids
only mean something on the node that wrote them. So the listing is done *on* each node:
one tiny task pinned to every alive node reads that node's jobs directory and judges
liveness there with :func:`forgather_control.client.listing.scan`; its answer is a
:class:`NodeListing` as JSON bytes (Ray carries bytes, never an object of ours), decoded
once where the driver reads it (a row a node got wrong is left out, and
said so; an answer that is not a listing makes the node a missing one, with the reason),
and merged with the local listing, one row per job.

Ray is optional and only this module imports it, inside its functions, so
``import forgather_control.client`` and every other command stay free of it. We never start a
cluster: the user's cluster is connected to, asked, and left (``ray.shutdown``) so the
CLI exits promptly, by a driver in a child interpreter (:mod:`.ray_driver`) so that
nothing Ray does to its process can end the caller's. A node that hangs or dies cannot
stall the listing: answers are collected with ``ray.wait`` against a deadline,
stragglers are cancelled, and the node is reported in ``missing_nodes``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from forgather_control.client import ray_driver
from forgather_control.client.listing import scan
from forgather_control.client.ray_driver import RayNotInstalled, RayUnavailable, not_installed
from forgather_control.client.transport import probe_endpoint
from forgather_control.core.env import ENV_RAY_LIST_DELAY
from forgather_control.core.errors import Unreachable
from forgather_control.core.files import RecordError
from forgather_control.core.jobs import match_job_id, resolve_jobs_dir
from forgather_control.core.liveness import is_loopback_url, same_host
from forgather_control.core.records import (
    MAX_TEXT,
    UNSET,
    ClusterNode,
    Endpoint,
    Host,
    Identity,
    JobRow,
    MissingNode,
    RayNode,
    Record,
    StackRank,
    Str128,
    Str512,
    Text,
    decode,
    parse_json,
    to_json,
)

log = logging.getLogger(__name__)

#: How long the address check waits for the Ray head's port before giving up.
CONNECT_CHECK_TIMEOUT = 3.0
#: The least time left for the nodes to answer, whatever connecting cost.
MIN_WAIT = 0.5

# Best evidence first when the same job is seen more than once (shared storage, or a
# multi-node job whose launchers each left a record on their own node).
_LIVENESS_RANK = {"alive": 5, "finished": 4, "dead": 3, "stale": 2, "unknown": 1}


class Reach(Record):
    """What reaching a job takes, as a node's answer in find mode carries it next to the
    job's row: the token (never shown) and the boot id (with the row's host: is it this
    machine?)."""

    token: Str512 | None = None
    boot_id: Str128 | None = None


class NodeRow(JobRow):
    """A job's row as a node's answer carries it: in find mode with what reaching the job
    takes (:class:`Reach`; never in a listing), split off by :meth:`split` before the row
    is shown. The node fields are the driver's (which node answered), not the node's."""

    token: Str512 | None = None
    boot_id: Str128 | None = None

    def split(self) -> tuple[JobRow, Reach]:
        """The row as it is shown (no token), and what reaching its job takes."""
        return JobRow(**{name: getattr(self, name) for name in JobRow.__struct_fields__}), Reach(token=self.token, boot_id=self.boot_id)


class NodeListing(Record):
    """One node's answer to a listing (:func:`list_node`, as JSON bytes): its host's name,
    the jobs directory it read, and that directory's rows."""

    hostname: Host | None = None
    jobs_dir: Text | None = None
    jobs: list[NodeRow] = msgspec.field(default_factory=list)


class NodeStacks(Record):
    """One node's answer to a stacks request (:func:`_stacks_node`, as JSON bytes): the
    stacks of the job's ranks running there."""

    ranks: list[StackRank] = msgspec.field(default_factory=list)


class ClusterAnswer(Record):
    """The Ray driver's answer to a listing (:func:`gather_here`): every row the nodes and
    the local jobs directory gave (not merged yet; in find mode with what reaching each
    takes), the nodes that did not answer and those that did, and the rows left out (why,
    said in the caller's log). JSON where it leaves the driver's interpreter, decoded once
    on the other side (:func:`.ray_driver.run`)."""

    address: Text = ""
    jobs: list[NodeRow] = msgspec.field(default_factory=list)
    missing_nodes: list[MissingNode] = msgspec.field(default_factory=list)
    nodes: list[ClusterNode] = msgspec.field(default_factory=list)
    left_out: list[Text] = msgspec.field(default_factory=list)

    def add(self, node: RayNode, answer: object) -> None:
        """``node``'s answer: its rows (each labelled with the node), the node as one that
        answered, the rows it got wrong as left out; or, when the answer is not a
        listing, the node as a missing one with the reason."""
        try:
            listing, left_out = read_listing(answer, node)
        except RecordError as exc:
            self.missing_nodes.append(_missing(node, str(exc)))
            return
        given = len(listing.jobs) + len(left_out)
        self.nodes.append(ClusterNode(**msgspec.structs.asdict(node), hostname=listing.hostname, jobs_dir=listing.jobs_dir, jobs=given))
        self.jobs += listing.jobs
        self.left_out += left_out


class ClusterStacks(Record):
    """The Ray driver's answer to a stacks request (:func:`stacks_here`): the ranks' stacks
    the nodes gave, and the nodes that did not answer."""

    found: list[StackRank] = msgspec.field(default_factory=list)
    missing: list[MissingNode] = msgspec.field(default_factory=list)

    def add(self, node: RayNode, answer: object) -> None:
        """``node``'s answer (:class:`NodeStacks` as JSON bytes): its ranks (one a node got
        wrong is left out: the report then names that rank as one that did not answer), or
        the node as a missing one with the reason when the answer is not one."""
        what = "answered something that is not a stacks answer"
        try:
            if not isinstance(answer, bytes):
                raise RecordError(f"{what} ({type(answer).__name__})")
            raw = parse_json(answer, name=what)
            ranks = raw.get("ranks") if isinstance(raw, dict) else None
            if not isinstance(ranks, list):
                raise RecordError(f"{what} ({type(raw).__name__})")
        except RecordError as exc:
            self.missing.append(_missing(node, str(exc)))
            return
        for rank in ranks:
            try:
                self.found.append(decode(rank, StackRank, name=f"a rank's stacks from Ray node {node.node!r}"))
            except RecordError as exc:
                log.debug("left out: %s", exc)


class ClusterRecord(Record, omit_defaults=False):
    """A cluster listing as a record (:meth:`ClusterListing.as_record`; ``encode`` gives its
    JSON): its rows, the nodes that did not answer and those that did, the cluster's
    address and how long it took; never a token."""

    jobs: list[JobRow] = msgspec.field(default_factory=list)
    missing_nodes: list[MissingNode] = msgspec.field(default_factory=list)
    nodes: list[ClusterNode] = msgspec.field(default_factory=list)
    address: str = ""
    elapsed: float = 0.0


@dataclass
class ClusterListing:
    """What :func:`list_cluster` found.

    ``jobs``: the rows, each with ``node`` (where it came from), ``node_id``, ``node_ip``,
    ``source`` ("ray" or "local") and, when the job was seen on more than one node,
    ``seen_on``. ``missing_nodes``: nodes that did not answer, and why. ``nodes``: the
    nodes that answered, with the jobs directory each read and how many jobs it gave.
    """

    jobs: list[JobRow] = field(default_factory=list)
    missing_nodes: list[MissingNode] = field(default_factory=list)
    nodes: list[ClusterNode] = field(default_factory=list)
    address: str = ""
    elapsed: float = 0.0
    #: find mode: (job id, node) -> what reaching that copy of the job takes
    reach: dict[tuple[str, str], Reach] = field(default_factory=dict, repr=False)

    def as_record(self) -> ClusterRecord:
        """The listing as a record (``encode`` gives its JSON); no token: ``reach`` is left out."""
        return ClusterRecord(jobs=self.jobs, missing_nodes=self.missing_nodes, nodes=self.nodes, address=self.address, elapsed=self.elapsed)


@dataclass(frozen=True)
class Found:
    """The one job :func:`find_job` found: its row, and the token its server takes (never shown)."""

    row: JobRow
    token: str | None = field(default=None, repr=False)
    boot_id: str | None = None


# -- the task that runs on each node ------------------------------------------------
def list_node(jobs_dir: str | None, include_finished: bool, ref: str | None) -> bytes:
    """Runs on one node, in a Ray worker: list *this node's* jobs directory, as a
    :class:`NodeListing` in JSON bytes.

    ``jobs_dir`` None means the directory in effect on the node (its environment's
    FORGATHER_JOBS_DIR, else its home). With ``ref`` it returns only the jobs whose id
    starts with it, finished ones included, with their tokens (for ``find_job``);
    without, tokens never leave the node.
    """
    delay = os.environ.get(ENV_RAY_LIST_DELAY)
    if delay:
        time.sleep(float(delay))
    return _listing(resolve_jobs_dir(jobs_dir), include_finished, ref)


def _listing(root: Path, include_finished: bool, ref: str | None) -> bytes:
    """The jobs under ``root`` as a node's answer carries them (a :class:`NodeListing` in
    JSON bytes); in find mode (``ref``) the matching ones, ended ones included, each with
    its :class:`Reach`. A listing opens only what may be live (settled jobs are passed by,
    as by ``list``); find mode only the folders ``ref`` names."""
    rows = []
    for info in scan(root, include_finished=include_finished or ref is not None, prefix=ref):
        row = NodeRow.of(info.summary())
        if ref is not None and info.endpoint is not None:
            row.token, row.boot_id = info.endpoint.token, info.endpoint.boot_id
        rows.append(row)
    return to_json(NodeListing(hostname=socket.gethostname(), jobs_dir=str(root), jobs=rows))


def read_listing(answer: object, node: RayNode, *, source: str = "ray") -> tuple[NodeListing, list[str]]:
    """A node's answer to :func:`list_node` (JSON bytes), decoded once: its listing, each
    row labelled with ``node`` and ``source`` (over what the node said), and why each row
    it got wrong was left out (every other row is listed as usual). RecordError ("answered
    something that is not a listing ...") when the answer is not one."""
    what = "answered something that is not a listing"
    if not isinstance(answer, bytes):
        raise RecordError(f"{what} ({type(answer).__name__})")
    raw = parse_json(answer, name=what)
    rows = raw.get("jobs") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not isinstance(rows, list):
        raise RecordError(f"{what} ({type(raw).__name__})")
    listing = decode({**raw, "jobs": []}, NodeListing, name=what)
    label = {"node": node.node, "node_id": node.node_id, "node_ip": node.node_ip, "source": source}
    left_out = []
    for row in rows:
        try:
            listing.jobs.append(decode({**row, **label} if isinstance(row, dict) else row, NodeRow, name=f"a row from Ray node {node.node!r}"))
        except RecordError as exc:
            left_out.append(str(exc))
    return listing, left_out


# -- public API ---------------------------------------------------------------------
def list_cluster(
    *,
    address: str | None,
    jobs_dir: str | None,
    include_finished: bool = False,
    timeout: float = 10.0,
) -> ClusterListing:
    """List the jobs of every node of the Ray cluster at ``address``, merged with the
    local listing. ``address`` None or "auto": RAY_ADDRESS, else the running cluster.

    Returns within about ``timeout`` seconds (plus disconnecting) whatever the nodes do;
    nodes that did not answer are in ``missing_nodes``. Raises :class:`RayNotInstalled`
    or :class:`RayUnavailable` (no cluster: we never start one).
    """
    started = time.monotonic()
    listing = _gather(address=address, jobs_dir=jobs_dir, include_finished=include_finished, ref=None, timeout=timeout)
    listing.jobs = _merge(listing.jobs)
    listing.elapsed = round(time.monotonic() - started, 3)
    return listing


def find_job(ref: str, *, address: str | None, jobs_dir: str | None, timeout: float = 10.0) -> Found:
    """Resolve a job id (or unique prefix) across the Ray cluster to something
    :class:`~forgather_control.client.handle.JobHandle` can talk to: the job's row (with
    its ``url``) and its token.

    The token is read by the node's own task from the job's 0600 endpoint.json and
    travels over the user's own Ray cluster. Raises JobNotFound / AmbiguousJob, and
    Unreachable when the job is found but has no endpoint this machine can reach (the
    exception's ``job`` attribute then holds the job's row, which never holds the token).
    An exact id whose live endpoint has been found ends the wait early: one hung node
    must not cost every ``status --ray`` its whole timeout.
    """

    listing = _gather(address=address, jobs_dir=jobs_dir, include_finished=True, ref=ref, timeout=timeout)
    rows = _merge(listing.jobs)
    hint = "run `forgather control list --ray --all` to see the jobs there"
    if listing.missing_nodes:
        names = ", ".join(f"{m.node} ({m.reason})" for m in listing.missing_nodes)
        hint = f"{len(listing.missing_nodes)} node(s) did not answer and may hold it: {names}. " + hint.capitalize()
    job_id = match_job_id(
        ref,
        [r.job_id for r in rows],
        where=f"on the {len(listing.nodes)} Ray node(s) that answered nor in the local jobs directory",
        hint=hint,
    )
    row = next(r for r in rows if r.job_id == job_id)
    # the token of the copy the row came from, else of another copy that has one
    reach = listing.reach.get((job_id, str(row.node))) or Reach()
    if reach.token is None:
        reach = next((r for (j, _), r in listing.reach.items() if j == job_id and r.token is not None), reach)
    found = Found(row, token=reach.token, boot_id=reach.boot_id)
    _check_reachable(found)
    return found


# -- connecting ---------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
        from ray.util import scheduling_strategies  # noqa: F401  (fails on a broken install)
    except ImportError as exc:
        raise RayNotInstalled(not_installed(str(exc))) from None
    return ray


def resolve_address(address: str | None) -> str:
    """None or "auto": RAY_ADDRESS if set, else "auto" (the cluster running here)."""
    if address in (None, "", "auto"):
        return os.environ.get("RAY_ADDRESS") or "auto"
    return address


@contextmanager
def _connected(address: str | None) -> Iterator[tuple[Any, str]]:
    """Connect to an existing cluster (never start one), quietly; disconnect after.
    A caller that already holds a Ray connection keeps it (and we leave it open)."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray, "(already connected)"
        return
    addr = resolve_address(address)
    if addr != "auto":
        _check_port(addr)
    saved = os.environ.get("RAY_ADDRESS")
    # Ray lets RAY_ADDRESS override an explicit address; the user's --ray wins here.
    if addr != "auto":
        os.environ["RAY_ADDRESS"] = addr
    try:
        ray.init(address=addr, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    except ConnectionError as exc:
        raise RayUnavailable(
            f"no running Ray cluster found ({exc}). Start one with `ray start --head`, or give its address: --ray HOST:PORT or RAY_ADDRESS"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Ray raises a zoo of types for a bad or foreign cluster
        raise RayUnavailable(f"cannot connect to the Ray cluster at {addr}: {type(exc).__name__}: {exc}") from None
    finally:
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved
    try:
        yield ray, addr
    finally:
        ray.shutdown()


def _check_port(addr: str) -> None:
    """Fail in seconds, not Ray's minute of retries, when nothing listens at ``addr``."""
    hostport = addr.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"cannot parse the Ray address {addr!r}; expected HOST:PORT (the head's GCS port)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_CHECK_TIMEOUT).close()
    except OSError as exc:
        raise RayUnavailable(
            f"no Ray cluster answers at {addr} ({exc}). Check the head's address and port (`ray start --head --port=PORT`), or set RAY_ADDRESS"
        ) from None


# -- asking the nodes ---------------------------------------------------------------
def _node_name(node: dict[str, Any]) -> str:
    """``<name>/<short id>``: the name given with ``ray start --node-name`` if any, else
    the hostname (or IP); the short id tells apart nodes that share a host."""
    ip = node.get("NodeManagerAddress")
    name = node.get("NodeName")
    if not name or name == ip:
        name = node.get("NodeManagerHostname") or ip or "?"
    return f"{name}/{str(node.get('NodeID', ''))[:8]}"


def _gather(*, address: str | None, jobs_dir: str | None, include_finished: bool, ref: str | None, timeout: float) -> ClusterListing:
    """Ask every alive node and the local jobs directory (rows not merged yet), through
    a Ray driver in a child interpreter (:mod:`.ray_driver`), whose answer is decoded
    once there; the rows it left out are said here."""
    kwargs = {"address": address, "jobs_dir": jobs_dir, "include_finished": include_finished, "ref": ref, "timeout": timeout}
    answer = ray_driver.run("gather", kwargs, here=gather_here, answer=ClusterAnswer, timeout=timeout)
    for reason in answer.left_out:
        log.warning("left out: %s", reason)
    out = ClusterListing(missing_nodes=answer.missing_nodes, nodes=answer.nodes, address=answer.address)
    for node_row in answer.jobs:
        row, reach = node_row.split()
        out.jobs.append(row)
        if reach.token is not None or reach.boot_id is not None:
            out.reach[(row.job_id, str(row.node))] = reach
    for m in out.missing_nodes:
        log.info("Ray node %s did not answer: %s", m.node, m.reason)
    return out


def gather_here(*, address: str | None, jobs_dir: str | None, include_finished: bool, ref: str | None, timeout: float) -> ClusterAnswer:
    """The driver's side of :func:`_gather`, in this process. In find mode (``ref``) an
    exact id whose live endpoint has been found stops the wait: a hung node elsewhere
    need not cost the whole timeout."""
    with _connected(address) as (ray, addr):
        out = ClusterAnswer(address=addr)

        def found() -> bool:
            return any(r.job_id == ref and r.liveness == "alive" and r.url for r in out.jobs)

        # The local directory is read while the nodes work.
        out.missing_nodes += _on_every_node(
            ray,
            list_node,
            (jobs_dir, include_finished, ref),
            name="forgather-control-list",
            timeout=timeout,
            on_answer=out.add,
            meanwhile=lambda: _add_local(out, jobs_dir, include_finished, ref),
            done=found if ref is not None else None,
        )
    return out


def _on_every_node(
    ray: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    name: str,
    timeout: float,
    on_answer: Callable[[RayNode, object], None],
    meanwhile: Callable[[], None] | None = None,
    done: Callable[[], bool] | None = None,
) -> list[MissingNode]:
    """Run ``fn(*args)`` as a task pinned to every alive node; ``on_answer(node, value)``
    for each answer (what the task returned, as Ray gives it back); ``meanwhile()`` while
    they work; ``done()`` true stops waiting. Returns the nodes that did not answer, each
    with the reason."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    deadline = time.monotonic() + timeout
    task = ray.remote(fn)
    pending: dict[Any, RayNode] = {}
    missing: list[MissingNode] = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue  # Ray already knows it is gone; its jobs cannot be read
        meta = RayNode(node=_node_name(node), node_id=node.get("NodeID"), node_ip=node.get("NodeManagerAddress"))
        ref_ = task.options(
            num_cpus=0,  # a busy cluster still answers
            max_retries=0,
            name=name,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(*args)
        pending[ref_] = meta
    if meanwhile is not None:
        meanwhile()
    # Connecting may have eaten the budget; the nodes still get MIN_WAIT.
    wait_until = max(deadline, time.monotonic() + MIN_WAIT)
    waiting = list(pending)
    while waiting:
        left = wait_until - time.monotonic()
        if left <= 0 or (done is not None and done()):
            break
        ready, waiting = ray.wait(waiting, num_returns=1, timeout=left)
        for r in ready:
            try:
                value = ray.get(r, timeout=5.0)  # ready: returns at once
            except Exception as exc:  # noqa: BLE001 - whatever a node did, it is one missing node
                missing.append(_missing(pending[r], _failure_reason(ray, exc)))
                continue
            on_answer(pending[r], value)
    timed_out = time.monotonic() >= wait_until
    for r in waiting:
        reason = (
            f"no answer within {timeout:g}s (the node may be hung, overloaded or unreachable)" if timed_out else "not waited for: the job was found elsewhere"
        )
        missing.append(_missing(pending[r], reason))
        try:
            ray.cancel(r, force=True)
        except Exception as exc:  # noqa: BLE001 - the node may be gone already
            log.debug("cancelling the task on %s: %s", pending[r].node, exc)
    return missing


def _missing(node: RayNode, reason: str) -> MissingNode:
    """``node`` as one that did not answer, and why (cut to what a reason may be: an
    exception's text can be longer)."""
    return MissingNode(**msgspec.structs.asdict(node), reason=reason if len(reason) <= MAX_TEXT else reason[: MAX_TEXT - 3] + "...")


def _stacks_node(jobs_dir: str | None, job_id: str, timeout: float) -> bytes:
    """On one node: the stacks of the job's workers running there (signalled directly), as
    a :class:`NodeStacks` in JSON bytes."""
    from forgather_control.core.jobs import JobPaths
    from forgather_control.core.stacks import dump, local_workers

    paths = JobPaths(resolve_jobs_dir(jobs_dir), job_id)
    return to_json(NodeStacks(ranks=[s.as_record() for s in dump(local_workers(paths), timeout=timeout)]))


def stacks_cluster(job_id: str, *, address: str | None, jobs_dir: str | None, timeout: float = 10.0) -> tuple[list[object], list[MissingNode]]:
    """Every node's answer for the job's stacks (rank records as JSON, each checked by
    ``RankStacks.from_record``), and the nodes that did not answer; asked by a Ray driver
    in a child interpreter (:mod:`.ray_driver`)."""
    kwargs = {"job_id": job_id, "address": address, "jobs_dir": jobs_dir, "timeout": timeout}
    answer = ray_driver.run("stacks", kwargs, here=stacks_here, answer=ClusterStacks, timeout=timeout)
    return [r.as_record() for r in answer.found], answer.missing


def stacks_here(*, job_id: str, address: str | None, jobs_dir: str | None, timeout: float) -> ClusterStacks:
    """The driver's side of :func:`stacks_cluster`, in this process."""
    from forgather_control.core.stacks import DUMP_TIMEOUT

    out = ClusterStacks()
    with _connected(address) as (ray, _addr):
        out.missing += _on_every_node(ray, _stacks_node, (jobs_dir, job_id, DUMP_TIMEOUT), name="forgather-control-stacks", timeout=timeout, on_answer=out.add)
    return out


def _failure_reason(ray: Any, exc: BaseException) -> str:
    ex = ray.exceptions
    if isinstance(exc, ex.RayTaskError):
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, ImportError):
            return f"forgather-control cannot be imported on the node ({cause}); install it there"
        return f"the listing task failed on the node: {type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    dead = tuple(
        t
        for t in (
            getattr(ex, n, None)
            for n in ("NodeDiedError", "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "TaskUnschedulableError", "LocalRayletDiedError")
        )
        if t
    )
    if isinstance(exc, dead):
        return f"the node died or left the cluster during the listing ({type(exc).__name__})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"


def _add_local(out: ClusterAnswer, jobs_dir: str | None, include_finished: bool, ref: str | None) -> None:
    """This machine's own listing, labelled as such (it may be no Ray node at all), read
    as a node's answer is (every row checked alike)."""
    here = RayNode(node=f"{socket.gethostname()} (local)")
    try:
        listing, left_out = read_listing(_listing(resolve_jobs_dir(jobs_dir), include_finished, ref), here, source="local")
    except RecordError as exc:
        out.left_out.append(str(exc))
        return
    out.jobs += listing.jobs
    out.left_out += left_out


# -- merging ------------------------------------------------------------------------
def _merge(rows: list[JobRow]) -> list[JobRow]:
    """One row per job id. The row with the strongest evidence wins (alive over dead:
    a launcher still running somewhere means the job runs), Ray rows over the local
    copy of the same directory; fields it lacks are filled from the others."""
    by_id: dict[str, list[JobRow]] = {}
    for row in rows:
        by_id.setdefault(row.job_id, []).append(row)
    merged = []
    for job_id in sorted(by_id):
        group = sorted(by_id[job_id], key=lambda r: (_LIVENESS_RANK.get(r.liveness, 0), bool(r.url), r.source == "ray"), reverse=True)
        best = msgspec.structs.replace(group[0])
        for other in group[1:]:
            for name in JobRow.__struct_fields__:
                if getattr(best, name) in (None, UNSET) and getattr(other, name) not in (None, UNSET):
                    setattr(best, name, getattr(other, name))
        nodes = list(dict.fromkeys(r.node for r in group if isinstance(r.node, str)))
        if len(nodes) > 1:
            best.seen_on = nodes
        merged.append(best)
    return merged


def _check_reachable(found: Found) -> None:
    """A job found on some node is only controllable if its server answers from here."""
    row = found.row
    where = f"job {row.job_id} (on {row.node})"
    if row.liveness not in ("alive", "unknown"):
        exc = Unreachable(f"{where} is {row.state}: it has no live endpoint to control ({row.evidence})")
    elif not row.url:
        exc = Unreachable(f"{where} has no HTTP endpoint (file channel only, or its server did not start); run the command on that node")
    elif is_loopback_url(row.url) and not same_host(Identity(host=row.host, boot_id=found.boot_id)):
        # That loopback is the job's host's, not ours: whatever listens on the port here
        # is a stranger, and must not be handed the job's token.
        exc = Unreachable(
            f"{where} serves {row.url} on its own host ({row.host}) only, so it cannot be reached from "
            f"{socket.gethostname()}. Start the job with FORGATHER_CONTROL_HOST=0.0.0.0 (or the node's address) "
            "to control it from elsewhere, or run the command on that node"
        )
    else:
        answer = probe_endpoint(Endpoint(url=row.url, token=found.token, job_id=row.job_id), timeout=2.0)
        if answer:
            return
        if answer is False:
            exc = Unreachable(f"{where}: something answers at {row.url} but not for this job, or it refuses the token; the endpoint record may be stale")
        else:
            exc = Unreachable(
                f"{where} runs, but its control server at {row.url} does not answer from {socket.gethostname()}. "
                "It may listen on 127.0.0.1 only: start the job with FORGATHER_CONTROL_HOST=0.0.0.0 (or the node's "
                "address) to control it from elsewhere, or run the command on that node"
            )
    exc.job = row  # type: ignore[attr-defined]
    raise exc
