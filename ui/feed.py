"""The jobs view's data: the jobs ``forgather control list`` shows (``list --all`` when
the page shows ended jobs too), a little more of each running one, and a loss
sparkline per job.

Two listings, each taken at most once per ``max_age`` seconds (half a second for a
folder, five for a Ray cluster) whoever asks, requests that arrive while one is being
taken waiting for that one: what may be live (every open page that hides ended jobs,
and the Prometheus scrape), which costs what is live however long the history is, and
everything (only while a page shows ended jobs). The rows are the library's own
(its :class:`~forgather_control.client.sources.JobSource`'s, as ``list --json``), plus
what the status record of a job in a folder on this machine says of its speed, ETA, loss
and last checkpoint (a Ray row has only what the cluster's listing has).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgather_control.client.jobinfo import status_of_run
from forgather_control.client.sources import JobSource
from forgather_control.core.errors import ControlError
from forgather_control.core.files import RecordError
from forgather_control.core.jobs import JobPaths, is_valid_job_id
from forgather_control.core.metrics import read_history
from forgather_control.core.records import UNSET, JobRow, MissingNode, Status, Text, UnsetType, When, encode, load_or_none
from forgather_control.core.safe import json_safe
from forgather_control.core.states import JobState

log = logging.getLogger(__name__)

#: Points in a sparkline: the whole run, in this many buckets.
SPARK_POINTS = 40
#: A job's metrics.json is read again at most this often (seconds) for its sparkline.
SPARK_EVERY = 3.0


class PageRow(JobRow):
    """A row as the page gets it: the listing's, whether the job lives or has ended, and,
    for a job in a folder here, what its status record says (UNSET: not known, left out)."""

    live: bool = False
    final: bool = False
    eval_loss: float | UnsetType | None = UNSET
    stop_reason: Text | UnsetType | None = UNSET
    error: Text | UnsetType | None = UNSET
    #: a rate and an ETA are claims about a running job: only a live one has them
    steps_per_second: When | UnsetType | None = UNSET
    eta_seconds: When | UnsetType | None = UNSET


@dataclass
class Snapshot:
    """One listing: rows as the page gets them, and where they came from."""

    rows: list[PageRow]
    where: str
    source: str
    taken_at: float
    took: float
    exists: bool = True
    missing_nodes: list[MissingNode] | None = None
    error: str | None = None
    #: how many job folders of other users were left out, private to them
    private: int = 0

    def as_json(self) -> dict[str, Any]:
        """``GET /api/jobs``: strict JSON (NaN and the infinities as null)."""
        return {
            "rows": [json_safe(encode(r)) for r in self.rows],
            "where": self.where,
            "source": self.source,
            "taken_at": self.taken_at,
            "took": round(self.took, 4),
            "exists": self.exists,
            "missing_nodes": [encode(m) for m in self.missing_nodes or []],
            "error": self.error,
            "private": self.private,
        }


class JobsFeed:
    """The listing of ``source``, taken at most once per ``max_age`` seconds (thread-safe)."""

    def __init__(self, source: JobSource, *, max_age: float, timeout: float = 15.0) -> None:
        self.source = source
        self.max_age = max_age
        self.timeout = timeout
        # keyed by ``ended``: the listing of what may be live, and the one of everything
        self._locks = {False: threading.Lock(), True: threading.Lock()}
        self._snapshots: dict[bool, Snapshot] = {}
        self._statuses = {False: StatusCache(), True: StatusCache()}  # each used under its lock
        self.sparks = Sparklines()

    def snapshot(self, *, ended: bool = True) -> Snapshot:
        """The listing with the jobs that ended (``list --all``), or without them (``list``:
        its cost does not grow with the history)."""
        snap = self._snapshots.get(ended)
        if snap is not None and time.time() - snap.taken_at < self.max_age:
            return snap
        with self._locks[ended]:
            snap = self._snapshots.get(ended)
            if snap is not None and time.time() - snap.taken_at < self.max_age:
                return snap  # taken while this request waited for the lock
            self._snapshots[ended] = self._take(ended, previous=snap)
            return self._snapshots[ended]

    def _take(self, ended: bool, previous: Snapshot | None) -> Snapshot:
        t0 = time.perf_counter()
        statuses = self._statuses[ended]
        try:
            listing = self.source.list(include_finished=ended, timeout=self.timeout)
        except ControlError as exc:
            # Keep showing the last rows, and say why they are not fresh.
            rows = previous.rows if previous is not None else []
            where = previous.where if previous is not None else self.source.where
            return Snapshot(rows, where, self.source.kind, time.time(), time.perf_counter() - t0, error=str(exc))
        local = listing.source == "local"
        rows = [job_row(row, with_status=local, statuses=statuses) for row in listing.rows]
        if local:
            statuses.keep_only({os.path.join(r.jobs_dir, r.job_id, "status.json") for r in rows if r.jobs_dir is not None})
        rows.sort(key=_order)
        return Snapshot(
            rows,
            listing.where,
            listing.source,
            time.time(),
            time.perf_counter() - t0,
            exists=listing.exists,
            missing_nodes=listing.missing_nodes,
            private=len(listing.private),
        )

    def sparklines(self, *, ended: bool = True) -> dict[str, list[float | None]]:
        """A loss sparkline for every listed job that has a metric history here (the
        ended ones only with ``ended``: a page that hides them reads none of theirs)."""
        out = {}
        for row in self.snapshot(ended=ended).rows:
            values = self.sparks.get(row.jobs_dir, row.job_id)
            if values:
                out[row.job_id] = values
        return out


def job_row(row: JobRow, *, with_status: bool, statuses: StatusCache | None = None) -> PageRow:
    """A ``list --json`` row for the page, plus ``live``, ``final`` and, from the job's
    status record (``with_status``), speed, ETA and loss. The last checkpoint and why it
    ended are the row's: the job's, decided once (client/jobinfo.py)."""
    out = PageRow.of(row)
    out.live, out.final = row.state.live, row.state.final
    out.loss = _finite(row.loss)
    if with_status and row.jobs_dir is not None and is_valid_job_id(row.job_id):
        path = os.path.join(row.jobs_dir, row.job_id, "status.json")
        found = statuses.get(path) if statuses is not None else load_or_none(path, Status)
        st = status_of_run(found, row.restarts) or Status()
        metrics = st.metrics or {}
        if metrics:  # a job of the framework's own callback has its loss from its API, in the row
            out.loss = _finite(metrics.get("loss"))
        out.eval_loss = _finite(metrics.get("eval_loss"))
        if row.last_checkpoint is None:  # a row without the job's history (another source)
            out.last_checkpoint = st.last_checkpoint
        out.stop_reason = st.stop_reason
        out.error = st.error
        if out.live:
            out.steps_per_second = st.steps_per_second
            out.eta_seconds = st.eta_seconds
    return out


class StatusCache:
    """status.json records, read again only when the file changed (its inode, size or
    mtime): an ended job's is read once, not at every listing."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int], Status | None]] = {}

    def get(self, path: str) -> Status | None:
        try:
            st = os.stat(path)
        except OSError:
            self._cache.pop(path, None)
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        record = load_or_none(path, Status)
        self._cache[path] = (stamp, record)
        return record

    def keep_only(self, paths: set[str]) -> None:
        for path in [p for p in self._cache if p not in paths]:
            del self._cache[path]


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


