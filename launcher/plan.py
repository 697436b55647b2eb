"""Pure planning: LaunchConfig + environment variables -> torchrun argv + worker env.

Nothing here starts a process, reads a file or looks at the clock, so ``--dry-run``
prints exactly what ``run()`` will execute and the tests pin it with golden files
(torchx/submitit style: plan, then execute).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from forgather_control.core.alerts import describe_sinks, sinks_from
from forgather_control.core.env import (
    ENV_CONTROL_HOST,
    ENV_CONTROL_PORT,
    ENV_DETACHED,
    ENV_GUARDS,
    ENV_JOB_ID,
    ENV_JOBS_DIR,
    ENV_KNOBS,
    ENV_LAUNCHED,
    ENV_LAUNCHER_PID,
    ENV_NODE_RANK,
    ENV_NOTIFY,
    ENV_NOTIFY_CMD,
    ENV_RESTARTS,
    ENV_RESUME,
    ENV_RESUME_FROM,
    ENV_RESUME_STEP,
    ENV_STALL_AFTER,
    ENV_TOKEN,
)
from forgather_control.core.guards import parse_guards
from forgather_control.core.knobs import describe_value
from forgather_control.core.records import AlertSinks, KnobCarry, encode

from .config import LaunchConfig, LaunchError
from .environments import Placement, detect

__all__ = [
    "BOOTSTRAP_MODULE",
    "Plan",
    "child_env",
    "make_plan",
    "render_plan",
    "torchrun_argv",
    "worker_env",
]

BOOTSTRAP_MODULE = "forgather_control.callback.bootstrap"

#: Words that mark a variable as secret in printed plans.
_SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY")


@dataclass(frozen=True)
class Plan:
    """Everything ``run()`` needs, decided up front."""

    config: LaunchConfig
    placement: Placement
    jobs_dir: str
    argv: tuple[str, ...]
    #: The variables forgather sets for the workers (on top of the launcher's own env).
    env: Mapping[str, str] = field(default_factory=dict)
    restarts: int = 0
    resume_from: str | None = None
    resume_step: int | None = None
    #: newer checkpoints of the job that resume passed over, each with why (gone, not the job's own)
    resume_gone: tuple[str, ...] = ()
    #: what the job's last run leaves its knobs at (FORGATHER_KNOBS; ``core.knobs.carry_from``)
    knobs: KnobCarry | None = None
    #: where alerts go (``--notify``, ``--notify-cmd``, ``--notify-file``, the environment): secrets, never shown
    sinks: AlertSinks | None = field(default=None, repr=False)

    @property
    def job_id(self) -> str:
        return self.placement.job_id

    @property
    def node_rank(self) -> int:
        return self.placement.node_rank or 0

    def with_history(
        self,
        *,
        restarts: int,
        resume_from: str | None,
        resume_step: int | None = None,
        resume_gone: tuple[str, ...] = (),
        knobs: KnobCarry | None = None,
    ) -> Plan:
        """The same plan for a restarted run: restart count, checkpoint and its step, and
        the knob values carried from the job's last run, in the env."""
        env = worker_env(self.config, self.placement, jobs_dir=self.jobs_dir, restarts=restarts, resume_from=resume_from, resume_step=resume_step, knobs=knobs)
        return replace(
            self, restarts=restarts, resume_from=resume_from, resume_step=resume_step if resume_from else None, resume_gone=resume_gone, knobs=knobs, env=env
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-able view (``--dry-run`` as data); secrets redacted."""
        p = self.placement
        return {
            "environment": p.environment,
            "job_id": p.job_id,
            "jobs_dir": self.jobs_dir,
            "nnodes": p.nnodes,
            "node_rank": p.node_rank,
            "nproc_per_node": p.nproc_per_node,
            "control": self.config.control,
            "grace": self.config.grace,
            "guards": guard_texts(self.config),
            "requeue": list(p.requeue_argv) if p.requeue_argv else None,
            "restarts": self.restarts,
            "resume_from": self.resume_from,
            "resume_gone": list(self.resume_gone),
            "scheduler": encode(p.scheduler),
            "argv": list(self.argv),
            "env": redact(self.env),
            **({"notify": describe_sinks(self.sinks)} if self.sinks is not None else {}),
            **({"knobs": encode(self.knobs)} if self.knobs is not None else {}),
            **({"script_knobs": True} if self.config.script_knobs else {}),
        }


def make_plan(
    config: LaunchConfig,
    env: Mapping[str, str],
    *,
    python: str,
    jobs_dir: str,
    auto_job_id: str | None = None,
    restarts: int | None = None,
    resume_from: str | None = None,
) -> Plan:
    """The plan for this node. ``env`` is the launcher's environment (SLURM's variables
    are read from it); ``jobs_dir`` is already resolved; ``restarts``/``resume_from``
    come from the job's previous run, when there was one (``records.previous_run``)."""
    placement = detect(env).place(config, auto_job_id=auto_job_id)
    if restarts is None:
        restarts = placement.restart_count
    argv = torchrun_argv(config, placement, python=python)
    wenv = worker_env(config, placement, jobs_dir=jobs_dir, restarts=restarts, resume_from=resume_from)
    try:
        sinks = sinks_from(config.notify, config.notify_cmd, env)
    except ValueError as exc:
        raise LaunchError(f"{exc}; fix it, or leave alerts out") from None
    return Plan(config=config, placement=placement, jobs_dir=jobs_dir, argv=argv, env=wenv, restarts=restarts, resume_from=resume_from, sinks=sinks)


