"""A training rank other than 0 loads what it runs, not rank 0's serving parts (issue 24).

Rank 0 serves the job (the plane: HTTP, the I/O round, status.json, the history it
writes, the run marker); every other rank only agrees, applies and reports. Importing
``forgather_control.callback`` and running a Controller there must not load the plane,
its publisher, the history writer, the job's metric history or the run markers; rank 0
still loads them (the same script, on a real 2-rank job). The RSS the import adds on
top of ``import torch`` is measured in the same child, with the project's bytecode
written first (as an installed package has it; compiling at import costs more than the
modules kept), and bounded: a guard against the import growing back, not the budget
itself (``benchmarks/bench_footprint.py`` measures that against a bare job).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.env import base_env
from support.launcher import launch
from support.torchrun import TIMEOUT, rank_script

from forgather_control.core.outcome import EXIT_STOPPED

#: rank 0's serving parts and what only they use: never loaded on another rank
RANK0_ONLY = (
    "forgather_control.callback.plane",
    "forgather_control.callback.publisher",
    "forgather_control.callback.history",
    "forgather_control.core.metrics",
    "forgather_control.core.markers",
    "forgather_control.core.vanished",
    "forgather_control.serving",
)
#: what the import and a follower's Controller may add to ``import torch`` (KiB of VmRSS):
#: about 0.9 MiB measured here with bytecode (2.6 while every rank loaded msgspec and the
#: typed records); compiling the project at import would cost more than the modules kept.
IMPORT_BOUND_KIB = 1536

FOLLOWER = r"""
import json, sys

def rss():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))

import torch, torch.distributed
before = rss()
import forgather_control.callback
from forgather_control.callback import Controller
imported = rss() - before
ctl = Controller(job_id="follower", rank=1, world_size=2, signals=(), enable_http=True)
ctl.start()
for step in range(1, 6):
    ctl.step(step, {"loss": 1.0})
loaded = sorted(m for m in sys.modules if m.startswith(("forgather_control", "msgspec")))
ctl.close()
print(json.dumps({"imported_kib": imported, "loaded": loaded, "serves": ctl.serves_http, "url": ctl.url}))
"""


def _child_env(tmp_path: Path, jobs_dir: Path) -> dict[str, str]:
    env = base_env(jobs_dir, PYTHONPYCACHEPREFIX=str(tmp_path / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def test_a_follower_loads_none_of_rank_0s_serving_parts(tmp_path: Path) -> None:
    env = _child_env(tmp_path, tmp_path / "jobs")
    argv = [sys.executable, "-c", FOLLOWER]
    # the first run writes the bytecode (into the test's own cache), the second is measured
    for _ in range(2):
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [m for m in got["loaded"] if m.startswith(RANK0_ONLY)], got["loaded"]
    assert got["serves"] is False and got["url"] is None
    assert got["imported_kib"] <= IMPORT_BOUND_KIB, got


#: Every module of the project a rank other than 0 may load while it trains, agrees and
#: carries out save, evaluate, set and stop (the guard against the footprint growing
#: back, issue 24). Not msgspec, not the typed records: a follower loads them only when it
#: reads or writes one (a failure, a resumed run's carried knobs, configured guards, a
#: guard's firing, a trace), never to train.
FOLLOWER_MODULES = {
    "forgather_control",
    "forgather_control.callback",
    "forgather_control.callback.actions",
    "forgather_control.callback.agreement",
    "forgather_control.callback.config",
    "forgather_control.callback.controller",
    "forgather_control.callback.guarding",
    "forgather_control.callback.progress",
    "forgather_control.callback.resume",
    "forgather_control.callback.schedule",
    "forgather_control.callback.signals",
    "forgather_control.callback.stackdump",
    "forgather_control.callback.stall",
    "forgather_control.callback.straggle",
    "forgather_control.callback.watchdog",
    "forgather_control.core",
    "forgather_control.core.commands",
    "forgather_control.core.deathsig",
    "forgather_control.core.dumper",
    "forgather_control.core.env",
    "forgather_control.core.errors",
    "forgather_control.core.files",
    "forgather_control.core.ids",
    "forgather_control.core.jobs",
    "forgather_control.core.knobs",
    "forgather_control.core.host",
    "forgather_control.core.rankloop",
    "forgather_control.core.states",
}
#: ... and what a worker of ``forgather launch`` adds: its bootstrap (output handed to the
#: launcher, the exit code of an abort)
LAUNCHED_MODULES = {
    "forgather_control.callback.bootstrap",
    "forgather_control.callback.output",
    "forgather_control.core.outcome",
}
#: what a follower never loads to train (the records' own dependencies included)
NOT_TO_TRAIN = ("msgspec", "decimal", "forgather_control.core.records")

RANKS = r"""
import json, os, sys
import torch.distributed as dist
from forgather_control.callback import Controller

