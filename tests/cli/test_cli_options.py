"""How long a verb waits for a job's answer: 5 s for HTTP unless $FORGATHER_HTTP_TIMEOUT
says otherwise, 15 s across a Ray cluster; a value no one can wait refused, named."""

from __future__ import annotations

import pytest

from forgather_control.cli import options
from forgather_control.core.env import ENV_HTTP_TIMEOUT
from forgather_control.core.errors import UsageError


def test_the_http_timeout_is_5_s_unless_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_HTTP_TIMEOUT, raising=False)
    assert options.reach_timeout(None) == 5.0
    monkeypatch.setenv(ENV_HTTP_TIMEOUT, " 0.5 ")
    assert options.reach_timeout(None) == 0.5
    assert options.reach_timeout("auto") == 15.0  # a Ray cluster's nodes: not an HTTP answer


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "nan", "inf"])
def test_an_http_timeout_no_one_can_wait_is_a_usage_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(ENV_HTTP_TIMEOUT, raw)
    with pytest.raises(UsageError, match=f"{ENV_HTTP_TIMEOUT}='{raw}' is not a number of seconds > 0"):
        options.reach_timeout(None)
