"""Where the launcher runs, and what that decides: nodes, node rank, rendezvous, job id.

Each environment is a class with ``detect(env)`` (Lightning Fabric's pattern), tried in
the fixed order of :data:`ENVIRONMENTS`; the first that detects wins. Everything reads
an explicit ``env`` mapping, never ``os.environ`` directly, so the tests can hand in a
SLURM allocation that does not exist and pin the resulting plan.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from forgather_control.core import InvalidJobId, default_job_id, validate_job_id
from forgather_control.core.records import Scheduler

from .config import LaunchConfig, LaunchError
from .nodelist import NodeListError, expand_nodelist

log = logging.getLogger(__name__)

__all__ = [
    "ENVIRONMENTS",
    "Environment",
    "LocalEnvironment",
    "Placement",
    "SlurmEnvironment",
    "TorchrunEnvironment",
    "detect",
    "slurm_master_port",
]


@dataclass(frozen=True)
class Placement:
    """This node's place in the job, as the environment and the options decide it."""

    environment: str  # "local" | "slurm"
    job_id: str
    nnodes: str  # torchrun's --nnodes: "N" or "MIN:MAX"
    node_rank: int | None  # None: the c10d rendezvous assigns it
    nproc_per_node: str
    master_addr: str | None = None
    master_port: int | None = None
    standalone: bool = False
    #: job.json's "scheduler" record (core.liveness.judge reads type and slurm_job_id)
    scheduler: Scheduler = field(default_factory=Scheduler)
    #: SLURM's restart count (requeues) for this run; 0 outside SLURM
    restart_count: int = 0
    #: the argv that requeues the job (node 0 under SLURM only); never a shell string
    requeue_argv: tuple[str, ...] | None = None


class Environment:
    """One kind of place the launcher can run in."""

    name: ClassVar[str] = "?"

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def place(self, config: LaunchConfig, *, auto_job_id: str | None = None) -> Placement:  # pragma: no cover
        raise NotImplementedError


