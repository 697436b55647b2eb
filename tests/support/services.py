"""Clusters a test needs: skipped locally when missing, a failure under CI."""

from __future__ import annotations

import os

import pytest

#: Under CI (``.ci/run`` sets CI=true) every service must be there.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(name: str, available: bool, why: str) -> None:
    """Skip locally when a service is missing; fail under CI, where it must be there."""
    if available:
        return
    msg = f"{name} is not available: {why}"
    if CI:
        pytest.fail(msg + " (CI=true: .ci/run must start it)")
    pytest.skip(msg)
