"""Code that runs inside the training processes: the Controller, the rank-0 server,
the agreement across ranks, and the trainer integrations.

Importing this package imports neither torch nor fastapi, transformers nor lightning;
they load when a Controller starts serving or agreeing, or when
``LightningControlCallback`` is first asked for.
"""

from typing import Any

from .config import ControllerConfig
from .controller import NO_ACTIONS, Actions, Controller
from .hf import TrainerControlCallback
from .signals import DEFAULT_SIGNALS

__all__ = [
    "DEFAULT_SIGNALS", "NO_ACTIONS", "Actions", "Controller", "ControllerConfig", "LightningControlCallback",
    "TrainerControlCallback",
]


def __getattr__(name: str) -> Any:
    if name == "LightningControlCallback":  # needs lightning: import on first use only
        from .lightning import LightningControlCallback

        return LightningControlCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
