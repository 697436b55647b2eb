"""Code that runs inside the training processes: the Controller, the rank-0 server,
the agreement across ranks, the trainer integrations and the worker bootstrap.

Importing this package imports neither torch nor fastapi, transformers nor lightning;
they load when a Controller starts serving or agreeing, or when
``LightningControlCallback`` is first asked for. A plain loop needs only
``Controller`` and, to continue a restarted run, ``resume_from``.
"""

from typing import Any

from .config import ControllerConfig
from .controller import NO_ACTIONS, Actions, Controller
from .hf import TrainerControlCallback
from .resume import resume_from
from .signals import DEFAULT_SIGNALS

__all__ = [
    "DEFAULT_SIGNALS",
    "NO_ACTIONS",
    "Actions",
    "Controller",
    "ControllerConfig",
    "LightningControlCallback",
    "TrainerControlCallback",
    "resume_from",
]


def __getattr__(name: str) -> Any:
    if name == "LightningControlCallback":  # needs lightning: import on first use only
        from .lightning import LightningControlCallback

        return LightningControlCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
