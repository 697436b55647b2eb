"""The job sources behind one interface (client/sources.py): the options pick one source;
each lists its jobs, finds one by an id or a unique prefix (core's one rule) and opens a
handle on it. Local against a jobs dir built here, remote against a real job server on
loopback, Ray as far as it goes without a cluster (a stand-in for ray_listing, a closed
port, Ray hidden)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.env import base_env
from support.ports import free_port

from forgather_control.callback.server import create_app
from forgather_control.client import ray_listing
from forgather_control.client.ray_driver import RayNotInstalled, RayUnavailable
from forgather_control.client.sources import AUTO, FoundJob, JobSource, LocalSource, RaySource, RemoteSource, source_for
from forgather_control.client.transport import FileTransport, HttpTransport
from forgather_control.core import AmbiguousJob, CommandRefused, InvalidJobId, JobNotFound, JobPaths, Ledger, UsageError, write_json_atomic
from forgather_control.core.records import JobRow, MissingNode, Status, decode, encode
from forgather_control.serving.thread import ServerThread

TOKEN = "sources-test-token-0123456789abcdef"


def write_job(root: Path, job_id: str, state: str) -> JobPaths:
    """A job folder with a status and nothing else (no server, no process named): found by
    its folder, listed by its state."""
    paths = JobPaths(root, job_id).create()
    write_json_atomic(paths.status, {"job_id": job_id, "state": state, "step": 7, "heartbeat_at": time.time()})
    return paths


@pytest.fixture
def server() -> Iterator[str]:
    """A job server as rank 0 runs it, job ``served-job-1``, on a loopback port: its URL."""
    ledger = Ledger()

    def status() -> Status:
        return Status(job_id="served-job-1", state="running", step=5, max_steps=50, commands=ledger.recent())

    thread = ServerThread(create_app(job_id="served-job-1", ledger=ledger, status=status, token=TOKEN))
    thread.start()
    yield thread.url
    thread.stop()


# -- picking the source ----------------------------------------------------------------
def test_the_options_pick_one_source(tmp_path: Path) -> None:
    local = source_for(jobs_dir=tmp_path / "jobs")
    assert isinstance(local, LocalSource) and local.where == str(tmp_path / "jobs")
    remote = source_for(jobs_dir=tmp_path, remote="node17:41234", token=TOKEN)
    assert isinstance(remote, RemoteSource) and remote.where == "http://node17:41234"
    ray = source_for(jobs_dir=tmp_path / "jobs", ray=AUTO)
    assert isinstance(ray, RaySource) and ray.address == AUTO and ray.jobs_dir == str(tmp_path / "jobs")
    assert source_for(ray="head:6379").jobs_dir is None, "no --jobs-dir: each node reads its own default"
    assert [s.kind for s in (local, remote, ray)] == ["local", "remote", "ray"]
    assert all(isinstance(s, JobSource) for s in (local, remote, ray))


def test_remote_and_ray_together_are_refused() -> None:
    with pytest.raises(UsageError, match="either --remote or --ray, not both"):
        source_for(remote="node17:41234", ray=AUTO)


def test_the_local_source_is_the_jobs_dir_in_effect_without_options(jobs_dir: Path) -> None:
    assert source_for().where == str(jobs_dir)


def test_every_source_refuses_an_id_that_could_escape_before_looking(tmp_path: Path) -> None:
    for source in (LocalSource(tmp_path), RemoteSource(f"127.0.0.1:{free_port()}"), RaySource(f"127.0.0.1:{free_port()}")):
        with pytest.raises(InvalidJobId):
            source.open("../x")


# -- a jobs directory ------------------------------------------------------------------
def test_local_source_lists_what_may_run_and_everything_when_asked(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    write_job(root, "train-alpha", "running")
    write_job(root, "train-beta", "finished")
    source = LocalSource(root)
    listing = source.list()
    assert [r.job_id for r in listing.rows] == ["train-alpha"]
    assert (listing.where, listing.source, listing.exists, listing.missing_nodes) == (str(root), "local", True, [])
    assert [r.job_id for r in source.list(include_finished=True).rows] == ["train-alpha", "train-beta"]


def test_local_source_lists_a_folder_nobody_made_as_empty_and_not_there(tmp_path: Path) -> None:
    listing = LocalSource(tmp_path / "nothing-here").list()
    assert listing.rows == [] and listing.exists is False and listing.where == str(tmp_path / "nothing-here")


def test_local_source_finds_by_id_or_unique_prefix(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    for jid in ("run-a1", "run-a2", "solo-job"):
        write_job(root, jid, "running")
    source = LocalSource(root)
    found = source.find("solo")
    assert found.job_id == "solo-job" and found.info is not None and found.info.job_id == "solo-job"
    assert source.find("run-a1").job_id == "run-a1"
    with pytest.raises(AmbiguousJob, match="run-a1, run-a2"):
        source.find("run-a")
    with pytest.raises(JobNotFound, match=f"no job 'zzz' in {root}"):
        source.find("zzz")


def test_local_source_opens_a_handle_on_its_records(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    write_job(root, "train-alpha", "running")
    with LocalSource(root).open("train-a", channel="file") as handle:
        assert handle.job_id == "train-alpha" and handle.info is not None and handle.summary is None
        assert isinstance(handle.transport, FileTransport) and handle.status().step == 7


def test_local_source_refuses_a_job_another_source_found(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not found in a jobs directory"):
        LocalSource(tmp_path).reach(FoundJob("elsewhere", url="http://h:1"), channel="auto", timeout=1.0)


# -- a remote server -------------------------------------------------------------------
def test_remote_source_lists_what_the_server_serves_without_its_token(server: str) -> None:
    source = RemoteSource(server.removeprefix("http://"), TOKEN)
    listing = source.list()
    assert (listing.where, listing.source, listing.exists, listing.missing_nodes) == (server, "remote", True, [])
    assert [(r.job_id, r.state, r.step, r.url) for r in listing.rows] == [("served-job-1", "running", 5, server)]
    assert TOKEN not in json.dumps([encode(r) for r in listing.rows])


def test_remote_source_finds_by_prefix_and_says_what_it_serves(server: str) -> None:
    source = RemoteSource(server.removeprefix("http://"), TOKEN)
    found = source.find("served")
    assert (found.job_id, found.url, found.token, found.info) == ("served-job-1", server, TOKEN, None)
    assert found.summary is not None and found.summary.state == "running" and TOKEN not in repr(found)
    with pytest.raises(JobNotFound, match="it serves: served-job-1"):
        source.find("other")


def test_remote_source_opens_a_handle_over_http(server: str) -> None:
    with RemoteSource(server.removeprefix("http://"), TOKEN).open("served-job-1") as handle:
        assert handle.info is None and handle.summary is not None and handle.summary.max_steps == 50
        assert isinstance(handle.transport, HttpTransport) and handle.channel == "http"
        assert handle.status().step == 5


def test_remote_source_takes_the_token_from_the_environment(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGATHER_TOKEN", TOKEN)
    source = RemoteSource(server.removeprefix("http://"))
    assert source.find("served").token == TOKEN and TOKEN not in repr(source)


def test_remote_source_with_a_wrong_token_is_refused_401_and_never_sends_it(server: str) -> None:
    with pytest.raises(CommandRefused, match="the token is wrong") as caught:
        RemoteSource(server.removeprefix("http://"), "wrong-token-0123456789abcdef").list()
    assert caught.value.http_status == 401 and "Ours was not sent" in str(caught.value)


def test_remote_source_refuses_the_file_channel_before_asking_the_server() -> None:
    with pytest.raises(UsageError, match="cannot be used with --remote"):
        RemoteSource(f"127.0.0.1:{free_port()}").open("x", channel="file")


def test_remote_source_refuses_an_address_without_a_port() -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        RemoteSource("node17").list()


# -- a Ray cluster, as far as it goes without one ----------------------------------------
def test_a_ray_source_loads_no_ray_until_asked(jobs_dir: Path) -> None:
    code = (
        "import sys; from forgather_control.client.sources import source_for\n"
        "s = source_for(ray='auto'); print(s.kind, s.where, 'forgather_control.client.ray_listing' in sys.modules, 'ray' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], env=base_env(jobs_dir), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ray the Ray cluster False False"


@pytest.fixture
def stand_in_cluster(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """ray_listing's two calls replaced, as tests/ui/test_ui_ray.py does: the calls made."""
    calls: list[tuple[str, dict[str, Any]]] = []
    row = decode({"job_id": "ray-job-1", "state": "running", "liveness": "alive", "node": "node-a", "url": "http://10.0.0.7:4100"}, JobRow, name="a row")

    def list_cluster(**kw: Any) -> Any:
        calls.append(("list", kw))
        return SimpleNamespace(jobs=[row], missing_nodes=[MissingNode(node="node-b", reason="timed out")])

    def find_job(ref: str, **kw: Any) -> ray_listing.Found:
        calls.append(("find", {"ref": ref, **kw}))
        return ray_listing.Found(row, token=TOKEN, boot_id="boot-a")

    monkeypatch.setattr(ray_listing, "list_cluster", list_cluster)
    monkeypatch.setattr(ray_listing, "find_job", find_job)
    return calls


