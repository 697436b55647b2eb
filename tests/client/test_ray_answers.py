"""What crosses the Ray wire, decoded without a cluster (issue 18): a node's answer is
JSON bytes decoded once into its typed listing, where the driver reads it; the driver's
answer is a typed record, JSON where it leaves the driver's interpreter and decoded once
on the other side. A node answer that is not a listing makes the node a missing one, with
the reason; a row a node got wrong is left out, with its reason; every other row is
listed as usual."""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from support.records import identity

from forgather_control.client import ray_driver, ray_listing
from forgather_control.client.ray_driver import RayNotInstalled, RayUnavailable
from forgather_control.client.ray_listing import ClusterAnswer, ClusterStacks, NodeListing, NodeRow, NodeStacks, Reach, read_listing
from forgather_control.core import JobPaths, write_json_atomic
from forgather_control.core.files import RecordError
from forgather_control.core.records import ClusterNode, JobRow, MissingNode, RayNode, StackRank, encode, from_json, to_json

NODE = RayNode(node="fg-a/0123abcd", node_id="0123abcd" * 7, node_ip="10.0.0.7")


def _live_job(root: Path, job_id: str) -> None:
    paths = JobPaths(root, job_id).create()
    write_json_atomic(paths.status, {**identity(), "job_id": job_id, "state": "running", "step": 3, "heartbeat_at": time.time()})
    write_json_atomic(paths.endpoint, {**identity(), "job_id": job_id, "url": "http://127.0.0.1:1", "token": "secret", "heartbeat_at": time.time()})


def test_a_node_answer_round_trips_as_json_bytes(tmp_path: Path) -> None:
    _live_job(tmp_path, "live-1")
    # A listing: JSON bytes (no object of ours crosses Ray), no token.
    answer = ray_listing.list_node(str(tmp_path), False, None)
    assert isinstance(answer, bytes)
    assert "secret" not in answer.decode()
    listing, left_out = read_listing(answer, NODE)
    assert left_out == [] and (listing.hostname, listing.jobs_dir) == (socket.gethostname(), str(tmp_path))
    [row] = listing.jobs
    assert (row.job_id, row.state, row.liveness, row.step, row.token) == ("live-1", "running", "alive", 3, None)
    assert (row.node, row.node_id, row.node_ip, row.source) == (NODE.node, NODE.node_id, NODE.node_ip, "ray")
    # Find mode: the row carries what reaching the job takes, split off before it is shown.
    listing, _ = read_listing(ray_listing.list_node(str(tmp_path), False, "live"), NODE)
    shown, reach = listing.jobs[0].split()
    assert type(shown) is JobRow and "token" not in encode(shown) and reach == Reach(token="secret", boot_id=identity()["boot_id"])
    # A diverging loss stays NaN both ways (as a record file has it).
    nan = NodeListing(hostname="h", jobs_dir="/j", jobs=[NodeRow(job_id="x", loss=float("nan"))])
    [back] = read_listing(to_json(nan), NODE)[0].jobs
    assert math.isnan(back.loss)


def test_an_answer_that_is_not_a_listing_makes_a_missing_node_with_the_reason() -> None:
    for answer, reason in (
        ({"jobs": []}, "answered something that is not a listing (dict)"),  # not JSON bytes: an older node's Python object
        (b"[1, 2]", "answered something that is not a listing (list)"),
        (b'{"hostname": "h", "jobs": 3}', "answered something that is not a listing (dict)"),
        (b"{not json", "answered something that is not a listing: not valid JSON"),
        (b'{"hostname": 7, "jobs": []}', "answered something that is not a listing: field 'hostname' must be a string, not int"),
    ):
        out = ClusterAnswer(address="a")
        out.add(NODE, answer)
        assert out.jobs == [] and out.nodes == [] and len(out.missing_nodes) == 1, (answer, out)
        [missing] = out.missing_nodes
        assert (missing.node, missing.node_id, missing.node_ip) == (NODE.node, NODE.node_id, NODE.node_ip)
        assert str(missing.reason).startswith(reason), (answer, missing.reason)


