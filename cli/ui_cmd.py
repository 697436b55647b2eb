"""``forgather control ui``: the web page, served until Ctrl-C.

A thin shell over :class:`forgather_control.ui.UiServer`: it starts the server, prints
one line (the address with a single-use login code that expires), opens a browser unless
``--no-browser``, and stops the server on Ctrl-C or SIGTERM.

No secret goes into the browser's argv, which every local user reads with ``ps``: the
browser opens a 0600 file in a 0700 folder (as Jupyter does) that sends it on with a
code of its own; the file goes with the server.
"""

from __future__ import annotations

import html
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from forgather_control.core.errors import ControlError

from . import options

DEFAULT_PORT = 8765


class CannotServe(ControlError):
    """The page server could not start (the port is taken, the address is not ours)."""


@click.command("ui")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help=f"Port to listen on (default: {DEFAULT_PORT}, else any free one; 0: any free one).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback lets other machines reach the page (the token guards it).",
)
@options.jobs_dir
@options.ray
@click.option("--no-browser", is_flag=True, help="Print the address only; do not open a browser.")
def ui_cmd(port: int | None, host: str, jobs_dir: str | None, ray: str | None, no_browser: bool) -> int:
    """A web page with every job, its curves and its buttons (Ctrl-C to stop)."""
    from forgather_control.ui import UiConfig, UiServer
    from forgather_control.ui.config import ENV_UI_TOKEN
    from forgather_control.ui.server import ServerStartError, quiet_repeated_warnings

    token = os.environ.get(ENV_UI_TOKEN) or None
    try:
        config = UiConfig(host=host, port=DEFAULT_PORT if port is None else port, jobs_dir=jobs_dir, ray=ray, **({"token": token} if token else {}))
    except ValueError as exc:
        raise click.UsageError(f"{exc} ({ENV_UI_TOKEN})" if token else str(exc)) from None
    if not config.loopback:
        click.echo(
            f"warning: listening on {host}: any machine that reaches this address can load the page with the token, "
            "and plain HTTP carries the token in the clear. The token is required on every request; prefer an SSH tunnel to 127.0.0.1.",
            err=True,
        )
    quiet_repeated_warnings()
    done = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        done.set()

    # From before the address is printed: whoever reads it may stop us at once.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    login_dir: Path | None = None
    try:
        try:
            server, _ = _start(UiServer, config)
        except ServerStartError as exc:
            if port is not None:
                raise CannotServe(f"cannot serve the page on {host}:{port}: {exc}; try another --port (0 picks a free one)") from None
            server, _ = _start(UiServer, replace(config, port=0))  # the default port is taken
        click.echo(server.code_url())
        click.echo("(the address logs one browser in, once, within 10 minutes)", err=True)
        if not no_browser and not done.is_set():
            login_dir = _open_browser(server.code_url())
        while not done.wait(0.5):
            if not server.alive:
                raise CannotServe("the page server stopped unexpectedly")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
        if login_dir is not None:
            shutil.rmtree(login_dir, ignore_errors=True)
    return 0


def _start(server_class: Any, config: Any) -> tuple[Any, str]:
    from forgather_control.ui.server import ServerStartError

    server = server_class(config)
    try:
        return server, server.start()
    except ServerStartError as exc:
        raise ServerStartError(str(exc).replace("control server", "page server")) from None


def _open_browser(url: str) -> Path:
    """Open a browser on a private file that sends it to ``url``; returns the file's
    folder (the caller removes it). The address is in the file, not in any argv."""
    import webbrowser

    folder = Path(tempfile.mkdtemp(prefix="forgather-ui-"))  # 0700
    page = folder / "login.html"
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        link = html.escape(url, quote=True)
        fh.write(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={link}"><a href="{link}">open the page</a>\n')
    try:
        webbrowser.open(page.as_uri(), new=2)
    except webbrowser.Error:
        pass  # no browser here: the printed address is enough
    return folder
