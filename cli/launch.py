"""``forgather launch [OPTIONS] SCRIPT [ARGS]...``: torchrun with control injected.

Thin over :mod:`forgather_control.launcher`: options -> LaunchConfig -> plan -> (print it with
``--dry-run``, or) execute it. Everything wrong with the options or the script is
reported here, before a process starts. torchrun's options keep their names (both
``--nproc-per-node`` and ``--nproc_per_node`` work); ``-m`` means "SCRIPT is a module",
as for torchrun, and everything after SCRIPT belongs to the script.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from forgather_control.core.env import ENV_GUARDS, ENV_RESUME
from forgather_control.core.guards import GuardError, guards_from_env
from forgather_control.core.relaunch import resume_request
from forgather_control.launcher.config import DEFAULT_GRACE, LaunchConfig, LaunchError, no_control_after

log = logging.getLogger(__name__)

__all__ = ["launch"]


def _names(option: str) -> list[str]:
    """torchrun accepts ``--nproc-per-node`` and ``--nproc_per_node``; so do we."""
    return [option, option.replace("-", "_").replace("__", "--", 1)]


@click.command(
    "launch",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": ["-h", "--help"]},
)
@click.option(*_names("--nproc-per-node"), "nproc_per_node", metavar="N", help="Workers per node: a number, or auto|cpu|gpu|xpu (default 1).")
@click.option("--nnodes", metavar="N|MIN:MAX", help="Number of nodes (SLURM: from the allocation).")
@click.option(*_names("--node-rank"), "node_rank", type=int, help="This node's rank (SLURM: SLURM_NODEID).")
@click.option(*_names("--master-addr"), "master_addr", metavar="HOST", help="Node 0's address (SLURM: the first node of the allocation).")
@click.option(*_names("--master-port"), "master_port", type=int, metavar="PORT", help="Rendezvous port (SLURM: derived from the job id).")
@click.option(*_names("--rdzv-backend"), "rdzv_backend", metavar="NAME", help="torchrun rendezvous backend (static, c10d).")
@click.option(*_names("--rdzv-endpoint"), "rdzv_endpoint", metavar="HOST:PORT", help="torchrun rendezvous endpoint.")
@click.option(*_names("--rdzv-id"), "rdzv_id", metavar="ID", help="torchrun rendezvous id (also the job id when --job-id is not given).")
@click.option(*_names("--max-restarts"), "max_restarts", type=int, metavar="N", help="torchrun worker-group restarts before failing.")
@click.option("--standalone", is_flag=True, help="One node, rendezvous on a free local port (the default for one node).")
@click.option("-m", "--module", "as_module", is_flag=True, help="SCRIPT is a module name, run like `python -m`.")
@click.option("--job-id", metavar="ID", help="Job id (default: slurm-<id> under SLURM, else host-time-random).")
@click.option("--jobs-dir", type=click.Path(file_okay=False), help="Jobs directory (default: $FORGATHER_JOBS_DIR or ~/.forgather/jobs).")
@click.option("--control-host", metavar="HOST", help="Where rank 0 serves control HTTP (default 127.0.0.1).")
@click.option("--control-port", type=int, metavar="PORT", help="Rank 0's control port (default: an ephemeral one).")
@click.option("--no-control", is_flag=True, help="Run the script as is: no callback injected; a signal stops torchrun.")
@click.option(
    "--grace",
    type=float,
    default=DEFAULT_GRACE,
    show_default=True,
    metavar="SECONDS",
    help="Time the job has to save and stop after a signal, before torchrun is terminated.",
)
@click.option(
    "--stall-after",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Seconds without a step before the job counts as stalled (default: 20 times its recent step time, at least 5 minutes).",
)
@click.option(
    "--no-control-after",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Seconds of running with no control attached (no Controller started) before the launcher says so (default: $FORGATHER_NO_CONTROL_AFTER, else 300).",
)
@click.option(
    "--guard",
    "guards",
    multiple=True,
    metavar="RULE",
    help="A rule the job watches itself with, KIND:ACTION[,NAME=VALUE...] (repeatable): kinds nan, spike, slowdown, stall, straggler; "
    "actions alert, save, save-stop, stop, abort, pause. Starter: --guard nan:abort. Default: $FORGATHER_GUARDS, else none.",
)
@click.option(
    "--notify",
    "notify",
    multiple=True,
    metavar="URL",
    help="Send alerts to this apprise URL (repeatable). Every user on the host can read it in ps for the job's whole life, and it stays "
    "in your shell history (a warning says so): give a URL that holds a token with --notify-file instead.",
)
@click.option(
    "--notify-file",
    "notify_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Send alerts (stalled, failed, dead, finished, stopped, aborted, a guard fired, a straggler) to the sinks FILE names, one a line: "
    "an apprise URL (slack://, discord://, ntfy://, json://host:port/path, ...) or `| COMMAND`; # comments. FILE must be yours and "
    "private (chmod 600): the URLs are secrets, kept in the job's 0600 notify.json and never printed. Also $FORGATHER_NOTIFY (URLs).",
)
@click.option(
    "--notify-cmd",
    "notify_cmd",
    multiple=True,
    metavar="COMMAND",
    help="Run COMMAND for each alert, the alert as JSON on its stdin: one command line, split as a shell would and run without one "
    "(repeatable; also $FORGATHER_NOTIFY_CMD).",
)
@click.option(
    "--script-knobs",
    is_flag=True,
    help="A relaunch or requeue starts every knob (lr_scale, max_steps, a loop's own) at the script's value, "
    "not at the value the job last ran with (the default: what `forgather control set` changed carries over).",
)
@click.option("--requeue/--no-requeue", default=False, show_default=True, help="Under SLURM: after a signal's save, `scontrol requeue` the job (node 0, once).")
@click.option("--dry-run", is_flag=True, help="Print the plan (command and worker environment) and exit.")
@click.argument("script", metavar="SCRIPT")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED, metavar="[ARGS]...")
def launch(
    nproc_per_node: str | None,
    nnodes: str | None,
    node_rank: int | None,
    master_addr: str | None,
    master_port: int | None,
    rdzv_backend: str | None,
    rdzv_endpoint: str | None,
    rdzv_id: str | None,
    max_restarts: int | None,
    standalone: bool,
    as_module: bool,
    job_id: str | None,
    jobs_dir: str | None,
    control_host: str | None,
    control_port: int | None,
    no_control: bool,
    grace: float,
    stall_after: float | None,
    no_control_after: float | None,
    guards: tuple[str, ...],
    notify: tuple[str, ...],
    notify_file: str | None,
    notify_cmd: tuple[str, ...],
    script_knobs: bool,
    requeue: bool,
    dry_run: bool,
    script: str,
    script_args: tuple[str, ...],
) -> int:
    """Run SCRIPT on every node's workers under torchrun, controllable with `forgather control`.

    \b
    Examples:
      forgather launch --nproc-per-node 2 train.py --lr 1e-4
      forgather launch -m mypkg.train --epochs 3
      srun --ntasks-per-node=1 forgather launch --nproc-per-node 4 --requeue train.py
      forgather launch --dry-run --nproc-per-node 2 train.py

    A first SIGTERM/SIGINT/SIGUSR1/SIGUSR2 saves and stops the job on every rank
    (within --grace); a second one stops it at once. Before the job has control
    attached (rank 0 has not started a Controller yet) a signal stops the workers at
    once: there is nothing to save. The exit code is the job's.
    """
    urls, cmds = list(notify), list(_commands(notify_cmd))
    if notify:
        click.echo(_NOTIFY_ON_ARGV, err=True)
    if notify_file is not None:
        from forgather_control.core.alerts import read_sinks_file

        try:
            in_file = read_sinks_file(notify_file)
        except ValueError as exc:
            raise LaunchError(f"--notify-file: {exc}") from None
        urls += in_file[0]
        cmds += [tuple(c) for c in in_file[1]]
    config = LaunchConfig(
        script=None if as_module else script,
        module=script if as_module else None,
        script_args=tuple(script_args),
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        rdzv_backend=rdzv_backend,
        rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id,
        max_restarts=max_restarts,
        standalone=standalone,
        job_id=job_id,
        jobs_dir=jobs_dir,
        control_host=control_host,
        control_port=control_port,
        control=not no_control,
        grace=grace,
        stall_after=stall_after,
        no_control_after=no_control_after,
        guards=tuple(guards),
        notify=tuple(urls),
        notify_cmd=tuple(cmds),
        script_knobs=script_knobs,
        requeue=requeue,
        dry_run=dry_run,
        argv=_own_argv(),
        relaunch_argv=_relaunch_argv(),
    )
    return run_config(config, env=os.environ)


#: What a literal ``--notify URL`` costs, said on stderr (never the URL).
_NOTIFY_ON_ARGV = (
    "warning: --notify puts its URL on this launcher's command line, which every user on this host can read "
    "(ps, /proc/<pid>/cmdline) as long as the job runs, and in your shell history. A webhook URL is its own password: "
    "put it in a file only you can read (`chmod 600 FILE`, one URL a line) and launch with --notify-file FILE, or set $FORGATHER_NOTIFY."
)


def _commands(lines: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Each ``--notify-cmd`` as an argv: split as a shell would, never run by one."""
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(tuple(shlex.split(line)))
        except ValueError as exc:
            raise LaunchError(f"--notify-cmd {i} is not a command line ({exc})") from None
    return tuple(out)


