"""Rank 0's ways in and out: the HTTP server, the I/O round and endpoint.json.

A client finds the job through endpoint.json (URL, token, which process serves),
sends commands over HTTP or drops them in the inbox, and reads status.json. All of it
runs on rank 0 only, off the training thread: HTTP in its server thread, the I/O round
(status.json, heartbeat, inbox: :mod:`.publisher`) in the rank's one control thread
(:mod:`forgather_control.core.rankloop`). Nothing here may stop training: a part
that cannot start is recorded in ``control_error`` (and so in status.json), and the
rest carries on without it; the file channel alone is enough to command a job.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from forgather_control.core import PROTOCOL, JobPaths, Ledger, LedgerError, is_loopback_host, rankloop, write_json_atomic
from forgather_control.core.files import remove_quietly
from forgather_control.core.records import Endpoint, Identity, Status, encode, load_or_none

from .history import HistoryRecorder
from .publisher import Publisher

if TYPE_CHECKING:  # the server thread imports uvicorn: only when HTTP is served
    from forgather_control.serving.thread import ServerThread

    from .server import Followed

log = logging.getLogger(__name__)

__all__ = ["ControlPlane"]


class ControlPlane:
    """The serving half of one job's control, owned by the process that is rank 0.

    ``status`` builds the status record (status.json and GET /status); ``identity``
    names this process in endpoint.json, so a reader can tell a live server from a
    recycled pid and a process removes only a record it wrote itself.
    """

    def __init__(
        self,
        *,
        job_id: str,
        paths: JobPaths,
        ledger: Ledger,
        status: Callable[[], Status],
        host: str = "127.0.0.1",
        port: int = 0,
        enable_http: bool = True,
        auth: bool = True,
        poll_interval: float = 0.5,
        heartbeat_interval: float = 2.0,
        started_at: float | None = None,
        identity: Identity | None = None,
        history: HistoryRecorder | None = None,
    ) -> None:
        self.job_id = job_id
        #: rank 0's metric history, sampled and written by the I/O round
        self.history = history
        self.paths = paths
        self.ledger = ledger
        self.status = status
        self.host = host
        self.port = port
        self.enable_http = enable_http
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.started_at = time.time() if started_at is None else started_at
        self.identity = identity if identity is not None else Identity(pid=os.getpid())
        #: Why a part of the plane is not working, for status.json; None while all is well.
        self.control_error: str | None = None
        #: The HTTP server's URL while it serves.
        self.url: str | None = None
        self._token = secrets.token_urlsafe(32) if auth else None
        self._server: ServerThread | None = None
        #: the commands clients follow over HTTP (the server waits for them at the end)
        self._followed: Followed | None = None
        self._publisher: Publisher | None = None
        self._served_http = False

    # -- what others read ---------------------------------------------------------------
    @property
    def serving(self) -> bool:
        """The I/O round runs: status.json is kept fresh and the inbox is polled."""
        return self._publisher is not None

    @property
    def serving_http(self) -> bool:
        return self._server is not None

    @property
    def served_http(self) -> bool:
        """This process ran the HTTP server at some point (it may have stopped since,
        on learning that it is not rank 0)."""
        return self._served_http

    @property
    def publisher(self) -> Publisher | None:
        """The I/O round while serving (status.json, heartbeat, inbox)."""
        return self._publisher

    # -- serving -------------------------------------------------------------------------
    def start(self, *, world_size: int) -> None:
        """Create the job's folder, serve HTTP (unless disabled), write endpoint.json and
        start the I/O round. Never raises."""
        if self._publisher is not None:
            return
        try:
            self.paths.create()
            if self.enable_http and self._server is None:
                try:
                    self._start_server()
                except Exception as exc:  # noqa: BLE001 - training goes on without HTTP
                    self.control_error = f"HTTP server did not start ({exc}); the file channel still works"
                    log.warning("forgather control: %s", self.control_error)
            self.write_endpoint(world_size=world_size)
            self._publisher = Publisher(
                paths=self.paths,
                ledger=self.ledger,
                status=self.status,
                poll_interval=self.poll_interval,
                heartbeat_interval=self.heartbeat_interval,
                on_tick=self.history.tick if self.history is not None else None,
            )
            self._publisher.write_status()
            self._publisher.start()
        except Exception as exc:  # noqa: BLE001 - training goes on without control
            self.control_error = f"control plane could not start: {exc}"
            log.warning("forgather control: %s; training goes on without it", self.control_error)

    def _start_server(self) -> None:
        from forgather_control.serving.thread import ServerThread

        from .server import Followed, create_app

        self._followed = Followed()
        app = create_app(
            followed=self._followed,
            job_id=self.job_id,
            ledger=self.ledger,
            status=self.status,
            token=self._token,
            loopback=is_loopback_host(self.host),
            metrics=self.history.history.as_record if self.history is not None else None,
        )
        server = ServerThread(app, host=self.host, port=self.port, loop=rankloop.shared())  # served from the control thread
        server.start()
        self._server = server
        self._served_http = True
        self.url = server.url
        log.info("forgather control for job %s at %s", self.job_id, self.url)

    def write_endpoint(self, *, world_size: int) -> None:
        """(Re)write endpoint.json: how to reach this job, and which process serves it.
        The token is in this file only (mode 0600)."""
        me = self.identity
        record = Endpoint(
            host=me.host,
            boot_id=me.boot_id,
            pid=me.pid,
            pid_start_time=me.pid_start_time,
            pid_ns=me.pid_ns,
            job_id=self.job_id,
            url=self.url,
            port=self._server.port if self._server else None,
            bind_host=self.host,
            token=self._token,
            started_at=self.started_at,
            protocol=PROTOCOL,
            world_size=world_size,
        )
        write_json_atomic(self.paths.endpoint, encode(record), mode=0o600)

    def changed(self) -> None:
        """Something in the status worth writing now."""
        publisher = self._publisher
        if publisher is not None:
            publisher.changed()

    # -- ending ----------------------------------------------------------------------------
    def stop(self, *, remove_endpoint: bool) -> None:
        """Stop serving: this process turned out not to be rank 0. Its endpoint.json, if
        still its own, goes too; the real rank 0's is left alone."""
        self._stop_threads()
        self.url = None
        if remove_endpoint:
            self._remove_own_endpoint()

    def close(self, *, error: str | None = None, remove_endpoint: bool = True) -> None:
        """The job ended: stop serving, take the inbox's late files (recorded as rejected,
        not lost), write the final status (which still names the URL it served). Never
        raises."""
        try:
            publisher = self._publisher
            if self._followed is not None and self._server is not None:
                if publisher is not None:
                    # the final state on disk first: the wait below may be cut short by
                    # the end of the allocation (another node's launcher exited first)
                    publisher.write_status(ended_at=time.time(), error=error)
                self._followed.caught_up(self._state_of)  # a follower reads how its command ended
            self._stop_threads()
            if publisher is not None:
                publisher.poll_inbox()
                publisher.write_status(ended_at=time.time(), error=error)
            if self.history is not None:
                self.history.tick()  # the last sample, and the file a finished job keeps
                self.history.flush()
            if remove_endpoint:
                self._remove_own_endpoint()
        except Exception:
            log.exception("forgather control: error while closing; the job's records may be stale")

    def _stop_threads(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.stop()

    def _state_of(self, command_id: str) -> str | None:
        try:
            return self.ledger.get(command_id).state.value
        except LedgerError:
            return None

    def _remove_own_endpoint(self) -> None:
        record = load_or_none(self.paths.endpoint, Endpoint)
        if record is not None and record.pid == self.identity.pid:
            remove_quietly(self.paths.endpoint)
