"""The Ray driver's child interpreter (``python -m forgather_control.client.ray_child``):
the operations :func:`.ray_driver.run` may ask for, by name, and their functions."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from forgather_control.client import ray_driver, ray_listing, ray_logs

OPERATIONS: dict[str, Callable[..., Any]] = {"gather": ray_listing.gather_here, "stacks": ray_listing.stacks_here, "logs": ray_logs.logs_here}

if __name__ == "__main__":
    sys.exit(ray_driver.serve(OPERATIONS))
