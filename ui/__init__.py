"""``forgather control ui``: every job on one web page, with its curves and its buttons.

A local web app (FastAPI and uvicorn, guarded like the job server) over the same library
calls as the command line: :func:`~forgather_control.client.lookup.list_jobs` for the
jobs view, :func:`~forgather_control.client.lookup.open_job` and its
:class:`~forgather_control.client.handle.JobHandle` for a job's details, metric history and
commands. Used from Python as uvicorn is::

    from forgather_control.ui import UiConfig, UiServer

    server = UiServer(UiConfig(jobs_dir="~/.forgather/jobs"))
    print(server.start())   # http://127.0.0.1:PORT/?token=...
    ...
    server.stop()

Modules: :mod:`.config` (what to serve), :mod:`.auth` (token, cookies, CSRF, Host),
:mod:`.feed` (the jobs view's rows and sparklines), :mod:`.jobview` (one job: details,
history, commands), :mod:`.prometheus` (``GET /metrics``), :mod:`.app` (the routes),
:mod:`.server` (uvicorn in a thread). The page itself is static files in ``static/``:
hand-written modules, and uPlot for the charts (``static/vendor/uplot``).
"""

from __future__ import annotations

from .config import UiConfig
from .server import UiServer

__all__ = ["UiConfig", "UiServer"]