_RANK = {
    **dict.fromkeys((JobState.RUNNING, JobState.STALLED, JobState.STOPPING), 0),
    **dict.fromkeys((JobState.STARTING, JobState.UNCONTROLLED, JobState.ENDING), 1),
    JobState.REQUEUED: 2,
    **dict.fromkeys((JobState.STALE, JobState.UNKNOWN), 3),
    # not running, not over: each waits to be resumed, under a heading of its own
    JobState.PAUSED: 5,
}


def _order(row: JobRow) -> tuple[int, float, str]:
    """Running jobs first, then the rest, the paused ones, then those that ended; the
    newest first within each."""
    rank = _RANK.get(row.state, 6 if row.state.final else 4)
    return rank, -(row.updated_at or 0.0), row.job_id


class Sparklines:
    """Each job's loss over its whole run, in :data:`SPARK_POINTS` buckets, read from its
    metrics.json again only when the file changed and at most every :data:`SPARK_EVERY` s."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[float, tuple[int, int], list[float | None]]] = {}
        self._lock = threading.Lock()

    def get(self, jobs_dir: str | None, job_id: str) -> list[float | None] | None:
        if jobs_dir is None or not is_valid_job_id(job_id):
            return None
        key = (jobs_dir, job_id)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < SPARK_EVERY:
            return cached[2]
        paths = JobPaths(Path(jobs_dir), job_id)
        try:
            st = os.stat(paths.dir / "metrics.json")
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if cached is not None and cached[1] == stamp:
            values = cached[2]
        else:
            try:
                history = read_history(paths)
            except RecordError as exc:
                log.debug("no sparkline for %s: %s", job_id, exc)
                values = []
            else:
                loss = history.series.get("loss")
                values = bucket_means(loss.value if loss is not None else [], SPARK_POINTS)
        with self._lock:
            self._cache[key] = (now, stamp, values)
        return values


def bucket_means(values: list[float | None], n: int) -> list[float | None]:
    """``values`` in at most ``n`` buckets of consecutive points, each its mean (None for
    a bucket with no number)."""
    if len(values) <= n:
        return list(values)
    out: list[float | None] = []
    for i in range(n):
        chunk = [v for v in values[i * len(values) // n : (i + 1) * len(values) // n] if v is not None]
        out.append(sum(chunk) / len(chunk) if chunk else None)
    return out
