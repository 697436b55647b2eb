"""Turn the JOB argument (plus ``--remote`` / ``--ray`` / ``--jobs-dir``) into a client.

Three ways to find a job, in the order a user would reach for them:

- the jobs directory (default): exact id or unique prefix, liveness judged, then HTTP
  with the endpoint file's token or the file channel;
- ``--remote HOST:PORT`` + token: the one job that server serves, no jobs dir needed;
- ``--ray`` / ``--ray-address ADDRESS``: ask every node of a Ray cluster (lazy: only this imports ray).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

from forgather_control.control.client import HttpChannel, JobClient, probe_endpoint
from forgather_control.control.errors import AmbiguousJob, JobNotFound, Unreachable, UsageError
from forgather_control.control.env import ENV_TOKEN
from forgather_control.control.jobs import resolve_jobs_dir, validate_job_id
from forgather_control.control.listing import JobInfo, find_job
from forgather_control.control.liveness import is_loopback_url
from forgather_control.control.liveness import Liveness, same_host

log = logging.getLogger(__name__)

RAY_EXTRA_HINT = "pip install 'forgather-control[ray]'"


@dataclass
class Target:
    """A job the CLI can talk to. ``info`` is set when it came from a jobs directory."""

    client: JobClient
    job_id: str
    info: JobInfo | None = None
    summary: dict[str, Any] | None = None  # from --remote / --ray


def remote_url(remote: str) -> str:
    """``HOST:PORT`` (or a full ``http://`` URL) -> ``http://HOST:PORT``."""
    remote = remote.strip()
    if remote.startswith(("http://", "https://")):
        return remote.rstrip("/")
    host, sep, port = remote.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--remote expects HOST:PORT (e.g. node17:41234), got {remote!r}")
    return f"http://{host}:{port}"


def remote_token(token: str | None) -> str | None:
    return token if token else os.environ.get(ENV_TOKEN) or None


def remote_jobs(remote: str, token: str | None, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The jobs a remote control server serves (GET /jobs), each enriched with its
    status when the server gives it. Raises Unreachable / CommandRefused / NotFound."""
    url = remote_url(remote)
    ch = HttpChannel(url, remote_token(token), timeout=timeout)
    try:
        code, data = ch.request("GET", "/jobs")
        if code == 401:
            raise _refused_token(url)
        if code != 200 or not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise Unreachable(f"{url} answered GET /jobs with {code}; is it a forgather control server?")
        out = []
        for j in data["jobs"]:
            if not isinstance(j, dict) or not isinstance(j.get("job_id"), str):
                continue
            row = {"job_id": j["job_id"], "state": j.get("state"), "step": j.get("step"), "max_steps": j.get("max_steps"), "url": url, "liveness": "alive", "evidence": "answered an authenticated request"}
            scode, st = ch.request("GET", f"/jobs/{j['job_id']}/status")
            if scode == 200 and isinstance(st, dict):
                row.update(
                    host=st.get("host"),
                    pid=st.get("pid"),
                    updated_at=st.get("updated_at") or st.get("heartbeat_at"),
                    world_size=st.get("world_size"),
                )
            row.setdefault("host", None)
            row.setdefault("pid", None)
            row.setdefault("updated_at", None)
            row["port"] = ch.port
            out.append(row)
        return out
    finally:
        ch.close()


def _refused_token(url: str) -> Exception:
    from forgather_control.control.client import CommandRefused

    return CommandRefused(
        f"{url} refused our token (401); pass the job's token with --token or FORGATHER_TOKEN "
        "(it is in the job's endpoint.json)",
        http_status=401,
    )


def match_ref(ref: str, ids: list[str], where: str) -> str:
    """Exact id, else a unique prefix; the same rule as the jobs directory."""
    if ref in ids:
        return ref
    matches = [i for i in ids if i.startswith(ref)]
    if not matches:
        raise JobNotFound(f"no job {ref!r} at {where} (it serves: {', '.join(ids) or 'nothing'})")
    if len(matches) > 1:
        raise AmbiguousJob(f"{ref!r} matches {len(matches)} jobs ({', '.join(matches[:8])}); give more of the id")
    return matches[0]


def resolve(
    ref: str,
    *,
    jobs_dir: str | None,
    channel: str = "auto",
    remote: str | None = None,
    token: str | None = None,
    ray: str | None = None,
    timeout: float = 5.0,
) -> Target:
    """Find the job ``ref`` names and open a client to it, or raise a typed error."""
    validate_job_id(ref)  # a prefix of a valid id is itself valid; '../x' is not
    if sum(x is not None for x in (remote, ray)) > 1:
        raise UsageError("use either --remote or --ray, not both")
    if remote is not None:
        if channel == "file":
            raise UsageError("--channel file needs the job's folder; it cannot be used with --remote")
        url = remote_url(remote)
        rows = remote_jobs(remote, token, timeout=timeout)
        job_id = match_ref(ref, [r["job_id"] for r in rows], url)
        client = JobClient(url=url, token=remote_token(token), job_id=job_id, channel="http", timeout=timeout)
        return Target(client=client, job_id=job_id, summary=next(r for r in rows if r["job_id"] == job_id))
    if ray is not None:
        return _resolve_ray(ref, address=ray, jobs_dir=jobs_dir, channel=channel, timeout=timeout)

    root = resolve_jobs_dir(jobs_dir)
    info = find_job(root, ref, probe=probe_endpoint)
    _require_controllable(info, channel)
    client = JobClient(info, channel=local_channel(info, channel), timeout=timeout)
    return Target(client=client, job_id=info.job_id, info=info)


def local_channel(info: JobInfo, channel: str) -> str:
    """The channel to use for a job found in the jobs directory.

    A loopback URL written on another host names *that* host's loopback: connecting to
    it here would reach whatever listens on the port on this machine and hand it the
    job's token. Such a job is reached through the file channel (the jobs directory is
    shared, or we would not see it), and ``--channel http`` is refused with the reason.
    """
    ep = info.endpoint or {}
    url = ep.get("url")
    foreign_loopback = isinstance(url, str) and is_loopback_url(url) and not same_host(ep)
    if not foreign_loopback:
        return channel
    if channel == "http":
        raise Unreachable(
            f"job {info.job_id} serves HTTP on the loopback of {ep.get('host') or 'another host'} ({url}); "
            "it cannot be reached from here. Use --channel file, or run the command on that host"
        )
    return "file"


def resolve_info(ref: str, *, jobs_dir: str | None) -> JobInfo:
    """Find a job in the jobs directory, judged, whatever its state (for ``status``)."""
    validate_job_id(ref)
    return find_job(resolve_jobs_dir(jobs_dir), ref, probe=probe_endpoint)


def _require_controllable(info: JobInfo, channel: str) -> None:
    """Say clearly why a job cannot take commands, before sending anything."""
    jid = info.job_id
    if info.liveness == Liveness.FINISHED:
        raise Unreachable(f"job {jid} has ended ({info.state}); there is nothing left to command")
    if info.liveness == Liveness.DEAD:
        raise Unreachable(
            f"job {jid} is dead ({info.evidence}); it cannot take commands. "
            "Remove its records with `forgather control cleanup`"
        )
    if info.endpoint is None and info.state == "starting":
        # The launcher runs and rank 0 will poll the inbox once its control plane is up
        # (the launcher cleared the inbox before starting the workers, so a command
        # dropped now is this run's): queue it there rather than make the user retry.
        if channel == "http":
            raise Unreachable(
                f"job {jid} is starting: rank 0 does not serve HTTP yet. Retry in a moment, or "
                "leave out --channel http to queue the command in its inbox"
            )
        return
    if info.endpoint is None and info.state == "requeued":
        sched = (info.job or {}).get("scheduler") or {}
        slurm_id = sched.get("slurm_job_id") if isinstance(sched, dict) else None
        raise Unreachable(
            f"job {jid} was requeued and waits in SLURM's queue; it takes commands once it runs again"
            + (f". To keep it from running again: scancel {slurm_id}" if slurm_id else "")
        )
    if info.endpoint is None:
        raise Unreachable(
            f"job {jid} has no endpoint.json (it has not started its control plane, or it ended); "
            f"check `forgather control status {jid}`"
        )
    if info.liveness == Liveness.STALE and channel != "file":
        log.warning("job %s looks stale (%s); trying anyway", jid, info.evidence)


# -- Ray, lazily -------------------------------------------------------------------------
def ray_module() -> Any:
    """``forgather_control.control.ray_listing``, or a UsageError naming the extra to install."""
    if importlib.util.find_spec("ray") is None:
        raise UsageError(f"--ray needs Ray, which is not installed; install it with {RAY_EXTRA_HINT}")
    try:
        return importlib.import_module("forgather_control.control.ray_listing")
    except ImportError as exc:
        if exc.name in ("forgather_control.control.ray_listing",) or (exc.name or "").split(".")[0] == "ray":
            raise UsageError(
                f"--ray is not available in this install ({exc}); install the Ray extra with {RAY_EXTRA_HINT}"
            ) from None
        raise


def ray_address(ray: str) -> str:
    """``--ray`` alone means RAY_ADDRESS if set, else the running cluster ("auto")."""
    if ray == "auto":
        return os.environ.get("RAY_ADDRESS") or "auto"
    return ray


def call_ray(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into ray_listing, turning a missing Ray into the clear usage error."""
    try:
        return fn(*args, **kwargs)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "ray":
            raise UsageError(f"--ray needs Ray ({exc}); install it with {RAY_EXTRA_HINT}") from None
        raise


def _resolve_ray(ref: str, *, address: str, jobs_dir: str | None, channel: str, timeout: float) -> Target:
    if channel == "file":
        raise UsageError("--channel file needs the job's folder on this machine; it cannot be used with --ray")
    mod = ray_module()
    summary = call_ray(
        mod.find_job,
        ref,
        address=ray_address(address),
        jobs_dir=str(resolve_jobs_dir(jobs_dir)) if jobs_dir else None,
        timeout=timeout,
    )
    if not isinstance(summary, dict) or not summary.get("job_id"):
        raise JobNotFound(f"no job {ref!r} found through Ray")
    if not summary.get("url"):
        node = summary.get("node") or "its node"
        raise Unreachable(
            f"job {summary['job_id']} on {node} has no reachable HTTP endpoint "
            f"({summary.get('state') or 'state unknown'}); control it from a machine that shares its jobs directory"
        )
    client = JobClient(url=summary["url"], token=summary.get("token"), job_id=summary["job_id"], channel="http", timeout=timeout)
    public = {k: v for k, v in summary.items() if k != "token"}  # the client holds it; nothing else may
    return Target(client=client, job_id=summary["job_id"], summary=public)
