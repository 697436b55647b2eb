"""Options several ``forgather control`` verbs share, written once."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import click

from forgather_control.client.lookup import AUTO
from forgather_control.core.env import ENV_HTTP_TIMEOUT, ENV_JOBS_DIR, ENV_TOKEN
from forgather_control.core.errors import UsageError

#: Seconds to wait for one HTTP answer (``$FORGATHER_HTTP_TIMEOUT`` sets it), and for a
#: Ray cluster's nodes.
HTTP_TIMEOUT = 5.0
RAY_TIMEOUT = 15.0


def reach_timeout(ray: str | None) -> float:
    """Seconds a verb waits for the job's answer: a Ray cluster's nodes with ``--ray``,
    else one HTTP answer, ``$FORGATHER_HTTP_TIMEOUT`` when set."""
    if ray is not None:
        return RAY_TIMEOUT
    raw = os.environ.get(ENV_HTTP_TIMEOUT, "").strip()
    if not raw:
        return HTTP_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):  # also refuses nan
        raise UsageError(f"{ENV_HTTP_TIMEOUT}={raw!r} is not a number of seconds > 0; fix or unset it")
    return value


def jobs_dir(f: Callable) -> Callable:
    return click.option(
        "--jobs-dir",
        type=click.Path(file_okay=False),
        default=None,
        help=f"Jobs directory (default: ${ENV_JOBS_DIR}, else ~/.forgather/jobs).",
    )(f)


def as_json(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(f)


def remote(f: Callable) -> Callable:
    f = click.option(
        "--token",
        default=None,
        metavar="T",
        help=f"Bearer token for --remote (default: ${ENV_TOKEN}). Never printed.",
    )(f)
    return click.option(
        "--remote",
        default=None,
        metavar="HOST:PORT",
        help="Talk to the control server at HOST:PORT instead of reading a jobs directory.",
    )(f)


def ray(f: Callable) -> Callable:
    """``--ray`` (a flag) and ``--ray-address ADDRESS``, passed on as one ``ray`` value.

    A flag plus a separate address option, not one option with an optional value: with
    an optional value, ``status --ray JOB`` would read JOB as the address.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, ray: bool, ray_address: str | None, **kw: Any) -> Any:
        return f(*args, ray=ray_address or (AUTO if ray else None), **kw)

    wrapper = click.option(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="The Ray cluster to look across (host:port or ray://host:port); implies --ray.",
    )(wrapper)
    return click.option(
        "--ray",
        is_flag=True,
        help="Look across every node of a Ray cluster: $RAY_ADDRESS, else the one running here.",
    )(wrapper)


def channel(f: Callable) -> Callable:
    return click.option(
        "--channel",
        type=click.Choice(["auto", "http", "file"]),
        default="auto",
        show_default=True,
        help="How to reach the job: HTTP when it serves it, else its inbox/ folder (file).",
    )(f)


def where(f: Callable) -> Callable:
    """The three ways to find jobs: ``--jobs-dir``, ``--remote``/``--token``, ``--ray``."""
    return jobs_dir(remote(ray(f)))