def torchrun_argv(config: LaunchConfig, placement: Placement, *, python: str) -> tuple[str, ...]:
    """``python -m torch.distributed.run [torchrun options] -m <BOOTSTRAP_MODULE>
    SCRIPT ARGS...``; with ``--no-control`` the user's script runs directly."""
    argv: list[str] = [python, "-m", "torch.distributed.run"]
    if placement.standalone:
        argv += ["--standalone"]
    argv += ["--nnodes", placement.nnodes, "--nproc-per-node", placement.nproc_per_node]
    if placement.node_rank is not None and not placement.standalone:
        argv += ["--node-rank", str(placement.node_rank)]
    if placement.master_addr:
        argv += ["--master-addr", placement.master_addr]
    if placement.master_port is not None:
        argv += ["--master-port", str(placement.master_port)]
    if config.rdzv_backend:
        argv += ["--rdzv-backend", config.rdzv_backend]
    if config.rdzv_endpoint:
        argv += ["--rdzv-endpoint", config.rdzv_endpoint]
    if config.rdzv_id:
        argv += ["--rdzv-id", config.rdzv_id]
    if config.max_restarts is not None:
        argv += ["--max-restarts", str(config.max_restarts)]
    if config.control:
        argv += ["-m", BOOTSTRAP_MODULE]
        argv += ["-m", config.module] if config.module else [config.script or ""]
    elif config.module:
        argv += ["-m", config.module]
    else:
        argv += [config.script or ""]
    argv += list(config.script_args)
    return tuple(argv)


def worker_env(
    config: LaunchConfig,
    placement: Placement,
    *,
    jobs_dir: str,
    restarts: int = 0,
    resume_from: str | None = None,
    resume_step: int | None = None,
    knobs: KnobCarry | None = None,
) -> dict[str, str]:
    """The variables the launcher sets for torchrun and its workers.
    Never a token: rank 0 makes its own and keeps it in the 0600 endpoint file."""
    env = {
        ENV_JOB_ID: placement.job_id,
        ENV_JOBS_DIR: jobs_dir,
        ENV_NODE_RANK: str(placement.node_rank or 0),
        ENV_RESTARTS: str(restarts),
        ENV_LAUNCHED: "1" if config.control else "0",
    }
    if config.control_host:
        env[ENV_CONTROL_HOST] = config.control_host
    if config.control_port is not None:
        env[ENV_CONTROL_PORT] = str(config.control_port)
    if resume_from:
        env[ENV_RESUME_FROM] = resume_from
        if resume_step is not None:
            env[ENV_RESUME_STEP] = str(int(resume_step))
    if knobs is not None and config.control:
        env[ENV_KNOBS] = json.dumps(encode(knobs), separators=(",", ":"))
    if config.stall_after is not None:
        env[ENV_STALL_AFTER] = f"{config.stall_after:g}"
    if config.guards:
        env[ENV_GUARDS] = ";".join(guard_texts(config))
    return env


