"""What counts as evidence that a job runs, when the reader cannot check the writer's pid
(another PID namespace on this host: a container sharing the host's name and boot id) or
cannot trust the writer's clock (a heartbeat from the future). Pure ``judge`` cases, the
clock and the probe injected."""

from __future__ import annotations

import time
from pathlib import Path

from support.records import identity, typed

from forgather_control.client import cleanup
from forgather_control.client.listing import useful_probe
from forgather_control.core import JobPaths, Liveness, judge, write_json_atomic
from forgather_control.core.host import local_pid_ns
from forgather_control.core.liveness import CLOCK_SKEW, same_pid_namespace
from forgather_control.core.records import Endpoint, Job, Node, Status

NOW = 1_900_000_000.0
TEN_YEARS = 10 * 365 * 86400.0
#: a pid that runs in no namespace of this host's
GONE = 999_999_999


def in_another_namespace(**kw: object) -> dict:
    """This host, this boot, a pid of another PID namespace (not ours to look up)."""
    return {**identity(), "pid": GONE, "pid_ns": (local_pid_ns() or 0) + 1, **kw}


def on_another_host(**kw: object) -> dict:
    return {**identity(), "host": "other-node", "boot_id": "other-boot", **kw}


def no_squeue(_job_id: str) -> None:
    return None


def verdict(**kw: object) -> tuple[Liveness, str]:
    return judge(squeue=no_squeue, now=NOW, **kw)  # type: ignore[arg-type]


# -- another PID namespace on this host --------------------------------------------------
def test_a_record_of_another_pid_namespace_is_not_ours_to_check_by_pid() -> None:
    assert not same_pid_namespace(typed(Status, in_another_namespace()))
    assert same_pid_namespace(typed(Status, identity()))
    legacy = {k: v for k, v in identity().items() if k != "pid_ns"}  # written before namespaces were recorded
    assert same_pid_namespace(typed(Status, legacy))


def test_a_fresh_heartbeat_from_another_pid_namespace_is_never_dead() -> None:
    status = typed(Status, in_another_namespace(state="running", heartbeat_at=NOW))
    endpoint = typed(Endpoint, in_another_namespace(url="http://127.0.0.1:1", job_id="j"))
    v, why = verdict(endpoint=endpoint, status=status, probe=lambda e: None)
    assert v == Liveness.UNKNOWN, why
    assert "another PID namespace" in why and "0s ago" in why


def test_a_job_of_another_pid_namespace_that_answers_the_authenticated_probe_is_alive() -> None:
    status = typed(Status, in_another_namespace(state="running", heartbeat_at=NOW))
    endpoint = typed(Endpoint, in_another_namespace(url="http://127.0.0.1:1", job_id="j"))
    assert verdict(endpoint=endpoint, status=status, probe=lambda e: True)[0] == Liveness.ALIVE


def test_a_silent_job_of_another_pid_namespace_is_stale_not_dead() -> None:
    status = typed(Status, in_another_namespace(state="running", heartbeat_at=NOW - 600))
    v, why = verdict(endpoint=None, status=status)
    assert v == Liveness.STALE and "600s" in why


def test_a_final_job_whose_launcher_beats_in_another_pid_namespace_is_not_finished() -> None:
    """A relaunch starting up in another container beside the previous run's final records."""
    status = typed(Status, in_another_namespace(state="stopped", heartbeat_at=NOW - 600))
    node = typed(Node, in_another_namespace(state="running", heartbeat_at=NOW - 1))
    assert verdict(endpoint=None, status=status, nodes=[node])[0] == Liveness.UNKNOWN


def test_in_our_own_pid_namespace_a_gone_pid_is_still_dead() -> None:
    status = typed(Status, {**identity(GONE), "state": "running", "heartbeat_at": NOW})
    v, why = verdict(endpoint=None, status=status)
    assert v == Liveness.DEAD, why


