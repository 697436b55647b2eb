"""Hung jobs for real: ``forgather launch``, torchrun, gloo on CPU (examples/launch/hang_train.py).

One rank stuck in a named function (in Python's sleep, or in a C call holding the GIL)
while the others wait in the gradient all-reduce: the job is ``stalled`` in list and
status, ``stacks`` shows every rank where it is (grouped), a command other than abort
is taken with a warning, and abort ends everything through the launcher. A slow but
healthy rank is not a stall. Two launchers as two nodes answer for their own ranks,
each frame with its line of code as read on its node.
"""

from __future__ import annotations

import pytest
from support.launcher import ABORT_OF_A_HUNG_JOB, ended_hung, launch, wait_running
from support.paths import REPO
from support.ports import free_port
from support.processes import Procs, assert_all_gone
from support.records import read_record as read
from support.waiting import wait_for

from forgather_control.core.outcome import EXIT_ABORTED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # forgather launch, torchrun

HANG = REPO / "examples" / "launch" / "hang_train.py"
#: ``forgather launch`` runs a script as named: from the repository, its frames say this
HANG_AS_NAMED = HANG.relative_to(REPO)
TIMEOUT = 240.0
STALL_AFTER = "3"


def wait_stalled(cli, job_id: str) -> dict:
    def stalled():
        rows = cli("control", "list", "--json").json()
        row = next((r for r in rows if r["job_id"] == job_id), None)
        return row if row is not None and row["state"] == "stalled" else None

    return wait_for(stalled, timeout=TIMEOUT, interval=1.0, what=f"job {job_id} stalled")


def main_funcs(rank: dict) -> list[str]:
    [main] = [t for t in rank["threads"] if t["main"]]
    return [f["func"] for f in main["frames"]]


