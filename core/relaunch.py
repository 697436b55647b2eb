"""What relaunching a job needs, and what it must never carry: one rule, here.

Node 0's launcher writes ``relaunch.json`` (:class:`~.records.Relaunch`, 0600) at every
run's start; ``forgather control resume`` (client/resume.py) starts the job again from it.
The recorded environment is the launcher's, without

- **secrets**: a name holding one of :data:`SECRET_WORDS` (``HF_TOKEN``,
  ``WANDB_API_KEY``, ``AWS_SECRET_ACCESS_KEY``, ``DB_PASSWORD``, ...). A resume takes them
  from the environment it is run in, as the launch did: never from a file;
- **per-run variables** (:func:`is_per_run`): what a launcher, torchrun or SLURM set for
  one run (``FORGATHER_RESUME*``, ``FORGATHER_KNOBS``, ``FORGATHER_RESTARTS``, the
  launcher's pid, ``SLURM_*`` but ``SLURM_CONF``, ``SRUN_*``, ``PMI_*``, ``PMIX_*``,
  ``TORCHELASTIC_*``), and our token and
  alert sinks (``FORGATHER_TOKEN``, ``FORGATHER_NOTIFY*``: the sinks stay in notify.json).

The record is read back only from a file the reader's own uid wrote, never through a
link (:func:`read_relaunch`). Everything else here is pure: parsing what SLURM says of a
job (``scontrol show job -o``) and the sbatch command line that submits it again.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping, Sequence

from forgather_control.core.env import (
    ENV_JOB_ID,
    ENV_KNOBS,
    ENV_LAUNCHED,
    ENV_LAUNCHER_PID,
    ENV_NODE_RANK,
    ENV_NOTIFY,
    ENV_NOTIFY_CMD,
    ENV_RESTARTS,
    ENV_RESUME,
    ENV_TOKEN,
)
from forgather_control.core.files import RecordError, write_json_atomic
from forgather_control.core.jobs import JobPaths
from forgather_control.core.records import MAX_BATCH_SCRIPT, Relaunch, ResumeRequest, SlurmBatch, decode, encode, load, parse_json

__all__ = [
    "MAX_ENV_VALUE",
    "PER_RUN_NAMES",
    "PER_RUN_PREFIXES",
    "SECRET_WORDS",
    "batch_from",
    "is_per_run",
    "is_secret",
    "new_roll_back_id",
    "read_relaunch",
    "recordable_env",
    "relaunch_env",
    "resume_request",
    "sbatch_argv",
    "scontrol_fields",
    "time_limit_minutes",
    "write_relaunch",
]

#: A variable whose name holds one of these (any case) is a secret: never recorded.
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
#: Variables one run's launcher, torchrun or SLURM set, or ours that must not outlive a run.
PER_RUN_NAMES = frozenset(
    {ENV_TOKEN, ENV_NOTIFY, ENV_NOTIFY_CMD, ENV_KNOBS, ENV_RESTARTS, ENV_LAUNCHER_PID, ENV_NODE_RANK, ENV_LAUNCHED, ENV_JOB_ID, "SLURMD_NODENAME"}
)
#: ... and every name that starts so (``FORGATHER_RESUME``, ``_FROM``, ``_STEP``; what SLURM,
#: its job steps' process managers and torchrun set).
PER_RUN_PREFIXES = (ENV_RESUME, "SLURM_", "SRUN_", "PMI_", "PMIX_", "TORCHELASTIC_")
#: SLURM's variables a relaunch keeps: where the cluster's configuration is.
_KEPT = frozenset({"SLURM_CONF"})
#: A longer value is not recorded (nor is it anything a job needs from its environment).
MAX_ENV_VALUE = 32768


def is_secret(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def is_per_run(name: str) -> bool:
    if name in _KEPT:
        return False
    return name in PER_RUN_NAMES or name.startswith(PER_RUN_PREFIXES)


def recordable_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as ``relaunch.json`` records it: no secret, no per-run variable, no value
    longer than :data:`MAX_ENV_VALUE`."""
    return {k: v for k, v in sorted(env.items()) if not is_secret(k) and not is_per_run(k) and len(v) <= MAX_ENV_VALUE and "\x00" not in k + v}


def relaunch_env(recorded: Mapping[str, str], current: Mapping[str, str]) -> dict[str, str]:
    """The environment a relaunch starts with: the job's recorded one, plus the secrets of
    ``current`` (the resume's own: the launch took them from its environment too); never
    a per-run variable, our token or alert sinks."""
    env = {k: v for k, v in recorded.items() if not is_secret(k) and not is_per_run(k)}
    env.update({k: v for k, v in current.items() if is_secret(k) and not is_per_run(k)})
    return env


def read_relaunch(paths: JobPaths) -> Relaunch | None:
    """The job's relaunch record; None when it has none. RecordError when it is a link, not
    a record, or another user's (only the job's owner starts it again)."""
    record = load(paths.relaunch, Relaunch, owner=os.geteuid())
    if record is not None and record.job_id != paths.job_id:
        raise RecordError(f"{paths.relaunch}: names job {record.job_id!r}, not {paths.job_id!r}")
    return record


