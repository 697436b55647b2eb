"""``forgather control set``, through the real CLI, on a real job: a change applies at a
step and its receipt says old -> new; a knob the job does not have, a value of the
wrong kind or out of range is refused with exit 7 and nothing is queued; a shorter
``max_steps`` than the current step ends the job ``finished``."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from support.env import base_env
from support.processes import Procs
from support.waiting import wait_for

from forgather_control.core import JobPaths, read_json
from forgather_control.core.errors import EXIT_BAD_KNOB, EXIT_OK

LOOP = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from forgather_control.callback.controller import Controller

    out = open(sys.argv[1], "a")
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    with Controller(job_id="knobs") as ctl:
        ctl.optimizer(opt, sched)
        temperature = ctl.knob("temperature", 1.0, min=0.0, max=10.0)
        steps = ctl.knob("max_steps", 100000, min=1)
        step = 0
        while step < steps.value:
            step += 1
            opt.step()
            sched.step()
            ctl.step(step, {"loss": 1.0 / step})
            out.write(json.dumps([step, temperature.value, opt.param_groups[0]["lr"]]) + "\\n")
            out.flush()
            time.sleep(0.01)
    """
)


@pytest.fixture
def job(procs: Procs, jobs_dir: Path, tmp_path: Path):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    seen = tmp_path / "seen.jsonl"
    proc = procs.start([sys.executable, str(script), str(seen)], env=base_env(jobs_dir), name="knobs")
    paths = JobPaths(jobs_dir, "knobs")
    wait_for(lambda: (read_json(paths.status, quiet=True) or {}).get("knobs") and (read_json(paths.endpoint, quiet=True) or {}).get("url"), timeout=120)
    return proc, paths, seen


def _rows(seen: Path) -> list[list[float]]:
    return [json.loads(line) for line in seen.read_text().splitlines() if line.strip()]


@pytest.mark.slow  # a real training process
def test_set_applies_at_a_step_and_refusals_exit_7_with_nothing_queued(cli, job) -> None:
    proc, paths, seen = job
    for bad, why in [
        ("nope=1", "this job has no knob 'nope'; its knobs: lr, lr_scale, max_steps, temperature"),
        ("temperature=hot", "temperature is a float: 'hot' is not a number"),
        ("temperature=11", "temperature must be at most 10, not 11"),
        ("lr_scale=0", "lr_scale must be above 0, not 0"),
        ("max_steps=2.5", "max_steps is an int: '2.5' is not a whole number"),
        ("Temperature=1", "is not a knob name"),
        ("temperature", "is not NAME=VALUE"),
    ]:
        r = cli("control", "set", "knobs", bad)
        assert r.code == EXIT_BAD_KNOB, (bad, r)
        assert why in r.err, (bad, r.err)
    # both lr and lr_scale: one setting
    r = cli("control", "set", "knobs", "lr=0.01", "lr_scale=2")
    assert r.code == EXIT_BAD_KNOB and "give one" in r.err, r
    assert not (read_json(paths.status) or {}).get("commands"), "a refused set queued something"

    r = cli("control", "set", "knobs", "temperature=2.5", "lr_scale=0.5", "--wait", "--json")
    assert r.code == EXIT_OK, r
    receipt = json.loads(r.out)
    assert receipt["state"] == "completed" and receipt["command"] == "set"
    step = receipt["step"]
    assert receipt["result"]["changes"] == [
        {"name": "temperature", "value": 2.5, "old": 1.0},
        {"name": "lr_scale", "value": 0.5, "old": 1.0},
    ]
    # the loop read the new value from the step after the agreed one, and the rate is
    # half the schedule's from there on
    wait_for(lambda: _rows(seen)[-1][0] > step + 5, timeout=60)
    rows = {int(r[0]): r for r in _rows(seen)}
    assert rows[step][1] == 2.5 and rows[step - 1][1] == 1.0
    for s in (step, step + 5):
        assert rows[s][2] == pytest.approx(0.5 * 0.1 / (1 + s))
    status = read_json(paths.status)
    knobs = {k["name"]: k for k in status["knobs"]}
    assert knobs["temperature"]["value"] == 2.5 and knobs["temperature"]["origin"] == "set" and knobs["temperature"]["step"] == step
    assert knobs["lr_scale"]["command_id"] == receipt["id"]
    # the rate was set too (through its scale): the view says so, and the script's rate stays
    assert (knobs["lr"]["origin"], knobs["lr"]["step"], knobs["lr"]["default"]) == ("set", step, 0.1)

    # the people's line says old -> new
    r = cli("control", "set", "knobs", "temperature=3", "--wait")
    assert r.code == EXIT_OK and "temperature 2.5 -> 3" in r.out, r

    # a shorter run than the current step: it ends there, finished
    r = cli("control", "set", "knobs", "max_steps=1", "--wait", "--json")
    assert r.code == EXIT_OK, r
    at = json.loads(r.out)["step"]
    assert proc.wait(60) == 0
    final = read_json(paths.status)
    assert final["state"] == "finished" and final["step"] == at
    assert final["max_steps"] == at  # the progress says it ended where it was, not "N of 1"
    assert {k["name"]: k for k in final["knobs"]}["max_steps"]["value"] == 1  # what was asked