def abort_and_check_all_gone(cli, jobs_dir, job_id: str, *launchers) -> dict:
    seen = [p for launcher in launchers for p in launcher.tree.track()]
    res = cli("control", "abort", job_id, "--yes", "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 30)
    assert res.code == 0, res.out + res.err
    assert "is stalled" in res.err and "launcher ends every rank" in res.err, res.err
    assert any(how in res.out for how in ABORT_OF_A_HUNG_JOB), res.out
    for launcher in launchers:
        assert launcher.wait(TIMEOUT) == EXIT_ABORTED, launcher.output()[-3000:]
    assert_all_gone(seen)
    status = cli("control", "status", job_id, "--json").json()
    assert status["state"] == "aborted" and status["exit_code"] == EXIT_ABORTED
    [receipt] = [c for c in status["commands"] if c["command"] == "abort"]
    assert ended_hung(receipt), receipt
    return status


@pytest.mark.parametrize("nproc", [2, 4])
def test_a_collective_hang_is_stalled_shown_and_aborted(nproc: int, jobs_dir, procs: Procs, cli) -> None:
    job = launch(procs, jobs_dir, "hang", HANG, "--hang-at", "8", opts=("--nproc-per-node", str(nproc), "--stall-after", STALL_AFTER))
    wait_running(jobs_dir, "hang", job)
    row = wait_stalled(cli, "hang")
    assert row["stall"]["step"] == 7 and row["stall"]["phase"] == "training"  # rank 0 waits in the user's all-reduce
    status = cli("control", "status", "hang", "--json").json()
    assert status["state"] == "stalled" and "training code" in status["stall"]["why"]

    data = cli("control", "stacks", "hang", "--json").json()
    assert [r["rank"] for r in data["ranks"]] == list(range(nproc)) and data["missing"] == [] and data["nodes"] == [0]
    by_rank = {r["rank"]: main_funcs(r) for r in data["ranks"]}
    assert by_rank[1][-2:] == ["main", "next_batch"]  # the stuck rank, in the named function
    for rank in set(by_rank) - {1}:
        assert "average_gradients" in by_rank[rank] and by_rank[rank][-1] == "all_reduce", by_rank[rank]  # the others, in the collective
    text = cli("control", "stacks", "hang").out
    others = "rank 0" if nproc == 2 else "ranks 0,2-3"
    assert f"\n{others} (" in text and "\nrank 1 (" in text and "in next_batch" in text, text

    saved = cli("control", "save", "hang")
    assert saved.code == 0 and "applies only if the job recovers" in saved.err and "forgather control stacks hang" in saved.err
    abort_and_check_all_gone(cli, jobs_dir, "hang", job)
    assert read(jobs_dir, "hang", "job.json")["state"] == "aborted"


def test_a_rank_stuck_in_a_c_call_holding_the_gil(jobs_dir, procs: Procs, cli) -> None:
    job = launch(procs, jobs_dir, "hang-c", HANG, "--hang-at", "8", "--hang-how", "c", opts=("--nproc-per-node", "2", "--stall-after", STALL_AFTER))
    wait_running(jobs_dir, "hang-c", job)
    wait_stalled(cli, "hang-c")
    data = cli("control", "stacks", "hang-c", "--json").json()
    by_rank = {r["rank"]: main_funcs(r) for r in data["ranks"]}
    assert by_rank[1][-1] == "next_batch" and by_rank[0][-1] == "all_reduce", by_rank
    abort_and_check_all_gone(cli, jobs_dir, "hang-c", job)


def test_a_slow_but_healthy_rank_is_not_a_stall(jobs_dir, procs: Procs, cli) -> None:
    """Rank 1 takes a second more per step; the threshold (30 s) is far above that: the
    job must stay running through every look while it makes ten steps."""
    job = launch(procs, jobs_dir, "slow", HANG, "--slow-rank", "1", "--slow-time", "1.0", opts=("--nproc-per-node", "2", "--stall-after", "30"))
    st = wait_running(jobs_dir, "slow", job, min_step=1)
    states: list[str] = []

    def ten_more_steps():
        row = next(r for r in cli("control", "list", "--json").json() if r["job_id"] == "slow")
        states.append(row["state"])
        return (row["step"] or 0) >= st["step"] + 10

    wait_for(ten_more_steps, timeout=TIMEOUT, interval=1.0, what="ten more steps")
    assert set(states) == {"running"}, states
    assert cli("control", "stop", "slow", "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 30).code == 0
    assert job.wait(TIMEOUT) != EXIT_ABORTED


def test_two_launchers_as_two_nodes_each_answer_for_their_ranks(jobs_dir, procs: Procs, cli) -> None:
    port = free_port()
    common = ("--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port), "--stall-after", STALL_AFTER)
    args = ("--hang-at", "8", "--hang-rank", "3")
    node1 = launch(procs, jobs_dir, "duo", HANG_AS_NAMED, *args, opts=(*common, "--node-rank", "1"), name="node1")
    node0 = launch(procs, jobs_dir, "duo", HANG_AS_NAMED, *args, opts=(*common, "--node-rank", "0"), name="node0")
    wait_running(jobs_dir, "duo", node0, node1)
    wait_stalled(cli, "duo")
    data = cli("control", "stacks", "duo", "--json").json()
    assert data["nodes"] == [0, 1] and data["silent_nodes"] == [] and data["missing"] == []  # both launchers answered
    by_rank = {r["rank"]: main_funcs(r) for r in data["ranks"]}
    assert sorted(by_rank) == [0, 1, 2, 3] and by_rank[3][-1] == "next_batch"
    assert all(by_rank[r][-1] == "all_reduce" for r in (0, 1, 2)), by_rank
    stuck = HANG.read_text().splitlines().index("                time.sleep(3600)") + 1
    text = cli("control", "stacks", "duo", cwd=jobs_dir).out  # no hang_train.py here: the launchers read the lines
    assert f'    File "{HANG_AS_NAMED}", line {stuck}, in next_batch\n      time.sleep(3600)\n' in text, text
    abort_and_check_all_gone(cli, jobs_dir, "duo", node0, node1)
