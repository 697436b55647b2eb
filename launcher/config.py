"""What the user asked for, frozen: the input of the pure planning functions.

``LaunchConfig`` holds the options exactly as given (None = not given), so the plan can
tell "the user chose 1 node" from "nobody said" and let the environment (SLURM) fill in
only what was left open. It validates what can be checked without the environment;
everything it refuses, it refuses before any process starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from forgather_control.core.env import ENV_NO_CONTROL_AFTER
from forgather_control.core.errors import UsageError
from forgather_control.core.guards import GuardError, parse_guards
from forgather_control.core.records import ResumeRequest

__all__ = ["DEFAULT_GRACE", "DEFAULT_NO_CONTROL_AFTER", "LaunchConfig", "LaunchError", "no_control_after"]

#: Seconds between the first stop signal and stopping torchrun. SLURM's template sends
#: its signal 90 s before the end and KillWait adds 30 s by default, so 60 s of saving
#: fits with room to spare.
DEFAULT_GRACE = 60.0
#: Seconds of workers running with no control attached before the launcher says so. A
#: big model loads for minutes before its first step; the words say "yet" and clear
#: themselves when rank 0 publishes, so an early warning misleads nobody for long.
DEFAULT_NO_CONTROL_AFTER = 300.0

_NPROC_RE = re.compile(r"\A(?:[1-9][0-9]*|auto|cpu|gpu|xpu)\Z")
_NNODES_RE = re.compile(r"\A[1-9][0-9]*(?::[1-9][0-9]*)?\Z")
_MODULE_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class LaunchError(UsageError):
    """A launch that cannot start; the message says what was set and what to do
    (exit code 2, like any usage error)."""


@dataclass(frozen=True)
class LaunchConfig:
    """One ``forgather launch`` invocation. Options mirror the command line."""

    script: str | None = None
    module: str | None = None
    script_args: tuple[str, ...] = ()
    # torchrun's options, passed through (None: not given)
    nproc_per_node: str | None = None
    nnodes: str | None = None
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_backend: str | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    max_restarts: int | None = None
    standalone: bool = False
    # ours
    job_id: str | None = None
    jobs_dir: str | None = None
    control_host: str | None = None
    control_port: int | None = None
    control: bool = True
    grace: float = DEFAULT_GRACE
    #: seconds without a step before the job counts as stalled (None: it adapts)
    stall_after: float | None = None
    #: seconds before "no control attached yet" is said (None: $FORGATHER_NO_CONTROL_AFTER, else the default)
    no_control_after: float | None = None
    requeue: bool = False
    dry_run: bool = False
    #: where alerts go: apprise URLs (``--notify``, ``--notify-file``'s; secrets: kept in the
    #: job's 0600 notify.json, never shown), added to ``$FORGATHER_NOTIFY``'s
    notify: tuple[str, ...] = field(default=(), repr=False)
    #: commands (argv, no shell) that get each alert as JSON on stdin (``--notify-cmd``,
    #: ``--notify-file``'s ``| COMMAND`` lines)
    notify_cmd: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    #: ``--guard`` rules as typed (core.guards); checked here, passed as FORGATHER_GUARDS
    guards: tuple[str, ...] = ()
    #: ``--script-knobs``: a relaunch starts every knob at the script's value, not at the
    #: job's last (no value is carried in FORGATHER_KNOBS)
    script_knobs: bool = False
    #: The launcher's own command line, recorded in job.json.
    argv: tuple[str, ...] = field(default=(), compare=False)
    #: ``launch`` and its arguments as typed, ``--notify``/``--notify-cmd``/``--notify-file`` left out: what
    #: relaunch.json records for ``forgather control resume`` (none: no record, a launch from Python)
    relaunch_argv: tuple[str, ...] = field(default=(), compare=False)
    #: what ``forgather control resume`` asked of this launch (``FORGATHER_RESUME``): the job
    #: id when none is given, a SLURM resubmission's first run, a roll back
    resume: ResumeRequest | None = None

    def __post_init__(self) -> None:
        if isinstance(self.notify, str) or any(isinstance(c, str) for c in self.notify_cmd):
            raise LaunchError("notify= takes a list of URLs and notify_cmd= a list of commands, each a list of arguments (no shell)")
        object.__setattr__(self, "notify", tuple(self.notify))
        object.__setattr__(self, "notify_cmd", tuple(tuple(c) for c in self.notify_cmd))
        if self.resume is not None and self.job_id is None:
            object.__setattr__(self, "job_id", self.resume.job_id)  # a launch that named none made its id up
        self.validate()

    @property
    def target(self) -> str:
        """What runs, for messages: the script path or ``-m module``."""
        return self.script if self.script is not None else f"-m {self.module}"

    def validate(self) -> None:
        """Refuse what no environment can fix. Raises LaunchError with a hint."""
        if (self.script is None) == (self.module is None):
            raise LaunchError("give exactly one of SCRIPT or -m MODULE (e.g. `forgather launch train.py --lr 1e-4`)")
        if self.module is not None and not _MODULE_RE.match(self.module):
            raise LaunchError(f"-m {self.module!r} is not a Python module name (e.g. `-m mypkg.train`)")
        if self.nproc_per_node is not None and not _NPROC_RE.match(str(self.nproc_per_node)):
            raise LaunchError(f"--nproc-per-node {self.nproc_per_node!r} is not valid; use a positive number or auto|cpu|gpu|xpu")
        if self.nnodes is not None and not _NNODES_RE.match(str(self.nnodes)):
            raise LaunchError(f"--nnodes {self.nnodes!r} is not valid; use N or MIN:MAX (e.g. 2 or 1:4)")
        if self.nnodes is not None and ":" in self.nnodes:
            lo, hi = (int(x) for x in self.nnodes.split(":"))
            if lo > hi:
                raise LaunchError(f"--nnodes {self.nnodes!r}: MIN is larger than MAX")
        if self.node_rank is not None:
            if self.node_rank < 0:
                raise LaunchError(f"--node-rank {self.node_rank} is negative")
            n = self.fixed_nnodes
            if n is not None and self.node_rank >= n:
                raise LaunchError(f"--node-rank {self.node_rank} is not below --nnodes {self.nnodes}; node ranks run 0..{n - 1}")
        for name, port in (("--master-port", self.master_port), ("--control-port", self.control_port)):
            if port is not None and not 0 <= port <= 65535:
                raise LaunchError(f"{name} {port} is not a TCP port (0-65535)")
        if self.max_restarts is not None and self.max_restarts < 0:
            raise LaunchError(f"--max-restarts {self.max_restarts} is negative")
        if not (self.grace > 0):
            raise LaunchError(f"--grace {self.grace} must be a positive number of seconds")
        if self.stall_after is not None and not (self.stall_after > 0):
            raise LaunchError(f"--stall-after {self.stall_after} must be a positive number of seconds (leave it out to let it adapt to the job)")
        if self.no_control_after is not None and not (0 < self.no_control_after < math.inf):
            raise LaunchError(f"--no-control-after {self.no_control_after} must be a positive number of seconds")
        if self.no_control_after is not None and not self.control:
            raise LaunchError("--no-control-after has no effect with --no-control (nothing is attached to wait for); drop one of them")
        if self.guards:
            if not self.control:
                raise LaunchError("--guard needs control, but --no-control is set; drop one of them")
            try:
                parse_guards(self.guards)
            except GuardError as exc:
                raise LaunchError(f"--guard: {exc}") from None
        if self.script_knobs and not self.control:
            raise LaunchError("--script-knobs needs control (knobs are the Controller's), but --no-control is set; drop one of them")
        if self.standalone and (self.fixed_nnodes or 1) > 1:
            raise LaunchError(f"--standalone runs one node, but --nnodes is {self.nnodes}; drop one of them")
        if self.standalone and (self.rdzv_endpoint or self.master_addr or self.master_port is not None):
            raise LaunchError("--standalone picks its own rendezvous; drop --rdzv-endpoint/--master-addr/--master-port")
        if self.resume is not None and self.job_id != self.resume.job_id:
            raise LaunchError(f"--job-id {self.job_id} is not the job being resumed ({self.resume.job_id}, FORGATHER_RESUME); drop one of them")
        if self.job_id is not None:
            from forgather_control.core import InvalidJobId, validate_job_id

            try:
                validate_job_id(self.job_id)
            except InvalidJobId as exc:
                raise LaunchError(f"--job-id: {exc}") from None

    @property
    def fixed_nnodes(self) -> int | None:
        """--nnodes as one number, or its maximum for MIN:MAX; None when not given."""
        if self.nnodes is None:
            return None
        return int(str(self.nnodes).split(":")[-1])


def no_control_after(config: LaunchConfig, env: Mapping[str, str]) -> float:
    """Seconds before the launcher says that no control is attached yet: the option,
    else ``$FORGATHER_NO_CONTROL_AFTER``, else :data:`DEFAULT_NO_CONTROL_AFTER`. A bad
    value in the environment is refused before anything starts."""
    if config.no_control_after is not None:
        return config.no_control_after
    raw = env.get(ENV_NO_CONTROL_AFTER, "").strip()
    if not raw:
        return DEFAULT_NO_CONTROL_AFTER
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise LaunchError(f"{ENV_NO_CONTROL_AFTER}={raw!r} is not a positive number of seconds; fix it or unset it (default {DEFAULT_NO_CONTROL_AFTER:g})")
    return value