def test_a_row_a_node_got_wrong_is_left_out_with_its_reason(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    answer = json.dumps({"hostname": "h", "jobs_dir": "/j", "jobs": [{"job_id": "good", "liveness": "alive"}, {"job_id": "bad", "pid": "nope"}, 7]}).encode()
    out = ClusterAnswer(address="head:6379")
    out.add(NODE, answer)
    assert [r.job_id for r in out.jobs] == ["good"] and out.missing_nodes == []
    assert out.nodes == [ClusterNode(node=NODE.node, node_id=NODE.node_id, node_ip=NODE.node_ip, hostname="h", jobs_dir="/j", jobs=3)]
    assert out.left_out == [
        "a row from Ray node 'fg-a/0123abcd': field 'pid' must be an integer, not str",
        "a row from Ray node 'fg-a/0123abcd': not a JSON object (int)",
    ]
    out.missing_nodes.append(MissingNode(node="fg-b/99", reason="no answer within 3s"))

    # The driver's answer crosses its interpreter as JSON and is decoded once, on the
    # caller's side, where the rows left out are said (in the caller's log).
    line = ray_driver.ANSWER + to_json(out).decode()
    back = ray_driver.read_reply(line, "", 0, ClusterAnswer)
    assert back == out

    def run(op: str, kwargs: dict[str, Any], *, here: Any, answer: type, timeout: float) -> Any:
        assert (op, answer) == ("gather", ClusterAnswer)
        return ray_driver.read_reply(line, "", 0, answer)

    monkeypatch.setattr(ray_driver, "run", run)
    with caplog.at_level(logging.INFO, logger="forgather_control.client.ray_listing"):
        listing = ray_listing.list_cluster(address="head:6379", jobs_dir=None)
    assert [r.job_id for r in listing.jobs] == ["good"] and listing.address == "head:6379"
    assert "left out: a row from Ray node 'fg-a/0123abcd': field 'pid' must be an integer, not str" in caplog.text
    assert "Ray node fg-b/99 did not answer: no answer within 3s" in caplog.text
    record = encode(listing.as_record())
    assert set(record) == {"jobs", "missing_nodes", "nodes", "address", "elapsed"}
    assert record["missing_nodes"] == [{"node": "fg-b/99", "reason": "no answer within 3s"}]


def test_the_driver_edge_refuses_what_is_not_its_answer() -> None:
    with pytest.raises(RayUnavailable, match=r"the Ray driver's answer: field 'nodes' must be a list, not str"):
        ray_driver.read_reply(ray_driver.ANSWER + '{"nodes": "x"}', "", 0, ClusterAnswer)
    with pytest.raises(RayUnavailable, match=r"ended \(exit code 1\) without an answer: boom"):
        ray_driver.read_reply("", "x\nboom\n", 1, ClusterAnswer)
    with pytest.raises(RayNotInstalled, match="no ray here"):
        ray_driver.read_reply(ray_driver.ERROR + json.dumps({"error": "RayNotInstalled", "message": "no ray here"}), "", 0, ClusterAnswer)
    with pytest.raises(RecordError, match="not valid JSON"):
        from_json(b"{", ClusterAnswer, name="x")


def test_a_node_stacks_answer_is_decoded_once() -> None:
    good = StackRank(rank=0, host="h", pid=12, threads=[])
    out = ClusterStacks()
    out.add(NODE, to_json(NodeStacks(ranks=[good])))
    # a rank a node got wrong is left out (its rank is then reported missing), the others kept
    out.add(NODE, json.dumps({"ranks": [{"rank": -1}, encode(StackRank(rank=1))]}).encode())
    out.add(NODE, [encode(good)])  # not JSON bytes: not a stacks answer
    assert [r.rank for r in out.found] == [0, 1]
    assert [m.reason for m in out.missing] == ["answered something that is not a stacks answer (list)"]
    assert ray_driver.read_reply(ray_driver.ANSWER + to_json(out).decode(), "", 0, ClusterStacks) == out
