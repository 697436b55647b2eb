"""``forgather control``: list, status, save, eval, stop, save-stop, abort, cleanup.

Thin over :mod:`forgather_control.control`. Fast by construction: it imports no torch, fastapi
or ray (only ``--ray`` imports ray), and the ``--json`` paths do not import rich
either; :mod:`forgather_control.cli.render` is imported only when a person reads the output.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from forgather_control.control.client import ControlError, HttpChannel, JobClient, Unreachable, UsageError, probe_endpoint
from forgather_control.control.commands import CLI_VERBS, Command
from forgather_control.control.files import read_json
from forgather_control.control.jobs import resolve_jobs_dir
from forgather_control.control.states import is_final
from forgather_control.control.listing import scan, useful_probe
from forgather_control.control.liveness import Liveness, judge

from . import targets
from .output import describe_entry, print_json

log = logging.getLogger(__name__)

DEFAULT_WAIT = 300.0
HTTP_TIMEOUT = 5.0
RAY_TIMEOUT = 15.0


# -- shared options --------------------------------------------------------------------
def _jobs_dir(f: Callable) -> Callable:
    return click.option(
        "--jobs-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Jobs directory (default: $FORGATHER_JOBS_DIR, else ~/.forgather/jobs).",
    )(f)


def _json(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(f)


def _remote(f: Callable) -> Callable:
    f = click.option(
        "--token",
        default=None,
        metavar="T",
        help="Bearer token for --remote (default: $FORGATHER_TOKEN). Never printed.",
    )(f)
    return click.option(
        "--remote",
        default=None,
        metavar="HOST:PORT",
        help="Talk to the control server at HOST:PORT instead of reading a jobs directory.",
    )(f)


def _ray(f: Callable) -> Callable:
    """``--ray`` (a flag) and ``--ray-address ADDRESS``, passed on as one ``ray`` value.

    A flag plus a separate address option, not one option with an optional value: with
    an optional value, ``status --ray JOB`` would read JOB as the address.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, ray: bool, ray_address: str | None, **kw: Any) -> Any:
        return f(*args, ray=ray_address or ("auto" if ray else None), **kw)

    wrapper = click.option(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="The Ray cluster to look across (host:port or ray://host:port); implies --ray.",
    )(wrapper)
    return click.option(
        "--ray",
        is_flag=True,
        help="Look across every node of a Ray cluster: $RAY_ADDRESS, else the one running here.",
    )(wrapper)