def test_ray_source_lists_the_cluster_and_the_nodes_that_did_not_answer(stand_in_cluster: list, tmp_path: Path) -> None:
    listing = RaySource("head:6379", tmp_path / "jobs").list(include_finished=True, timeout=3.0)
    assert [r.job_id for r in listing.rows] == ["ray-job-1"] and (listing.where, listing.source) == ("the Ray cluster", "ray")
    assert listing.missing_nodes == [MissingNode(node="node-b", reason="timed out")]
    assert stand_in_cluster == [("list", {"address": "head:6379", "jobs_dir": str(tmp_path / "jobs"), "include_finished": True, "timeout": 3.0})]


def test_ray_source_finds_a_job_and_keeps_its_token_out_of_the_summary(stand_in_cluster: list) -> None:
    found = RaySource(AUTO).find("ray-j", timeout=2.0)
    assert (found.job_id, found.url, found.token) == ("ray-job-1", "http://10.0.0.7:4100", TOKEN)
    assert found.summary is not None and not {"token", "boot_id"} & set(encode(found.summary)) and TOKEN not in repr(found)
    assert stand_in_cluster == [("find", {"ref": "ray-j", "address": AUTO, "jobs_dir": None, "timeout": 2.0})]


def test_ray_source_opens_a_handle_that_knows_its_cluster(stand_in_cluster: list, tmp_path: Path) -> None:
    with RaySource("head:6379", tmp_path).open("ray-job-1") as handle:
        assert handle.job_id == "ray-job-1" and handle.ray == ("head:6379", str(tmp_path)) and handle.info is None
        assert isinstance(handle.transport, HttpTransport) and handle.transport.job_id == "ray-job-1"


def test_ray_source_refuses_the_file_channel_before_asking_the_cluster(stand_in_cluster: list) -> None:
    with pytest.raises(UsageError, match="cannot be used with --ray"):
        RaySource(AUTO).open("ray-job-1", channel="file")
    assert stand_in_cluster == []


def test_ray_source_without_ray_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without Ray finds
    source = RaySource(AUTO)
    for ask in (source.list, lambda: source.find("x")):
        with pytest.raises(RayNotInstalled, match=r"forgather-control\[ray\]") as caught:
            ask()
        assert caught.value.exit_code == 2


def test_ray_source_with_no_cluster_at_its_address_is_unavailable() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RayUnavailable, match="ray start --head") as caught:
        RaySource(address).list(timeout=5.0)
    assert caught.value.exit_code == 4 and address in str(caught.value)