def _own_argv() -> tuple[str, ...]:
    """``forgather launch ...`` as typed, for job.json (root options like -v dropped;
    ``--notify`` and ``--notify-cmd`` values hidden: secrets)."""
    from forgather_control.core.alerts import hide_notify

    raw = sys.argv[1:]
    if "launch" in raw:
        raw = raw[raw.index("launch") + 1 :]
    return hide_notify(("forgather", "launch", *raw))


#: Our options that name alert sinks: a relaunch record leaves them out (the sinks stay in
#: notify.json; a resume does not depend on the sinks file still being there).
_SINK_OPTIONS = ("--notify", "--notify-cmd", "--notify-file")


def _relaunch_argv() -> tuple[str, ...]:
    """``launch ...`` as typed, for relaunch.json: ``--notify URL``, ``--notify-cmd
    COMMAND`` and ``--notify-file FILE`` left out (a resume keeps the job's sinks), only among the launcher's own
    options: the script's arguments are its own, whatever their names."""
    raw = sys.argv[1:]
    if "launch" not in raw:
        return ()
    args = raw[raw.index("launch") + 1 :]
    flags = {name for p in launch.params if isinstance(p, click.Option) and p.is_flag for name in (*p.opts, *p.secondary_opts)}
    out, i = ["launch"], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            out += args[i:]  # SCRIPT and its arguments
            break
        if arg == "--":
            out += args[i:]
            break
        name = arg.split("=", 1)[0]
        takes_value = name not in flags and "=" not in arg
        taken = args[i : i + (2 if takes_value else 1)]
        if name not in _SINK_OPTIONS:
            out += taken
        i += len(taken)
    return tuple(out)