def _channel(f: Callable) -> Callable:
    return click.option(
        "--channel",
        type=click.Choice(["auto", "http", "file"]),
        default="auto",
        show_default=True,
        help="How to reach the job: HTTP when it serves it, else its inbox/ folder (file).",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def control() -> None:
    """Find, watch and command running training jobs.

    JOB is a job id or a unique prefix of one. Exit codes: 0 ok, 1 the command
    failed, 2 usage, 3 job not found, 4 job unreachable.
    """


# -- list ------------------------------------------------------------------------------
@control.command("list")
@click.option("--all", "all_", is_flag=True, help="Include jobs that have ended (finished, stopped, aborted, failed).")
@_json
@_jobs_dir
@_remote
@_ray
@click.option("--timeout", type=float, default=RAY_TIMEOUT, show_default=True, help="Seconds to wait for --remote / --ray answers.")
def list_cmd(all_: bool, as_json: bool, jobs_dir: str | None, remote: str | None, token: str | None, ray: str | None, timeout: float) -> int:
    """List jobs: running ones, and with --all those that ended."""
    if remote is not None and ray is not None:
        raise UsageError("use either --remote or --ray, not both")
    show_node = False
    where = ""
    if remote is not None:
        rows = targets.remote_jobs(remote, token, timeout=min(timeout, HTTP_TIMEOUT))
        where = targets.remote_url(remote)
    elif ray is not None:
        mod = targets.ray_module()
        res = targets.call_ray(
            mod.list_cluster,
            address=targets.ray_address(ray),
            jobs_dir=str(resolve_jobs_dir(jobs_dir)) if jobs_dir else None,
            include_finished=all_,
            timeout=timeout,
        )
        rows = list(res.jobs)
        for miss in res.missing_nodes or ():
            log.warning("node %s did not answer: %s", miss.get("node"), miss.get("reason"))
        show_node = True
        where = "the Ray cluster"
    else:
        root = resolve_jobs_dir(jobs_dir)
        rows = [info.summary() for info in scan(root, include_finished=all_, probe=probe_endpoint)]
        where = str(root)
        if not rows and not as_json and not root.is_dir():
            click.echo(
                f"no jobs: {root} does not exist yet (no job has used it). Jobs that use another "
                "directory are found with --jobs-dir or FORGATHER_JOBS_DIR"
            )
            return 0
    if as_json:
        print_json(rows)
        return 0
    from . import render

    render.print_jobs(rows, show_node=show_node, where=where, all_=all_)
    return 0


# -- status ----------------------------------------------------------------------------
@control.command("status")
@click.argument("job")
@_json
@click.option("--watch", is_flag=True, help="A live progress bar until the job ends (Ctrl-C to leave).")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between refreshes with --watch.")
@_jobs_dir
@_remote
@_ray
def status_cmd(job: str, as_json: bool, watch: bool, interval: float, jobs_dir: str | None, remote: str | None, token: str | None, ray: str | None) -> int:
    """Where a job is: state, step, speed, metrics, last checkpoint, recent commands."""
    if remote is not None or ray is not None:
        target = targets.resolve(job, jobs_dir=jobs_dir, remote=remote, token=token, ray=ray, timeout=HTTP_TIMEOUT if ray is None else RAY_TIMEOUT)
        client = target.client
        details = dict(target.summary or {"job_id": target.job_id})
    else:
        info = targets.resolve_info(job, jobs_dir=jobs_dir)
        details = info.details()
        client = JobClient(info, channel=targets.local_channel(info, "auto"), timeout=HTTP_TIMEOUT)
        target = targets.Target(client=client, job_id=info.job_id, info=info)
    with client:
        if watch and not as_json:
            return _watch(target, interval)
        _add_live(details, target)
    if as_json:
        print_json(details)
        return 0
    from . import render

    render.print_status(details)
    return 0


def _add_live(details: dict[str, Any], target: targets.Target) -> None:
    """Overlay what the job says right now over what its files say."""
    info, client = target.info, target.client
    if client.channel != "http" or (info is not None and info.liveness in (Liveness.DEAD, Liveness.FINISHED)):
        details["live"] = False
        return
    channel = HttpChannel(str(client.url), client.token, timeout=HTTP_TIMEOUT)
    try:
        code, live = channel.request("GET", f"/jobs/{target.job_id}/status")
    except Unreachable as exc:
        if info is None:
            raise
        details["live"] = False
        details["live_error"] = str(exc)
        return
    finally:
        channel.close()
    if code == 200 and isinstance(live, dict):
        details.update({k: v for k, v in live.items() if k != "job_id"})
        details["live"] = True
    else:
        details["live"] = False
        details["live_error"] = f"the server answered {code}"


def _watch(target: targets.Target, interval: float) -> int:
    from . import watch

    info = target.info
    last_judged = [time.monotonic()]

    def poll() -> tuple[dict[str, Any] | None, str | None]:
        try:
            st = target.client.status()
        except Unreachable as exc:
            if info is None:
                return None, f"lost contact with job {target.job_id}: {exc}"
            st = read_json(info.paths.status, quiet=True)
        if st is None:
            return None, None
        state = st.get("state")
        if is_final(state):
            return st, f"job {target.job_id} {state} at step {st.get('step')}"
        if info is not None and time.monotonic() - last_judged[0] > 2.0:
            last_judged[0] = time.monotonic()
            endpoint = read_json(info.paths.endpoint, quiet=True)
            verdict, evidence = judge(
                endpoint=endpoint,
                status=st,
                job=read_json(info.paths.job, quiet=True),
                nodes=info.nodes,
                probe=useful_probe(endpoint, probe_endpoint),
            )
            if verdict == Liveness.DEAD:
                return st, f"job {target.job_id} is dead ({evidence})"
        return st, None

    watch.watch(poll, job_id=target.job_id, interval=interval)
    return 0


# -- commands --------------------------------------------------------------------------
def _command_options(f: Callable) -> Callable:
    for deco in reversed(
        [
            click.argument("job"),
            click.option("--wait", is_flag=True, help="Wait until the command completes (or fails) and show its receipt."),
            click.option("--timeout", type=float, default=DEFAULT_WAIT, show_default=True, help="Seconds --wait waits."),
            _json,
            click.option("--key", default=None, metavar="K", help="Idempotency key: the same key twice queues once."),
            _channel,
            _jobs_dir,
            _remote,
            _ray,
        ]
    ):
        f = deco(f)
    return f


def _make_verb(verb: str, help_text: str) -> click.Command:
    @_command_options
    def cmd(**kw: Any) -> int:
        return send_command(verb, **kw)

    cmd.__doc__ = help_text
    return control.command(verb)(cmd)


for _verb, _help in (
    ("save", "Save a checkpoint at the next agreed step (after an evaluation when the trainer has one set up)."),
    ("eval", "Evaluate at the next agreed step."),
    ("stop", "Stop gracefully; the trainer's own end-of-training logic still runs."),
    ("save-stop", "Save a checkpoint, then stop."),
):
    _make_verb(_verb, _help)


@control.command("abort")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_command_options
def abort_cmd(yes: bool, **kw: Any) -> int:
    """Stop now and save nothing, here or at the end; the job ends 'aborted'."""
    return send_command("abort", confirm=not yes, **kw)


def send_command(
    verb: str,
    *,
    job: str,
    wait: bool,
    timeout: float,
    as_json: bool,
    key: str | None,
    channel: str,
    jobs_dir: str | None,
    remote: str | None,
    token: str | None,
    ray: str | None,
    confirm: bool = False,
) -> int:
    """Queue one command; with ``wait`` follow its ledger entry to a final state."""
    command = CLI_VERBS[verb]
    target = targets.resolve(
        job,
        jobs_dir=jobs_dir,
        channel=channel,
        remote=remote,
        token=token,
        ray=ray,
        timeout=HTTP_TIMEOUT if ray is None else RAY_TIMEOUT,
    )
    with target.client as client:
        if confirm:
            _confirm_abort(target.job_id)
        entry = client.send(command, key=key)
        if entry.get("state") == "rejected":
            _emit(entry, as_json)
            return 1
        if not wait:
            if as_json:
                print_json(entry)
            else:
                how = "dropped in its inbox" if client.channel == "file" else "queued"
                if target.info is not None and target.info.state == "starting":
                    how = "dropped in its inbox (the job is starting; rank 0 takes it once its control plane is up)"
                click.echo(
                    f"{command.value} {how} on job {target.job_id} as {entry.get('id')}; "
                    f"follow it with `forgather control status {target.job_id}` (or pass --wait)"
                )
            return 0
        final = _wait(client, target, command, entry, timeout, show_progress=not as_json)
    _emit(final, as_json)
    return 0 if final.get("state") == "completed" else 1


class StoppedWaiting(ControlError):
    """Ctrl-C during --wait: the command itself is not cancelled, and the user is told so."""

    exit_code = 130


def _confirm_abort(job_id: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError(
            f"refusing to abort job {job_id} without confirmation (stdin is not a terminal); pass --yes"
        )
    if not click.confirm(f"Abort job {job_id} now? It saves nothing and ends 'aborted'", default=False, err=True):
        raise click.exceptions.Exit(1)


def _wait(client: JobClient, target: targets.Target, command: Command, entry: dict[str, Any], timeout: float, *, show_progress: bool) -> dict[str, Any]:
    seen: list[dict[str, Any]] = [entry]

    def remember(e: dict[str, Any] | None) -> None:
        if e is not None:
            seen.append(e)

    spinner = None
    if show_progress and sys.stderr.isatty():
        from . import render

        spinner = render.console(stderr=True).status(f"waiting for {command.value} ({entry.get('id')}) on job {target.job_id}")

    def on_poll(e: dict[str, Any] | None) -> None:
        remember(e)
        if spinner is not None and e is not None:
            spinner.update(f"{command.value} ({e.get('id')}) on job {target.job_id}: {e.get('state')}"
                           + (f" at step {e['step']}" if e.get("step") is not None else ""))

    try:
        if spinner is not None:
            spinner.start()
        try:
            return client.wait(str(entry["id"]), timeout=timeout, on_poll=on_poll)
        except KeyboardInterrupt:
            raise StoppedWaiting(
                f"stopped waiting; {command.value} {entry.get('id')} stays {seen[-1].get('state')} on job "
                f"{target.job_id}: follow it with `forgather control status {target.job_id}`"
            ) from None
        except Unreachable:
            # A remote job's server goes away when a stop applies: that is the stop
            # working, not the job being unreachable.
            last = seen[-1]
            if target.info is None and command in (Command.GRACEFUL_STOP, Command.ABORT) and last.get("state") == "applied":
                log.warning("the job's server went away after %s applied at step %s: it has ended", command.value, last.get("step"))
                return {**last, "state": "completed", "result": {"step": last.get("step"), "final_state": "ended (server gone)"}}
            raise
    finally:
        if spinner is not None:
            spinner.stop()


def _emit(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(entry)
        return
    try:
        from . import render

        render.print_entry(entry)
    except ImportError:  # pragma: no cover - rich is a dependency; stay useful without it
        click.echo(describe_entry(entry))


# -- cleanup ---------------------------------------------------------------------------
@control.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_json
@_jobs_dir
def cleanup_cmd(dry_run: bool, yes: bool, as_json: bool, jobs_dir: str | None) -> int:
    """Delete the records of jobs judged dead or finished (never alive, stale or unknown)."""
    from . import cleanup

    root = resolve_jobs_dir(jobs_dir)
    cands = cleanup.candidates(root)
    rows = [c.summary() for c in cands]
    if not rows:
        if as_json:
            print_json({"dry_run": dry_run, "candidates": [], "deleted": [], "kept": []})
        else:
            click.echo(f"nothing to clean up in {root}")
        return 0
    if dry_run or not (as_json or yes):
        if as_json:
            if dry_run:
                print_json({"dry_run": True, "candidates": rows, "deleted": [], "kept": []})
                return 0
        else:
            from . import render

            render.print_cleanup(rows, title=f"{'would delete' if dry_run else 'to delete'} in {root}")
            if dry_run:
                return 0
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete {len(rows)} job record(s) without confirmation (stdin is not a terminal); pass --yes")
        if not click.confirm(f"Delete these {len(rows)} job record(s)?", default=False, err=True):
            raise click.exceptions.Exit(1)
    outcomes = [cleanup.delete_job(root, c.job_id) for c in cands]
    deleted = [o.job_id for o in outcomes if o.deleted]
    kept = [{"job_id": o.job_id, "reason": o.reason} for o in outcomes if not o.deleted]
    if as_json:
        print_json({"dry_run": False, "candidates": rows, "deleted": deleted, "kept": kept})
    else:
        click.echo(f"deleted {len(deleted)} job record(s) from {root}")
        for k in kept:
            click.echo(f"kept {k['job_id']}: {k['reason']}")
    return 0 if not any(o.error for o in outcomes) else 1
