"""The environment a test's child process gets."""

from __future__ import annotations

import os
from pathlib import Path

from forgather_control.core.env import ENV_HEARTBEAT_INTERVAL, ENV_POLL_INTERVAL

#: Variables a surrounding torchrun or SLURM job would leak into ours.
_LEAKS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: A job a test starts writes its status.json every 0.2 s and reads its inbox every 0.1 s
#: (defaults 2 and 0.5): tests wait on both, and a person at a terminal does not.
CADENCE = {ENV_HEARTBEAT_INTERVAL: "0.2", ENV_POLL_INTERVAL: "0.1"}


def base_env(jobs_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without any job's identity (FORGATHER_JOB_ID, SLURM_*,
    TORCHELASTIC_*, RANK ...), unbuffered, one thread per process, a job's heartbeat and
    inbox at test speed (``CADENCE``), plus ``extra``."""
    env = dict(os.environ)
    env.pop("FORGATHER_JOB_ID", None)
    for k in list(env):
        if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in _LEAKS:
            env.pop(k)
    if jobs_dir is not None:
        env["FORGATHER_JOBS_DIR"] = str(jobs_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.update(CADENCE)
    env.update(extra)
    return env