def write_relaunch(paths: JobPaths, record: Relaunch) -> None:
    write_json_atomic(paths.relaunch, encode(record), mode=0o600)


def resume_request(env: Mapping[str, str]) -> ResumeRequest | None:
    """``FORGATHER_RESUME``, checked; None when unset. ValueError naming what is wrong."""
    raw = env.get(ENV_RESUME, "").strip()
    if not raw:
        return None
    try:
        return decode(parse_json(raw, name=ENV_RESUME), ResumeRequest, name=ENV_RESUME)
    except RecordError as exc:
        raise ValueError(str(exc)) from None


def new_roll_back_id() -> str:
    return secrets.token_hex(8)


# -- SLURM ------------------------------------------------------------------------------
_FIELD = re.compile(r"(?:\A|\s)([A-Z][A-Za-z/:]*)=")


def scontrol_fields(text: str) -> dict[str, str]:
    """``scontrol show job -o ID``'s ``Key=value`` pairs (a value may hold spaces:
    ``Command=/path/script a b``; keys start upper case)."""
    out: dict[str, str] = {}
    marks = list(_FIELD.finditer(text.strip()))
    for here, after in zip(marks, [*marks[1:], None], strict=True):
        end = after.start() if after is not None else len(text.strip())
        out.setdefault(here.group(1), text.strip()[here.end() : end].strip())
    return out


def time_limit_minutes(text: str | None) -> int | None:
    """SLURM's ``[days-]hours:minutes:seconds`` (or ``minutes``) as whole minutes, rounded
    up; None for ``UNLIMITED``, ``Partition_Limit`` and anything else."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", (text or "").strip())
    if m is None:
        return int(text) if text and text.strip().isdigit() and int(text) > 0 else None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    return total or None


def _given(value: str | None) -> str | None:
    return None if value is None or value in ("", "(null)", "N/A", "None") else value


def _script_args(command: str, launcher_args: Sequence[str]) -> list[str]:
    """The batch script's arguments, from SLURM's ``Command`` (the script's path and its
    arguments joined by spaces: their quoting is lost). The longest tail of the launcher's
    own arguments that ends it is taken as it is (a template passes ``"$@"`` on), what
    comes before it split at spaces."""
    tail: list[str] = []
    for k in range(len(launcher_args), 0, -1):
        joined = " ".join(launcher_args[-k:])
        if command == joined or command.endswith(" " + joined):
            tail = list(launcher_args[-k:])
            command = command[: len(command) - len(joined)]
            break
    return command.split()[1:] + tail


def batch_from(slurm_job_id: str, script: str, show_job: str, *, launcher_args: Sequence[str] = ()) -> SlurmBatch:
    """The resubmission of a SLURM job: its batch script, and what ``scontrol show job -o``
    (``show_job``) says of its options. ValueError when the script cannot be recorded."""
    if not script.strip():
        raise ValueError("SLURM gave an empty batch script")
    if len(script) > MAX_BATCH_SCRIPT:
        raise ValueError(f"its batch script is {len(script)} characters, more than a relaunch record keeps ({MAX_BATCH_SCRIPT})")
    f = scontrol_fields(show_job)
    tasks = (f.get("NtasksPerN:B:S:C") or "").split(":")[0]
    nodes = f.get("NumNodes", "").split("-")[0]
    return SlurmBatch(
        slurm_job_id=slurm_job_id,
        script=script,
        script_args=_script_args(f.get("Command", ""), launcher_args),
        job_name=_given(f.get("JobName")),
        partition=_given(f.get("Partition")),
        nodes=int(nodes) if nodes.isdigit() and int(nodes) > 0 else None,
        ntasks_per_node=int(tasks) if tasks.isdigit() and int(tasks) > 0 else None,
        time_limit=time_limit_minutes(f.get("TimeLimit")),
        account=_given(f.get("Account")),
        qos=_given(f.get("QOS")),
        workdir=_given(f.get("WorkDir")),
        output=_given(f.get("StdOut")),
        error=_given(f.get("StdErr")),
        requeue={"1": True, "0": False}.get(f.get("Requeue", "")),
    )


def sbatch_argv(sbatch: str, batch: SlurmBatch, script_path: str) -> list[str]:
    """``sbatch --parsable [the recorded options] SCRIPT ARGS``: one argument per option,
    never a shell. The output is appended to (the earlier allocation's file, when its name
    held the job id, goes on)."""
    argv = [sbatch, "--parsable"]
    for option, value in (
        ("--job-name", batch.job_name),
        ("--partition", batch.partition),
        ("--nodes", batch.nodes),
        ("--ntasks-per-node", batch.ntasks_per_node),
        ("--time", batch.time_limit),
        ("--account", batch.account),
        ("--qos", batch.qos),
        ("--signal", batch.signal),
        ("--chdir", batch.workdir),
        ("--output", batch.output),
        ("--error", batch.error),
    ):
        if value is not None:
            argv.append(f"{option}={value}")
    if batch.requeue is not None:
        argv.append("--requeue" if batch.requeue else "--no-requeue")
    argv += ["--open-mode=append", script_path, *batch.script_args]
    return argv
