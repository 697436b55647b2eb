"""Code that runs inside the training processes: the Controller, the rank-0 server,
the agreement across ranks, the trainer integrations and the worker bootstrap.

Importing this package imports neither torch nor fastapi, transformers nor lightning;
they load when a Controller starts serving or agreeing, or when
``LightningControlCallback`` is first asked for. A plain loop needs only
``Controller`` and, to continue a restarted run, ``resume_from``: the trainer
integrations (``TrainerControlCallback``, ``LightningControlCallback``) load when first
asked for, so a rank that runs neither does not carry them (issue 24).
"""

from typing import TYPE_CHECKING, Any

from .config import ControllerConfig
from .controller import NO_ACTIONS, Actions, Controller
from .resume import resume_from
from .signals import DEFAULT_SIGNALS

if TYPE_CHECKING:
    from .hf import TrainerControlCallback
    from .lightning import LightningControlCallback

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
    if name == "TrainerControlCallback":  # the HF / Forgather integration: on first use only
        from .hf import TrainerControlCallback

        return TrainerControlCallback
    if name == "LightningControlCallback":  # needs lightning: import on first use only
        from .lightning import LightningControlCallback

        return LightningControlCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