def run_config(config: LaunchConfig, *, env: Mapping[str, str]) -> int:
    """Check, plan, then print or execute. Raises LaunchError before anything starts."""
    from forgather_control.core import JobPaths, resolve_jobs_dir
    from forgather_control.launcher.plan import make_plan, python_executable, render_plan
    from forgather_control.launcher.records import read_previous

    check_target(config)
    if config.resume is None and env.get(ENV_RESUME):  # `forgather control resume` started this launch
        try:
            config = dataclasses.replace(config, resume=resume_request(env))
        except ValueError as exc:
            raise LaunchError(f"{exc}; it is set by `forgather control resume`: unset it") from None
    if config.control:
        config = dataclasses.replace(config, no_control_after=no_control_after(config, env))  # a bad env value: refused now
        if not config.guards and env.get(ENV_GUARDS):  # checked now, as --guard is, not in N workers
            try:
                guards_from_env(env)
            except GuardError as exc:
                raise LaunchError(f"{exc}; fix it or unset it") from None
            config = dataclasses.replace(config, guards=(env[ENV_GUARDS],))
    jobs_dir = str(resolve_jobs_dir(config.jobs_dir))
    plan = make_plan(config, env, python=python_executable(), jobs_dir=jobs_dir)
    previous = read_previous(
        JobPaths(Path(jobs_dir), plan.job_id),
        plan.placement,
        node_rank=plan.node_rank,
        script_knobs=config.script_knobs,
        roll_back=config.resume.roll_back if config.resume is not None else None,
    )
    plan = plan.with_history(
        restarts=previous.restarts,
        resume_from=previous.resume_from,
        resume_step=previous.resume_step,
        resume_gone=tuple(p.describe() for p in previous.gone),
        knobs=previous.knobs,
    )
    if plan.sinks is not None:
        from forgather_control.launcher.alerting import check_sinks

        check_sinks(plan.sinks)  # a URL apprise cannot send to: refused now, by its scheme
    if config.dry_run:
        click.echo(render_plan(plan), nl=False)
        return 0
    from forgather_control.launcher.run import execute

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    click.echo(_banner(plan, config), err=True)
    return execute(plan, base_env=env, argv=config.argv)


def _banner(plan: Any, config: LaunchConfig) -> str:
    """The job's id and the command that reaches it: an auto id is otherwise only found
    with ``list``."""
    where = "" if config.jobs_dir is None else f" --jobs-dir {shlex.quote(plan.jobs_dir)}"
    run = f", run {plan.restarts + 1}" + (f", resuming from {plan.resume_from}" if plan.resume_from else "") if plan.restarts else ""
    node = f" (node {plan.node_rank})" if plan.node_rank else ""
    return (
        f"forgather: job {plan.job_id}{node}{run}. From another terminal: "
        f"forgather control status {plan.job_id}{where}  (save, eval, stop, save-stop, abort the same way)"
    )


def check_target(config: LaunchConfig) -> None:
    """The script (or module) and torch must exist here, now, not in N workers later."""
    if importlib.util.find_spec("torch") is None:
        raise LaunchError(f"torch is not installed for {sys.executable}; forgather launch runs torchrun from it")
    if config.script is not None:
        path = Path(config.script)
        if not path.exists():
            raise LaunchError(f"script {config.script!r} not found (looked in {Path.cwd()}); check the path, or use -m for a module")
        if not path.is_file():
            raise LaunchError(f"script {config.script!r} is not a file")
        return
    module = config.module or ""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)  # what `python -m` (and so each worker) searches first
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise LaunchError(f"module {module!r} cannot be found in {cwd} or on sys.path: {exc}") from None
    finally:
        sys.path.remove(cwd)
    if spec is None:
        raise LaunchError(f"module {module!r} not found in {cwd} or on sys.path; is its package installed?")


if __name__ == "__main__":  # a harness until the root group registers `launch`
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    sys.exit(launch.main(prog_name="forgather launch", standalone_mode=True) or 0)