class TorchrunEnvironment(Environment):
    """Already inside torchrun (or another launcher that sets RANK/WORLD_SIZE): starting
    torchrun again would nest process groups and rendezvous; refuse, with the way out."""

    name = "torchrun"

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        if env.get("TORCHELASTIC_RUN_ID"):
            return True
        return all(env.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR"))

    def place(self, config: LaunchConfig, *, auto_job_id: str | None = None) -> Placement:
        seen = ", ".join(f"{k}={self.env[k]}" for k in ("TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE") if k in self.env)
        raise LaunchError(
            f"forgather launch is already running inside torchrun ({seen}) and will not start torchrun "
            "inside it. Run the script directly here (the bootstrap is not needed: add the control "
            "callback, or use `python -m forgather_control.callback.bootstrap SCRIPT`), or call "
            "`forgather launch` from outside torchrun."
        )


class SlurmEnvironment(Environment):
    """Inside a SLURM allocation: one launcher per node (``srun --ntasks-per-node=1``).

    Nodes, node rank and the rendezvous host come from SLURM; the job id is
    ``slurm-<SLURM_JOB_ID>`` (arrays: ``slurm-<ARRAY_JOB_ID>_<TASK_ID>``) so every node
    and every requeued run of the job agree on it without talking to each other.
    """

    name = "slurm"

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        return bool(env.get("SLURM_JOB_ID"))

    def place(self, config: LaunchConfig, *, auto_job_id: str | None = None) -> Placement:
        env = self.env
        job = env["SLURM_JOB_ID"]
        in_step = "SLURM_STEP_ID" in env
        nodelist_var = "SLURM_STEP_NODELIST" if in_step and env.get("SLURM_STEP_NODELIST") else "SLURM_JOB_NODELIST"
        nodelist = env.get(nodelist_var, "")
        try:
            nodes = expand_nodelist(nodelist)
        except NodeListError as exc:
            raise LaunchError(f"cannot read SLURM's node list ({nodelist_var}={nodelist!r}): {exc}") from None
        slurm_nnodes = len(nodes)
        if not in_step and slurm_nnodes > 1:
            raise LaunchError(
                f"this is SLURM job {job}'s batch shell on {slurm_nnodes} nodes ({nodelist}), and a "
                "launcher here would start workers on one node only; run one launcher per node: "
                "`srun --ntasks-per-node=1 forgather launch ...` (see slurm/train.sbatch)"
            )
        tasks = env.get("SLURM_STEP_TASKS_PER_NODE") if in_step else None
        if tasks and any(n > 1 for n in _task_counts(tasks)):
            raise LaunchError(
                f"SLURM started several launchers per node (SLURM_STEP_TASKS_PER_NODE={tasks}); "
                "forgather launch starts the per-node workers itself: use "
                "`srun --ntasks-per-node=1 forgather launch --nproc-per-node N ...`"
            )
        if config.nnodes is not None and config.nnodes != str(slurm_nnodes):
            raise LaunchError(
                f"--nnodes {config.nnodes} disagrees with SLURM, which gave this step {slurm_nnodes} "
                f"node(s) ({nodelist_var}={nodelist}); drop --nnodes or change `sbatch --nodes`"
            )
        node_id = _int(env, "SLURM_NODEID", 0)
        if config.node_rank is not None and config.node_rank != node_id:
            raise LaunchError(f"--node-rank {config.node_rank} disagrees with SLURM_NODEID={node_id}; drop --node-rank under SLURM")
        if config.rdzv_backend or config.rdzv_endpoint or config.standalone:
            raise LaunchError(
                "under SLURM the launcher rendezvouses at the first node of the allocation; drop "
                "--rdzv-backend/--rdzv-endpoint/--standalone (or set --master-addr/--master-port)"
            )
        try:
            job_id = validate_job_id(config.job_id) if config.job_id else default_job_id(env)
        except InvalidJobId as exc:
            raise LaunchError(str(exc)) from None
        restart_count = _int(env, "SLURM_RESTART_COUNT", 0)
        # a job resubmitted by `forgather control resume` numbers its runs on from the job's
        # last one: every node of the new allocation, and each of its requeues, alike
        first_run = config.resume.run if config.resume is not None and config.resume.run is not None else 0
        scheduler = Scheduler(
            type="slurm",
            slurm_job_id=job,
            nodelist=nodelist,
            nodes=nodes,
            restart_count=restart_count,
            array_job_id=env.get("SLURM_ARRAY_JOB_ID") or None,
            array_task_id=env.get("SLURM_ARRAY_TASK_ID") or None,
            partition=env.get("SLURM_JOB_PARTITION") or None,
            cluster=env.get("SLURM_CLUSTER_NAME") or None,
            job_name=env.get("SLURM_JOB_NAME") or None,
        )
        return Placement(
            environment=self.name,
            job_id=job_id,
            nnodes=str(slurm_nnodes),
            node_rank=node_id,
            nproc_per_node=config.nproc_per_node or "1",
            master_addr=config.master_addr or nodes[0],
            master_port=config.master_port if config.master_port is not None else slurm_master_port(job),
            scheduler=scheduler,
            restart_count=first_run + restart_count,
            requeue_argv=("scontrol", "requeue", job) if config.requeue and node_id == 0 else None,
        )


class LocalEnvironment(Environment):
    """Anywhere else: one machine, or several started by hand with the same options."""

    name = "local"

    @classmethod
    def detect(cls, env: Mapping[str, str]) -> bool:
        return True

    def place(self, config: LaunchConfig, *, auto_job_id: str | None = None) -> Placement:
        nnodes = config.nnodes or "1"
        multi = nnodes != "1"
        c10d = config.rdzv_backend is not None and config.rdzv_backend != "static"
        if multi and not c10d:
            if config.node_rank is None:
                raise LaunchError(
                    f"--nnodes {nnodes} needs --node-rank on each machine (0 on the one that hosts "
                    "--master-addr), or --rdzv-backend c10d --rdzv-endpoint HOST:PORT"
                )
            if not config.master_addr:
                raise LaunchError(f"--nnodes {nnodes} needs --master-addr (the address of node 0, reachable from every node) and --master-port")
        if multi and not config.job_id and not config.rdzv_id:
            raise LaunchError(f"--nnodes {nnodes}: give every node the same --job-id, so they register one job (each node would otherwise make up its own)")
        if config.requeue:
            raise LaunchError("--requeue needs SLURM (SLURM_JOB_ID is not set here); drop --requeue")
        if config.job_id:
            job_id = config.job_id
        elif config.rdzv_id:
            try:
                job_id = validate_job_id(config.rdzv_id)
            except InvalidJobId:
                raise LaunchError(f"--rdzv-id {config.rdzv_id!r} cannot double as a job id; give --job-id") from None
        elif auto_job_id:
            job_id = auto_job_id
        else:
            job_id = default_job_id(self.env)
        standalone = config.standalone or (
            not multi and config.master_addr is None and config.master_port is None and config.rdzv_backend is None and config.rdzv_endpoint is None
        )
        return Placement(
            environment=self.name,
            job_id=job_id,
            nnodes=nnodes,
            node_rank=config.node_rank if config.node_rank is not None else (None if c10d else 0),
            nproc_per_node=config.nproc_per_node or "1",
            master_addr=config.master_addr,
            master_port=config.master_port,
            standalone=standalone,
            scheduler=Scheduler(type="local"),
        )


#: Tried in this order; the first whose detect() is true wins:
#: 1. already inside torchrun: refuse to nest (its variables would also fool the others);
#: 2. SLURM: the allocation decides nodes, ranks and the job id;
#: 3. local: always true, the fallback.
ENVIRONMENTS: tuple[type[Environment], ...] = (TorchrunEnvironment, SlurmEnvironment, LocalEnvironment)


def detect(env: Mapping[str, str]) -> Environment:
    """The environment the launcher runs in, per :data:`ENVIRONMENTS`."""
    for cls in ENVIRONMENTS:
        if cls.detect(env):
            log.debug("launch environment: %s", cls.name)
            return cls(env)
    raise AssertionError("LocalEnvironment always detects")  # pragma: no cover


def slurm_master_port(slurm_job_id: str) -> int:
    """A rendezvous port every node derives alike from the job id, in 20000-39999, so two
    jobs that share a node rarely collide and no node has to tell the others."""
    digits = re.sub(r"\D", "", slurm_job_id) or "0"
    return 20000 + int(digits[-9:]) % 20000


def _task_counts(spec: str) -> list[int]:
    """``2(x3),1`` -> [2, 1]: SLURM's tasks-per-node notation."""
    out = []
    for part in spec.split(","):
        m = re.match(r"\A(\d+)(?:\(x\d+\))?\Z", part.strip())
        if m:
            out.append(int(m.group(1)))
    return out


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(env.get(key, default))
    except (TypeError, ValueError):
        return default
