"""ControllerConfig: options as given, else the launcher's environment, else defaults;
an unusable value is refused up front, naming the option or the variable."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest

from forgather_control.callback import Controller, ControllerConfig
from forgather_control.callback.config import ConfigError
from forgather_control.callback.signals import DEFAULT_SIGNALS
from forgather_control.core import InvalidJobId, UsageError
from forgather_control.core.env import (
    ENV_CHECK_INTERVAL,
    ENV_CONTROL_HOST,
    ENV_CONTROL_PORT,
    ENV_HEARTBEAT_INTERVAL,
    ENV_JOB_ID,
    ENV_JOBS_DIR,
    ENV_POLL_INTERVAL,
    ENV_RESTARTS,
    ENV_SIGNAL_REPEAT_WINDOW,
    ENV_TRACE_AGREEMENT,
)


def test_defaults_without_environment(tmp_path: Path) -> None:
    cfg = ControllerConfig.from_env({ENV_JOBS_DIR: str(tmp_path)}, job_id="j")
    assert (cfg.job_id, cfg.jobs_dir, cfg.host, cfg.port) == ("j", tmp_path, "127.0.0.1", 0)
    assert cfg.signals == DEFAULT_SIGNALS and cfg.signal_repeat_window == 1.0
    assert cfg.restarts is None and cfg.trace_dir is None and cfg.rank is None and cfg.world_size is None
    assert (cfg.enable_http, cfg.auth, cfg.cleanup_on_exit) == (True, True, True)
    assert (cfg.check_interval, cfg.heartbeat_interval, cfg.poll_interval, cfg.max_pending) == (None, 2.0, 0.5, 16)  # None: follows the cost


def test_environment_fills_what_is_not_given(tmp_path: Path) -> None:
    env = {
        ENV_JOB_ID: "from-env",
        ENV_JOBS_DIR: str(tmp_path),
        ENV_CONTROL_HOST: "127.0.0.2",
        ENV_CONTROL_PORT: "4242",
        ENV_SIGNAL_REPEAT_WINDOW: "0.25",
        ENV_RESTARTS: "3",
        ENV_TRACE_AGREEMENT: str(tmp_path / "trace"),
    }
    cfg = ControllerConfig.from_env(env)
    assert (cfg.job_id, cfg.jobs_dir, cfg.host, cfg.port) == ("from-env", tmp_path, "127.0.0.2", 4242)
    assert (cfg.signal_repeat_window, cfg.restarts, cfg.trace_dir) == (0.25, 3, str(tmp_path / "trace"))
    given = ControllerConfig.from_env(env, job_id="given", jobs_dir=tmp_path / "x", host="localhost", port=0, signal_repeat_window=2)
    assert (given.job_id, given.jobs_dir, given.host, given.port, given.signal_repeat_window) == ("given", tmp_path / "x", "localhost", 0, 2.0)


def test_the_cadences_come_from_the_environment_unless_given(tmp_path: Path) -> None:
    """A launch (or a test waiting on status.json) sets every rank's heartbeat, inbox poll
    and check interval without touching the script; 0 checks at every step."""
    env = {ENV_JOBS_DIR: str(tmp_path), ENV_HEARTBEAT_INTERVAL: "0.2", ENV_POLL_INTERVAL: "0.1", ENV_CHECK_INTERVAL: "0"}
    cfg = ControllerConfig.from_env(env, job_id="j")
    assert (cfg.heartbeat_interval, cfg.poll_interval, cfg.check_interval) == (0.2, 0.1, 0.0)
    given = ControllerConfig.from_env(env, job_id="j", heartbeat_interval=3, poll_interval=None, check_interval=0.5)
    assert (given.heartbeat_interval, given.poll_interval, given.check_interval) == (3.0, 0.1, 0.5)


def test_none_and_empty_mean_not_given(tmp_path: Path) -> None:
    env = {ENV_JOB_ID: "from-env", ENV_JOBS_DIR: str(tmp_path), ENV_CONTROL_PORT: "", ENV_RESTARTS: ""}
    cfg = ControllerConfig.from_env(env, job_id=None, host="", port=None, jobs_dir=None, signal_repeat_window=None)
    assert (cfg.job_id, cfg.host, cfg.port, cfg.restarts, cfg.jobs_dir) == ("from-env", "127.0.0.1", 0, None, tmp_path)
    assert ControllerConfig.from_env(env, signals=None).signals == ()


def test_job_id_defaults_from_slurm(tmp_path: Path) -> None:
    cfg = ControllerConfig.from_env({ENV_JOBS_DIR: str(tmp_path), "SLURM_JOB_ID": "77"})
    assert cfg.job_id == "slurm-77"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (ENV_CONTROL_PORT, "http", "is not a TCP port"),
        (ENV_CONTROL_PORT, "70000", "is not a TCP port"),
        (ENV_SIGNAL_REPEAT_WINDOW, "soon", "is not a number of seconds"),
        (ENV_SIGNAL_REPEAT_WINDOW, "-1", "is not a number of seconds"),
        (ENV_RESTARTS, "two", "is not a count of restarts"),
        (ENV_HEARTBEAT_INTERVAL, "0", "is not a number of seconds > 0"),
        (ENV_POLL_INTERVAL, "fast", "is not a number of seconds > 0"),
        (ENV_CHECK_INTERVAL, "-1", "is not a number of seconds >= 0"),
    ],
)
def test_bad_environment_names_the_variable(tmp_path: Path, name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ControllerConfig.from_env({ENV_JOBS_DIR: str(tmp_path), name: value}, job_id="j")
    assert f"{name}={value!r}" in str(exc.value) and expected in str(exc.value)
    assert isinstance(exc.value, UsageError) and isinstance(exc.value, ValueError)


def test_bad_job_id_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(InvalidJobId, match=ENV_JOB_ID):
        ControllerConfig.from_env({ENV_JOBS_DIR: str(tmp_path), ENV_JOB_ID: "../escape"})


def test_controller_refuses_a_bad_port_from_the_environment(jobs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CONTROL_PORT, "eighty")
    with pytest.raises(ConfigError, match=ENV_CONTROL_PORT):
        Controller(job_id="j", jobs_dir=jobs_dir)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("port", -1),
        ("port", "http"),
        ("check_interval", -0.5),
        ("poll_interval", 0),
        ("heartbeat_interval", "x"),
        ("max_pending", 0),
        ("world_size", 0),
        ("rank", -1),
        ("max_steps", -5),
        ("signals", "TERM"),
    ],
)
def test_bad_options_name_the_option(tmp_path: Path, option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        ControllerConfig.from_env({}, job_id="j", jobs_dir=tmp_path, **{option: value})


def test_options_as_strings_still_work(tmp_path: Path) -> None:
    cfg = ControllerConfig.from_env({}, job_id="j", jobs_dir=str(tmp_path), port="8080", check_interval="0.5", signals=[signal.SIGTERM])
    assert (cfg.port, cfg.check_interval, cfg.signals, cfg.jobs_dir) == (8080, 0.5, (signal.SIGTERM,), tmp_path)


def test_unknown_option_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="check_intervall"):
        ControllerConfig.from_env({}, job_id="j", jobs_dir=tmp_path, check_intervall=1)
    with pytest.raises(TypeError, match="restarts"):  # read from the environment only
        Controller(job_id="j", jobs_dir=tmp_path, restarts=1)


def test_frozen_and_replace_checks_again(tmp_path: Path) -> None:
    cfg = ControllerConfig(job_id="j", jobs_dir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]
    assert cfg.replace(port="81").port == 81
    with pytest.raises(ConfigError, match="port"):
        cfg.replace(port=65536)


def test_controller_takes_a_config(tmp_path: Path) -> None:
    cfg = ControllerConfig(job_id="cfg", jobs_dir=tmp_path, signals=(), enable_http=False, max_steps=9)
    ctl = Controller(config=cfg)
    assert ctl.config is cfg and (ctl.job_id, ctl.max_steps, ctl.signals) == ("cfg", 9, ())
    with pytest.raises(TypeError, match="not both"):
        Controller(config=cfg, port=1)


def test_every_option_is_documented() -> None:
    doc = ControllerConfig.__doc__ or ""
    for field in dataclasses.fields(ControllerConfig):
        assert f"``{field.name}``" in doc, field.name