def test_a_listing_probes_a_job_of_another_pid_namespace() -> None:
    """Its pid says nothing here, so the probe is the evidence worth spending (the listing
    skips it for a job whose pid it can check)."""

    def probe(e: Endpoint) -> bool:
        return True

    theirs = typed(Endpoint, in_another_namespace(url="http://127.0.0.1:1"))
    ours = typed(Endpoint, {**identity(), "url": "http://127.0.0.1:1"})
    assert useful_probe(theirs, probe, probe_local=False) is probe
    assert useful_probe(ours, probe, probe_local=False) is None


def test_cleanup_leaves_a_job_of_another_pid_namespace_with_a_fresh_heartbeat(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    paths = JobPaths(root, "contained").create(mark=False)
    now = time.time()
    write_json_atomic(paths.status, {**in_another_namespace(), "job_id": "contained", "state": "running", "step": 3, "heartbeat_at": now})
    write_json_atomic(paths.endpoint, {**in_another_namespace(), "job_id": "contained", "url": "http://127.0.0.1:1", "port": 1, "token": "t" * 43})
    outcome = cleanup.delete_job(root, "contained")
    assert not outcome.deleted and "unknown" in outcome.reason, outcome
    assert paths.status.exists()
    assert [c.info.job_id for c in cleanup.candidates(root)] == []


def test_slurm_forgetting_a_job_does_not_make_a_fresh_heartbeat_dead() -> None:
    """SLURM's word (this squeue may ask another cluster) against a writer that beat just
    now: not dead until the heartbeat has aged."""
    job = typed(Job, {"scheduler": {"type": "slurm", "slurm_job_id": "77"}})
    for gone in ("", "CANCELLED"):
        fresh = typed(Status, on_another_host(state="running", heartbeat_at=NOW - 2))
        v, why = judge(endpoint=None, status=fresh, job=job, squeue=lambda j, gone=gone: gone, now=NOW)
        assert v == Liveness.UNKNOWN and "SLURM" in why and "2s old" in why, why
        old = typed(Status, on_another_host(state="running", heartbeat_at=NOW - 600))
        assert judge(endpoint=None, status=old, job=job, squeue=lambda j, gone=gone: gone, now=NOW)[0] == Liveness.DEAD


# -- a heartbeat from the future ------------------------------------------------------------
def test_a_heartbeat_from_the_future_is_not_fresh_and_the_other_evidence_judges() -> None:
    ahead = typed(Status, on_another_host(state="running", heartbeat_at=NOW + TEN_YEARS))
    v, why = verdict(endpoint=None, status=ahead)
    assert v == Liveness.STALE and "ahead" in why, why
    # a launcher's heartbeat on a right clock still counts, and the status says the clock is off
    node = typed(Node, on_another_host(state="running", heartbeat_at=NOW - 3))
    v, why = verdict(endpoint=None, status=ahead, nodes=[node])
    assert v == Liveness.UNKNOWN and "3s ago" in why and "ahead" in why, why
    old = typed(Node, on_another_host(state="running", heartbeat_at=NOW - 600))
    assert verdict(endpoint=None, status=ahead, nodes=[old])[0] == Liveness.STALE


def test_a_heartbeat_a_little_ahead_is_skew_allowed_for() -> None:
    near = typed(Status, on_another_host(state="running", heartbeat_at=NOW + CLOCK_SKEW / 2))
    assert verdict(endpoint=None, status=near)[0] == Liveness.UNKNOWN


def test_a_launcher_beating_from_the_future_does_not_keep_an_ended_job_from_finishing() -> None:
    ended = typed(Status, on_another_host(state="stopped", heartbeat_at=NOW - 600, ended_at=NOW - 600))
    node = typed(Node, on_another_host(state="running", heartbeat_at=NOW + TEN_YEARS))
    v, why = verdict(endpoint=None, status=ended, nodes=[node])
    assert v == Liveness.FINISHED, why
