"""A Controller's options, resolved once: what the caller gave, else the environment.

The launcher configures its workers through ``FORGATHER_*`` variables, and a user may
set the same ones by hand, so the environment is the second source of every option
that has one. It is read here and nowhere else in the Controller, at construction: a
value that cannot be right (a port that is not a number) stops the job before training
starts, with the variable named, rather than somewhere in the middle.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgather_control.core import default_job_id, resolve_jobs_dir, validate_job_id
from forgather_control.core.env import (
    ENV_CHECK_INTERVAL,
    ENV_CONTROL_HOST,
    ENV_CONTROL_PORT,
    ENV_GUARDS,
    ENV_HEARTBEAT_INTERVAL,
    ENV_JOB_ID,
    ENV_JOBS_DIR,
    ENV_POLL_INTERVAL,
    ENV_RESTARTS,
    ENV_SIGNAL_REPEAT_WINDOW,
    ENV_STALL_AFTER,
    ENV_TRACE_AGREEMENT,
)
from forgather_control.core.errors import InvalidJobId, UsageError

if TYPE_CHECKING:
    from forgather_control.core.records import GuardRule

from .signals import DEFAULT_REPEAT_WINDOW, DEFAULT_SIGNALS

__all__ = ["ConfigError", "ControllerConfig"]

DEFAULT_HOST = "127.0.0.1"


class ConfigError(UsageError, ValueError):
    """An option or environment variable with a value no Controller can use; the
    message names it and says what is expected."""


@dataclass(frozen=True, kw_only=True)
class ControllerConfig:
    """The options of one :class:`~forgather_control.callback.Controller`.

    - ``job_id``: the job's id; every rank and node of one job must agree on it. Default
      ``$FORGATHER_JOB_ID``, else a SLURM-derived id (``slurm-<id>``, the same on every
      node and after a requeue), else one made from the host name and the time.
    - ``jobs_dir``: where the job's folder lives; default ``$FORGATHER_JOBS_DIR``, else
      ``~/.forgather/jobs``. Shared storage for a job of several nodes.
    - ``host``: the address rank 0 serves HTTP on; default ``$FORGATHER_CONTROL_HOST``,
      else loopback.
    - ``port``: rank 0's HTTP port; default ``$FORGATHER_CONTROL_PORT``, else 0 (an
      ephemeral port, so parallel jobs on one host never collide).
    - ``enable_http``: False serves no HTTP; commands come through the file inbox only.
    - ``auth``: False drops the bearer token; an explicit opt-out, refused at start on a
      non-loopback host.
    - ``cleanup_on_exit``: remove this process's endpoint.json when the job ends.
    - ``stall_after``: seconds without a step after which the status says "stalled";
      default ``$FORGATHER_STALL_AFTER``, else it adapts (20 times the recent time per
      step, never below five minutes).
    - ``record_metrics``: keep the metric history (``metrics.json``, the curves of the web
      page), sampled by the I/O thread; False records none.
    - ``max_steps``: the last training step, when known; it is always a check, and it
      gives the status its ETA.
    - ``evaluates``: the loop has evaluation configured (it evaluates when
      ``act.evaluate`` says so): a ``save`` then evaluates first, unless sent with
      ``--no-eval`` (``actions.evaluates_first``). The trainer integrations set it from
      the trainer.
    - ``check_interval``: seconds between agreement checks across ranks: commands apply
      within about this long, at the cost of one small all-reduce per check. Default
      ``$FORGATHER_CHECK_INTERVAL``, else None: the interval follows the checks' measured
      cost (callback/schedule.py: within 0.25 s while that costs at most 0.2% of
      training, further apart only when it costs more, between 0.1 and 2 s).
    - ``heartbeat_interval``: seconds between status.json rewrites when nothing changed;
      a listing judges a job whose heartbeat stopped. Default
      ``$FORGATHER_HEARTBEAT_INTERVAL``, else 2.
    - ``poll_interval``: seconds between looks into the inbox; default
      ``$FORGATHER_POLL_INTERVAL``, else 0.5.
    - ``max_pending``: commands that may wait in the queue; more are refused (429).
    - ``signals``: the signals that mean "save and stop"; () handles none.
    - ``signal_repeat_window``: deliveries of a stop signal closer than this many seconds
      count once (SLURM and torchrun may both deliver one SIGTERM); default
      ``$FORGATHER_SIGNAL_REPEAT_WINDOW``, else 1.
    - ``rank``, ``world_size``: fixed rank and size, overriding what torch.distributed
      and torchrun's RANK / WORLD_SIZE say; None resolves them.
    - ``restarts``: which run of the job this is, from ``$FORGATHER_RESTARTS`` (set by the
      launcher); copied into status.json so a listing can tell this run's status from a
      previous run's. None outside the launcher.
    - ``trace_dir``: where each rank writes its agreement trace at close, from
      ``$FORGATHER_TRACE_AGREEMENT`` (tests, debugging); None writes none.
    - ``guards``: the rules the job watches itself with (``core.guards``: texts like
      ``"nan:abort"`` or parsed rules); default ``$FORGATHER_GUARDS``, else none. A rule
      that cannot be read stops the job at construction, naming it.
    """

    job_id: str
    jobs_dir: Path
    host: str = DEFAULT_HOST
    port: int = 0
    enable_http: bool = True
    auth: bool = True
    cleanup_on_exit: bool = True
    record_metrics: bool = True
    stall_after: float | None = None
    max_steps: int | None = None
    evaluates: bool = False
    check_interval: float | None = None
    heartbeat_interval: float = 2.0
    poll_interval: float = 0.5
    max_pending: int = 16
    signals: tuple[int, ...] = DEFAULT_SIGNALS
    signal_repeat_window: float = DEFAULT_REPEAT_WINDOW
    rank: int | None = None
    world_size: int | None = None
    restarts: int | None = None
    trace_dir: str | None = None
    guards: tuple[GuardRule, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.jobs_dir, Path):
            object.__setattr__(self, "jobs_dir", Path(self.jobs_dir))
        validate_job_id(self.job_id)  # InvalidJobId, a usage error and a ValueError too
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not a TCP port (0-65535)")
        for name in ("check_interval", "signal_repeat_window"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise ConfigError(f"{name} {getattr(self, name)!r} must be a number of seconds >= 0")
        if self.stall_after is not None and not self.stall_after > 0:
            raise ConfigError(f"stall_after {self.stall_after!r} must be a number of seconds > 0")
        for name in ("heartbeat_interval", "poll_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} {getattr(self, name)!r} must be a number of seconds > 0")
        if self.max_pending < 1:
            raise ConfigError(f"max_pending {self.max_pending} must be at least 1")
        for name, low in (("max_steps", 0), ("rank", 0), ("world_size", 1), ("restarts", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"{name} {value} must be at least {low}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ControllerConfig:
        """The options given in ``overrides`` (a None means "not given"), the rest from
        ``env`` (default ``os.environ``) or their defaults. Raises :class:`ConfigError`
        naming the option or variable whose value is unusable, and TypeError for an
        option that does not exist."""
        env = os.environ if env is None else env
        unknown = sorted(set(overrides) - _OPTIONS)
        if unknown:
            raise TypeError(f"unknown Controller option(s): {', '.join(unknown)}; the options are {', '.join(sorted(_OPTIONS))}")
        given = {name: value for name, value in overrides.items() if value is not None}
        for name in ("job_id", "jobs_dir", "host"):  # "" is not given either, as it never was
            if not given.get(name, True):
                del given[name]
        if "signals" in overrides and overrides["signals"] is None:
            given["signals"] = ()  # None: handle no signals (as before: "signals=None")
        options: dict[str, Any] = {}
        for name, value in given.items():
            options[name] = _coerce(name, value)

        if "job_id" not in options:
            raw = env.get(ENV_JOB_ID)
            if raw:
                try:
                    options["job_id"] = validate_job_id(raw)
                except InvalidJobId as exc:
                    raise InvalidJobId(f"{ENV_JOB_ID}: {exc}") from None
            else:
                options["job_id"] = default_job_id(dict(env))
        options["jobs_dir"] = resolve_jobs_dir(options.get("jobs_dir") or env.get(ENV_JOBS_DIR) or None)
        options.setdefault("host", env.get(ENV_CONTROL_HOST) or DEFAULT_HOST)
        if "port" not in options and env.get(ENV_CONTROL_PORT):
            options["port"] = _env_int(env, ENV_CONTROL_PORT, 0, 65535, "a TCP port (0-65535)")
        if "stall_after" not in options and env.get(ENV_STALL_AFTER):
            options["stall_after"] = _env_seconds(env, ENV_STALL_AFTER)
        if "signal_repeat_window" not in options and env.get(ENV_SIGNAL_REPEAT_WINDOW):
            options["signal_repeat_window"] = _env_seconds(env, ENV_SIGNAL_REPEAT_WINDOW)
        for name, var, zero in _ENV_INTERVALS:
            if name not in options and env.get(var):
                options[name] = _env_seconds(env, var, zero_ok=zero)
        if env.get(ENV_RESTARTS):
            options["restarts"] = _env_int(env, ENV_RESTARTS, 0, None, "a count of restarts (0, 1, ...)")
        options["trace_dir"] = env.get(ENV_TRACE_AGREEMENT) or None
        if "guards" not in options and env.get(ENV_GUARDS):
            from forgather_control.core.guards import GuardError, guards_from_env  # a job with guards

            try:
                options["guards"] = guards_from_env(env)
            except GuardError as exc:
                raise ConfigError(f"{exc}; fix or unset it") from None
        return cls(**options)

    def replace(self, **changes: Any) -> ControllerConfig:
        """A copy with ``changes`` applied and checked again."""
        return dataclasses.replace(self, **{name: _coerce(name, value) for name, value in changes.items()})


_OPTIONS = frozenset(f.name for f in dataclasses.fields(ControllerConfig)) - {"restarts", "trace_dir"}
_INTS = ("port", "max_steps", "max_pending", "rank", "world_size", "restarts")
_FLOATS = ("check_interval", "heartbeat_interval", "poll_interval", "signal_repeat_window", "stall_after")
#: The cadences a launch (or a test) may set for every rank through the environment:
#: (option, variable, whether 0 is allowed).
_ENV_INTERVALS = (
    ("check_interval", ENV_CHECK_INTERVAL, True),
    ("heartbeat_interval", ENV_HEARTBEAT_INTERVAL, False),
    ("poll_interval", ENV_POLL_INTERVAL, False),
)


def _coerce(name: str, value: Any) -> Any:
    """Options given as strings or numpy scalars work as they always did (``int(port)``);
    anything else that is not the right kind is refused, naming the option."""
    if value is None:
        return None
    try:
        if name in _INTS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if name in _FLOATS:
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if name == "evaluates" and not isinstance(value, bool):
        raise ConfigError(f"evaluates={value!r} must be True or False")
    if name == "guards":
        from forgather_control.core.guards import GuardError, parse_guards  # guards given: their rules are records
        from forgather_control.core.records import GuardRule

        try:
            return parse_guards([v.text if isinstance(v, GuardRule) else v for v in ([value] if isinstance(value, str) else value)])
        except GuardError as exc:
            raise ConfigError(f"guards: {exc}") from None
        except TypeError:
            raise ConfigError(f"guards={value!r} is not a list of guards (texts like 'nan:abort')") from None
    if name == "signals":
        try:
            return tuple(int(s) for s in value)
        except (TypeError, ValueError):
            raise ConfigError(f"signals={value!r} is not a sequence of signal numbers") from None
    return value


def _env_int(env: Mapping[str, str], name: str, low: int, high: int | None, what: str) -> int:
    raw = env[name]
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise ConfigError(f"{name}={raw!r} is not {what}; fix or unset it")
    return value


def _env_seconds(env: Mapping[str, str], name: str, *, zero_ok: bool = True) -> float:
    raw = env[name]
    try:
        value = float(raw.strip())
    except ValueError:
        value = -1.0
    if not (value >= 0 if zero_ok else value > 0):  # also refuses nan
        raise ConfigError(f"{name}={raw!r} is not a number of seconds {'>=' if zero_ok else '>'} 0; fix or unset it")
    return value
