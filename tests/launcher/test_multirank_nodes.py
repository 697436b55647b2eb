"""Issue 3, acceptance 3: two "nodes" on one machine (two torchrun processes, --nnodes 2,
static rendezvous on 127.0.0.1), two ranks each, the DDP plain loop. Only global rank 0
serves; a command applies on all four ranks at one step; every rank made the same
sequence of collectives (FORGATHER_TRACE_AGREEMENT makes each rank dump its trace)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from support.ports import free_port
from support.records import final_status
from support.torchrun import TIMEOUT, command, end_step, ended_lines, read_traces, torchrun, wait_client, wait_step

from forgather_control.core import Command, read_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # real torchrun jobs on 2 cores shared with other test runs


def test_two_nodes_four_ranks_one_server_same_step_same_collectives(jobs_dir: Path, procs, tmp_path: Path) -> None:
    port = free_port()
    traces = tmp_path / "traces"
    common = ("--job-id", "nodes", "--step-time", "0.01")
    env = {"FORGATHER_TRACE_AGREEMENT": str(traces)}
    nodes = [
        torchrun(procs, "plain_loop.py", "--output-dir", str(tmp_path / "out"), *common, jobs_dir=jobs_dir, nnodes=2, node_rank=rank, master_port=port, env=env)
        for rank in (0, 1)
    ]
    client = wait_client(jobs_dir, "nodes", *nodes)
    st = wait_step(client, 3)
    assert st.world_size == 4

    # The one server: its listening socket belongs to global rank 0's process.
    ep = read_json(jobs_dir / "nodes" / "endpoint.json")
    owner = psutil.Process(ep["pid"])
    assert owner.environ()["RANK"] == "0"
    assert any(c.laddr.port == ep["port"] and c.status == psutil.CONN_LISTEN for c in owner.net_connections("tcp"))

    saved = command(client, "save")
    assert saved.state == "completed" and Path(saved.result.checkpoint).is_file(), saved
    stop = command(client, "save-stop")
    assert stop.state == "completed", stop
    for node in nodes:
        assert node.wait(TIMEOUT) == 0, node.output()[-3000:]

    lines = ended_lines(*nodes)
    assert set(lines) == {0, 1, 2, 3}, [n.output()[-2000:] for n in nodes]
    assert {end_step(line) for line in lines.values()} == {stop.step}
    assert final_status(jobs_dir, "nodes")["state"] == "stopped"

    tr = read_traces(traces)
    assert set(tr) == {0, 1, 2, 3}
    assert tr[0] == tr[1] == tr[2] == tr[3]
    applied = [row for row in tr[0] if row[1]]
    assert [row[1] for row in applied] == [Command.SAVE_CHECKPOINT.code, Command.SAVE_AND_STOP.code]
    served = {r: json.loads((traces / f"rank-{r}.json").read_text())["served_http"] for r in tr}
    assert served == {0: True, 1: False, 2: False, 3: False}
