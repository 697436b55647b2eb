"""Code that runs inside the training processes: the Controller, the rank-0 server,
the agreement across ranks, and the trainer integrations.

Importing this package imports neither torch nor fastapi; they load when a Controller
starts serving or agreeing.
"""

from .controller import NO_ACTIONS, Actions, Controller

__all__ = ["NO_ACTIONS", "Actions", "Controller"]
