"""Rank 0's plane on its own: endpoint.json, status.json and the I/O round, and that
none of its failures reach the caller."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from forgather_control.callback.plane import ControlPlane
from forgather_control.core import JobPaths, Ledger, read_json, write_json_atomic
from forgather_control.core.records import Identity, Status


def make(jobs_dir: Path, **kw) -> ControlPlane:
    paths = JobPaths(jobs_dir, kw.pop("job_id", "job-1"))
    kw.setdefault("enable_http", False)
    return ControlPlane(job_id=paths.job_id, paths=paths, ledger=Ledger(), status=lambda: Status(state="running"), poll_interval=0.05, **kw)


def test_file_channel_only_serves_endpoint_and_status(jobs_dir: Path) -> None:
    plane = make(jobs_dir, identity=Identity(pid=os.getpid(), host="here"))
    plane.start(world_size=4)
    try:
        assert plane.serving and not plane.serving_http and not plane.served_http and plane.control_error is None
        ep = read_json(plane.paths.endpoint)
        assert ep.get("url") is None and ep.get("port") is None and ep["world_size"] == 4 and ep["host"] == "here"  # unset: not written
        assert ep["token"] and stat.S_IMODE(os.stat(plane.paths.endpoint).st_mode) == 0o600
        assert read_json(plane.paths.status)["state"] == "running"
        assert plane.publisher is not None and plane.publisher.alive
    finally:
        plane.close(error=None)
    assert not plane.serving and not plane.paths.endpoint.exists()
    final = read_json(plane.paths.status)
    assert final["ended_at"] and final.get("error") is None


def test_no_auth_writes_no_token(jobs_dir: Path) -> None:
    plane = make(jobs_dir, auth=False)
    plane.start(world_size=1)
    try:
        assert read_json(plane.paths.endpoint).get("token") is None
    finally:
        plane.close()


def test_http_serves_and_the_final_status_still_names_its_url(jobs_dir: Path) -> None:
    plane = make(jobs_dir, enable_http=True)
    plane.start(world_size=1)
    try:
        assert plane.serving_http and plane.served_http and plane.url and plane.url.startswith("http://127.0.0.1:")
        assert read_json(plane.paths.endpoint)["url"] == plane.url
        url = plane.url
    finally:
        plane.close(error="RuntimeError: x")
    assert not plane.serving_http and plane.served_http and plane.url == url
    assert read_json(plane.paths.status)["error"] == "RuntimeError: x"


def test_http_that_cannot_bind_leaves_the_file_channel(jobs_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        plane = make(jobs_dir, enable_http=True, port=busy.getsockname()[1])
        plane.start(world_size=1)
        try:
            assert plane.control_error and "HTTP server did not start" in plane.control_error
            assert plane.serving and not plane.serving_http
            assert read_json(plane.paths.endpoint).get("url") is None
        finally:
            plane.close()


def test_a_plane_that_cannot_start_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    plane = make(blocker / "jobs")
    plane.start(world_size=1)
    assert plane.control_error and "could not start" in plane.control_error and not plane.serving
    plane.changed()
    plane.stop(remove_endpoint=True)
    plane.close(error="x")


def test_stop_removes_only_its_own_endpoint(jobs_dir: Path) -> None:
    plane = make(jobs_dir)
    plane.start(world_size=2)
    other = {"job_id": "job-1", "pid": os.getpid() + 1_000_000}
    write_json_atomic(plane.paths.endpoint, other, mode=0o600)  # the real rank 0 took over
    plane.stop(remove_endpoint=True)
    assert not plane.serving and read_json(plane.paths.endpoint) == other
    plane.start(world_size=2)
    plane.stop(remove_endpoint=True)
    assert not plane.paths.endpoint.exists()


def test_close_can_keep_the_endpoint(jobs_dir: Path) -> None:
    plane = make(jobs_dir)
    plane.start(world_size=1)
    plane.close(remove_endpoint=False)
    assert plane.paths.endpoint.exists()
