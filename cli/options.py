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
    """``--remote HOST:PORT`` and the job's token, passed on as one ``token`` value: from
    ``--token-file FILE`` (private, ``client.remote.read_token_file``), else a literal
    ``--token T`` (warned of: it is in this process's argv), else ``$FORGATHER_TOKEN``
    later (``client.remote.remote_token``). Both options at once is a usage error."""

    @functools.wraps(f)
    def wrapper(*args: Any, token: str | None, token_file: str | None, **kw: Any) -> Any:
        if token is not None and token_file is not None:
            raise click.UsageError("give the token once: --token-file FILE or --token, not both")
        if token:
            click.echo(_TOKEN_ON_ARGV, err=True)
        if token_file is not None:
            from forgather_control.client.remote import read_token_file

            try:
                token = read_token_file(token_file)
            except ValueError as exc:
                raise UsageError(f"--token-file: {exc}") from None
        return f(*args, token=token, **kw)

    wrapper = click.option(
        "--token-file",
        "token_file",
        type=click.Path(dir_okay=False),
        default=None,
        metavar="FILE",
        help=f"Read the bearer token for --remote from FILE, which must be yours and private (chmod 600); also ${ENV_TOKEN}. Never printed.",
    )(wrapper)
    wrapper = click.option(
        "--token",
        default=None,
        metavar="T",
        help="Bearer token for --remote. Every user on the host can read it in ps while the command runs, and it stays in your shell "
        "history (a warning says so): give it with --token-file instead.",
    )(wrapper)
    return click.option(
        "--remote",
        default=None,
        metavar="HOST:PORT",
        help="Talk to the control server at HOST:PORT instead of reading a jobs directory.",
    )(wrapper)


#: What a literal ``--token T`` costs, said on stderr (never the token).
_TOKEN_ON_ARGV = (
    "warning: --token puts the job's token on this command's command line, which every user on this host can read "
    "(ps, /proc/<pid>/cmdline) as long as the command runs, and in your shell history. The token commands the job: "
    f"put it in a file only you can read (`chmod 600 FILE`) and give --token-file FILE, or set ${ENV_TOKEN}."
)


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
    """The three ways to find jobs: ``--jobs-dir``, ``--remote`` (and its token), ``--ray``."""
    return jobs_dir(remote(ray(f)))
