"""Code that starts jobs: ``forgather launch`` and the worker bootstrap.

Plan, then execute: a frozen :class:`LaunchConfig` -> :func:`make_plan` (pure: torchrun
argv and worker environment, with the environment found by :func:`detect`) ->
:func:`execute` (the only code that starts processes and handles signals).
Importing this package imports no torch.
"""

from .config import DEFAULT_GRACE, LaunchConfig, LaunchError
from .environments import ENVIRONMENTS, LocalEnvironment, Placement, SlurmEnvironment, TorchrunEnvironment, detect
from .nodelist import NodeListError, expand_nodelist
from .plan import Plan, child_env, make_plan, render_plan, torchrun_argv, worker_env

__all__ = [
    "DEFAULT_GRACE",
    "ENVIRONMENTS",
    "LaunchConfig",
    "LaunchError",
    "LocalEnvironment",
    "NodeListError",
    "Placement",
    "Plan",
    "SlurmEnvironment",
    "TorchrunEnvironment",
    "child_env",
    "detect",
    "execute",
    "expand_nodelist",
    "make_plan",
    "render_plan",
    "torchrun_argv",
    "worker_env",
]


def execute(*args, **kwargs):
    """Lazy re-export of :func:`forgather_control.launcher.run.execute` (it imports psutil)."""
    from .run import execute as _execute

    return _execute(*args, **kwargs)