out, jobs = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
ctl = Controller(job_id=os.environ.get("FORGATHER_JOB_ID", "follower-ranks"), jobs_dir=jobs, signals=(), check_interval=0.0, poll_interval=0.05)
ctl.start()
ctl.begin()
scale = ctl.knob("lr_scale", 1.0, min=0.0)
done = []


def ask(verb):
    # rank 0 queues the next command once the last one was carried out (what the CLI does)
    from forgather_control.core import Command
    from forgather_control.core.records import CommandOptions, KnobChange

    options = CommandOptions(changes=[KnobChange(name="lr_scale", value=0.5)]) if verb == "set" else None
    ctl.ledger.submit(Command(verb), options=options)


plan = ["save_checkpoint", "evaluate", "set", "graceful_stop"]
asked = 0
for step in range(1, 5000):
    if rank == 0 and asked == len(done) < len(plan) and step % 5 == 0:
        ask(plan[asked])
        asked += 1
    act = ctl.step(step, {"loss": 1.0})
    if act.command is not None:
        done.append([str(act.command), step])
    if act.save:
        ctl.checkpoint_saved(jobs)  # a folder that exists: every rank reports the save
    if act.evaluate:
        ctl.evaluation_done({"eval_loss": 0.5})
    if act.stop:
        break
loaded = sorted(m for m in sys.modules if m.startswith(("forgather_control", "msgspec", "decimal")))
agreed = ctl.checks_agreed
ctl.close()
json.dump({"loaded": loaded, "agreed": agreed, "served": ctl.plane.served_http, "done": done, "scale": scale.value}, open(f"{out}/r{rank}.json", "w"))
"""


@pytest.mark.slow  # a real torchrun job on 2 cores shared with other test runs
@pytest.mark.timeout(600)
@pytest.mark.parametrize("launcher", ["torchrun", "forgather launch"])
def test_on_a_real_job_rank_1_carries_out_commands_without_records_or_rank_0s_parts(jobs_dir: Path, procs, tmp_path: Path, launcher: str) -> None:
    if launcher == "torchrun":
        r0, r1 = rank_script(procs, tmp_path, jobs_dir, RANKS, name="follower-ranks")
        expected = FOLLOWER_MODULES
    else:
        r0, r1 = _launched(procs, tmp_path, jobs_dir)
        expected = FOLLOWER_MODULES | LAUNCHED_MODULES
    assert r0["agreed"] == r1["agreed"] > 0
    assert r0["served"] and not r1["served"]
    # every command, on both ranks at the same step
    assert [c for c, _ in r1["done"]] == ["save_checkpoint", "evaluate", "set", "graceful_stop"]
    assert r0["done"] == r1["done"]
    assert r0["scale"] == r1["scale"] == 0.5
    rank0_only = {m for m in r0["loaded"] if m.startswith(RANK0_ONLY)}
    assert {"forgather_control.callback.plane", "forgather_control.callback.publisher"} <= rank0_only
    assert "msgspec" in r0["loaded"]
    # rank 1: what it runs, and nothing it would only need to read or write a record
    assert not [m for m in r1["loaded"] if m.startswith(NOT_TO_TRAIN)], r1["loaded"]
    assert set(r1["loaded"]) <= expected, sorted(set(r1["loaded"]) - expected)


def _launched(procs, tmp_path: Path, jobs_dir: Path) -> list[dict]:
    """:data:`RANKS` under ``forgather launch`` (its worker bootstrap first)."""
    script = tmp_path / "follower-launched.py"
    script.write_text(RANKS)
    out = tmp_path / "launched-out"
    out.mkdir()
    p = launch(procs, jobs_dir, "follower-launched", script, str(out), str(jobs_dir), opts=("--nproc-per-node", "2"))
    assert p.wait(TIMEOUT) == EXIT_STOPPED, p.output()[-4000:]  # the plan ends with a stop
    return [json.loads((out / f"r{r}.json").read_text()) for r in range(2)]
