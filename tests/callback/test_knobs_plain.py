"""The plain loop's live knobs (issue 22), on ``examples/trainer_control/plain_loop.py``:
``ctl.optimizer(opt, sched)``, ``max_steps`` read as ``while step < max_steps.value`` and
the loop's own ``temperature``, set with ``forgather control set``.

On two real ranks (torchrun, gloo; each rank writes what every step trained with,
``--trace-steps``): max_steps set longer carries the run past the script's end; bad
names, kinds and ranges are refused (the CLI's exit 7, rank 0's HTTP 422) with nothing
queued; ``lr_scale=0.5`` halves both parameter groups on both ranks from the same step
and the schedule keeps it 100 steps on; ``temperature`` changes the value both ranks'
loops read at the same step; max_steps below the current step ends both ranks there,
finished. In one process: max_steps set shorter, still ahead, ends the run at it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.env import base_env
from support.knobs import post_set, read_steps
from support.paths import EXAMPLES
from support.processes import Procs
from support.records import final_status
from support.torchrun import TIMEOUT, end_step, ended_lines, torchrun, wait_client, wait_step

from forgather_control.core.errors import EXIT_BAD_KNOB, EXIT_OK

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # real training processes (torch), torchrun

#: The script's schedule (``--lr 0.01 --lr-decay-steps 2000``): the rate step ``n`` trains
#: with, per parameter group (the second's is half the first's).
BASE = (0.01, 0.005)


def schedule(step: int) -> float:
    return max(0.1, 1.0 - 0.9 * (step - 1) / 2000)


def set_knobs(cli, job_id: str, *assignments: str) -> dict:
    """``forgather control set JOB A=V ... --wait --json``: the completed receipt."""
    r = cli("control", "set", job_id, *assignments, "--wait", "--json", timeout=TIMEOUT)
    assert r.code == EXIT_OK, r
    receipt = r.json()
    assert (receipt["state"], receipt["command"]) == ("completed", "set"), receipt
    return receipt


def test_two_ranks_take_each_knob_at_the_same_step(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    trace, end = tmp_path / "trace", 800
    args = ("--output-dir", str(tmp_path / "out"), "--job-id", "pk", "--step-time", "0.01", "--max-steps", str(end), "--lr-decay-steps", "2000")
    job = torchrun(procs, "plain_loop.py", *args, "--trace-steps", str(trace), jobs_dir=jobs_dir)
    client = wait_client(jobs_dir, "pk", job)

    # Longer than the script's: applied before its end (at the latest at the check its last
    # step always is), the run goes on past it.
    longer = set_knobs(cli, "pk", "max_steps=100000")
    assert longer["step"] <= end and longer["result"]["changes"] == [{"name": "max_steps", "value": 100000, "old": end}], longer

    before = client.status()
    assert {k.name for k in before.knobs or ()} == {"lr", "lr_scale", "max_steps", "temperature"}, before.knobs
    for bad, why in [
        ("nope=1", "this job has no knob 'nope'"),
        ("temperature=warm", "temperature is a float: 'warm' is not a number"),
        ("temperature=-1", "temperature must be at least 0, not -1"),
        ("max_steps=0", "max_steps must be at least 1, not 0"),
        ("max_steps=1.5", "max_steps is an int: '1.5' is not a whole number"),
        ("lr_scale=0", "lr_scale must be above 0, not 0"),
    ]:
        r = cli("control", "set", "pk", bad, timeout=TIMEOUT)
        assert r.code == EXIT_BAD_KNOB and why in r.err, (bad, r)
    for bad in ({"temperature": -1}, {"max_steps": "many"}, {"nope": 1}):  # rank 0 checks again
        code, body = post_set(jobs_dir, "pk", **bad)
        assert (code, body.get("refused")) == (422, "knob"), (bad, body)
    assert client.status().commands == before.commands  # nothing queued

    half = set_knobs(cli, "pk", "lr_scale=0.5")
    assert half["result"]["changes"] == [{"name": "lr_scale", "value": 0.5, "old": 1.0}], half
    wait_step(client, half["step"] + 105)
    cooler = set_knobs(cli, "pk", "temperature=0.25")
    assert cooler["result"]["changes"] == [{"name": "temperature", "value": 0.25, "old": 0.1}], cooler
    st = wait_step(client, end + 10)  # past the script's end
    knobs = {k.name: k for k in st.knobs or ()}
    assert (knobs["temperature"].value, knobs["temperature"].origin, knobs["temperature"].step) == (0.25, "set", cooler["step"])
    assert (knobs["max_steps"].value, st.max_steps) == (100000, 100000)

    # below the current step: both ranks end at the step it applies at, finished
    stop = set_knobs(cli, "pk", "max_steps=1")
    assert job.wait(TIMEOUT) == 0, job.output()[-4000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1} and end_step(lines[0]) == end_step(lines[1]) == stop["step"] > end, (lines, stop)
    final = final_status(jobs_dir, "pk")
    assert (final["state"], final["step"], final["max_steps"]) == ("finished", stop["step"], stop["step"]), final  # ended where it was

    for rank in (0, 1):
        steps = {r["step"]: r for r in read_steps(trace, rank)}
        assert sorted(steps) == list(range(1, stop["step"] + 1)), rank
        for s, r in steps.items():  # every group at the schedule's rate, halved after the agreed step
            scale = 0.5 if s > half["step"] else 1.0
            assert r["lrs"] == pytest.approx([b * scale * schedule(s) for b in BASE]), (rank, s, r)
            assert r["temperature"] == (0.25 if s > cooler["step"] else 0.1), (rank, s, r)
        assert max(steps) >= half["step"] + 100


def test_one_process_ends_at_a_shorter_max_steps_still_ahead(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    argv = [sys.executable, str(EXAMPLES / "plain_loop.py"), "--job-id", "short", "--output-dir", str(tmp_path / "out"), "--step-time", "0.01"]
    job = procs.start(argv, env=base_env(jobs_dir), name="short")
    client = wait_client(jobs_dir, "short", job)
    target = wait_step(client, 5).step + 300  # three seconds ahead at the least
    shorter = set_knobs(cli, "short", f"max_steps={target}")
    assert shorter["step"] < target and shorter["result"]["changes"] == [{"name": "max_steps", "value": target, "old": 1_000_000}], shorter
    assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
    assert end_step(ended_lines(job)[0]) == target
    final = final_status(jobs_dir, "short")
    assert (final["state"], final["step"], final["max_steps"]) == ("finished", target, target), final
