"""``GET /metrics``: the jobs in the Prometheus text format, for an existing Grafana.

A custom collector over the page's own listing (taken at most once per ``max_age``), in
a fresh registry per scrape: one series per job for its step, max steps, speed, ETA,
loss and restarts, and its state as a labelled gauge (``forgather_job_state{job_id,
state, host} 1``). prometheus-client escapes every label value, so a job's host name
cannot break the format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .feed import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: (name, row field, help): a gauge per job for each number a row has.
_GAUGES = (
    ("forgather_job_step", "step", "The job's last step."),
    ("forgather_job_max_steps", "max_steps", "The step the job trains to."),
    ("forgather_job_steps_per_second", "steps_per_second", "Training speed (running jobs)."),
    ("forgather_job_eta_seconds", "eta_seconds", "Seconds until max_steps at the current speed (running jobs)."),
    ("forgather_job_loss", "loss", "The latest training loss the job reported."),
    ("forgather_job_restarts", "restarts", "Restarts of the job (its run is restarts + 1)."),
)


class JobsCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        rows = self.snapshot.rows
        for name, field, doc in _GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["job_id"])
            for row in rows:
                value = _number(getattr(row, field))
                if value is not None:
                    gauge.add_metric([row.job_id], value)
            yield gauge
        state = GaugeMetricFamily("forgather_job_state", "1 for the job's current state (running, finished, failed, ...).", labels=["job_id", "state", "host"])
        for row in rows:
            state.add_metric([row.job_id, str(row.state), row.host or ""], 1)
        yield state
        yield GaugeMetricFamily("forgather_ui_jobs", "Jobs in the listing (finished ones included).", value=len(rows))
        yield GaugeMetricFamily("forgather_ui_listing_seconds", "How long the last listing took.", value=self.snapshot.took)


def exposition(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(snapshot))
    return generate_latest(registry)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