def guard_texts(config: LaunchConfig) -> list[str]:
    """The job's guards, each in its canonical spelling (``nan:abort,metric=loss``)."""
    return [rule.text for rule in parse_guards(config.guards)]


def child_env(plan: Plan, base: Mapping[str, str], *, launcher: str | None = None) -> dict[str, str]:
    """The environment torchrun starts with: the launcher's own, minus variables that
    would mislead the workers, plus the plan's. A resume path from an older run that no
    longer applies is removed rather than inherited. ``launcher`` ("PID:START_TIME")
    names the launcher its workers watch (known only once it runs: not in the plan)."""
    dropped = (ENV_RESUME, ENV_RESUME_FROM, ENV_RESUME_STEP, ENV_KNOBS, ENV_TOKEN, ENV_LAUNCHER_PID, ENV_NOTIFY, ENV_NOTIFY_CMD, ENV_DETACHED)
    env = {k: v for k, v in base.items() if k not in dropped}
    env.update(plan.env)
    if launcher:
        env[ENV_LAUNCHER_PID] = launcher
    return env


def redact(env: Mapping[str, str]) -> dict[str, str]:
    return {k: ("<hidden>" if any(m in k.upper() for m in _SECRET_MARKERS) else v) for k, v in sorted(env.items())}


def render_plan(plan: Plan) -> str:
    """The human ``--dry-run`` text (pinned by golden files). Secrets never appear."""
    p = plan.placement
    node = f"node {plan.node_rank} of {p.nnodes}" if p.node_rank is not None else f"{p.nnodes} node(s), rank by rendezvous"
    lines = [
        "forgather launch: plan (dry run, nothing started)",
        f"  environment:    {p.environment}",
        f"  job id:         {p.job_id}",
        f"  jobs dir:       {plan.jobs_dir}",
        f"  placement:      {node}, {p.nproc_per_node} process(es) per node",
        f"  control:        {'callback injected by ' + BOOTSTRAP_MODULE if plan.config.control else 'off (--no-control)'}",
        f"  on a signal:    {_on_signal(plan)}",
    ]
    if p.environment == "slurm":
        sched = p.scheduler
        lines.append(f"  slurm:          job {sched.slurm_job_id}, nodes {sched.nodelist} -> {' '.join(sched.nodes or [])}")
    if plan.restarts or plan.resume_from:
        lines.append(f"  restart:        {plan.restarts}, resume from {plan.resume_from or '(no checkpoint recorded)'}")
    for gone in plan.resume_gone:
        lines.append(f"  skipped:        {gone}")
    knobs = _knobs_line(plan)
    if knobs:
        lines.append(f"  knobs:          {knobs}")
    if plan.config.guards:
        lines.append(f"  guards:         {'; '.join(guard_texts(plan.config))}")
    if plan.sinks is not None:
        lines.append(f"  notify:         {describe_sinks(plan.sinks)}")
    lines.append("  command:")
    lines.append("    " + shlex.join(plan.argv))
    lines.append("  environment for the workers (added to the launcher's own):")
    for k, v in redact(plan.env).items():
        lines.append(f"    {k}={shlex.quote(v)}")
    return "\n".join(lines) + "\n"


def _knobs_line(plan: Plan) -> str | None:
    """Where a relaunch's knobs start: the job's last values, or the script's."""
    carried = plan.knobs.values if plan.knobs is not None else {}
    if plan.config.script_knobs:
        return "the script's values (--script-knobs)"
    if carried:
        values = ", ".join(f"{name}={describe_value(value)}" for name, value in carried.items())
        return f"the job's last: {values} (--script-knobs for the script's)"
    return None


def _on_signal(plan: Plan) -> str:
    grace = f"{plan.config.grace:g}s"
    if not plan.config.control:
        text = f"SIGTERM to torchrun, SIGKILL after {grace}"
    else:
        text = f"save_and_stop on every rank (an uncontrolled job: SIGTERM to torchrun at once), torchrun stopped after {grace}"
    if plan.placement.requeue_argv:
        text += "; then " + shlex.join(plan.placement.requeue_argv)
    return text


def python_executable() -> str:
    """The interpreter the workers use: the launcher's own (same venv, same packages)."""
    import sys

    return sys.executable or os.environ.get("PYTHON", "python3")
