"""The check interval follows the checks' measured cost, on two real gloo ranks
(torchrun): each check carries the time the slowest rank spent in control since its
previous one; rank 0 spaces the checks so that this is CHECK_SHARE of the time between
them. Here rank 1's control is made 1 ms slower a check (its exchange start sleeps):
both ranks agree on that cost, and rank 0's interval (its status's ``check_interval``)
moves from FASTEST to about 1 ms / CHECK_SHARE. The checks of a gloo job ride its own
group and leave it working when the Controller closes; an NCCL job's get a gloo group of
their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.env import base_env
from support.torchrun import TIMEOUT, torchrun_argv

from forgather_control.callback.agreement import FIELDS, shared_group
from forgather_control.callback.schedule import CHECK_SHARE, FASTEST, SLOWEST

SLOW = 0.001

SCRIPT = r"""
import json, sys, time
import torch
import torch.distributed as dist
from forgather_control.callback import Controller

out, jobs, slow = sys.argv[1], sys.argv[2], float(sys.argv[3])
dist.init_process_group("gloo")
rank = dist.get_rank()
ctl = Controller(job_id="cadence", jobs_dir=jobs, signals=(), poll_interval=0.05)  # no check_interval: it follows the cost
ctl.start()
ctl.begin()
first = ctl.status().check_interval
step = 0
while ctl.checks_agreed < 8:        # every rank counts the same agreed checks
    step += 1
    time.sleep(0.002)
    if step == 1 and rank == 1:
        start = ctl._agreement.start
        def slowed(*a, **k):
            time.sleep(slow)        # rank 1's control is slow: the checks' cost is its
            return start(*a, **k)
        ctl._agreement.start = slowed
    ctl.step(step)
trace = [list(t) for t in ctl.agreement_trace]
interval = ctl.status().check_interval
shared = ctl._agreement.group is dist.distributed_c10d._get_default_group()
ctl.close()
after = torch.tensor([rank + 1])
dist.all_reduce(after)              # the job's group is the job's: close left it working
json.dump({"trace": trace, "first": first, "interval": interval, "shared": shared, "after": int(after)}, open(f"{out}/r{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # a real torchrun job on 2 cores shared with other test runs
@pytest.mark.timeout(600)
def test_the_slowest_ranks_cost_travels_in_every_check_and_rank_0_spaces_the_checks_by_it(jobs_dir: Path, procs, tmp_path: Path) -> None:
    script = tmp_path / "cadence.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    p = procs.start(torchrun_argv(script, str(out), str(jobs_dir), str(SLOW)), env=base_env(jobs_dir), name="cadence")
    assert p.wait(TIMEOUT) == 0, p.output()[-4000:]
    r0, r1 = (json.loads((out / f"r{r}.json").read_text()) for r in (0, 1))
    assert r0["trace"] == r1["trace"]  # the same costs agreed on both ranks
    costs = [row[FIELDS.index("cost")] for row in r0["trace"]]
    assert all(c >= SLOW * 1e6 for c in costs[2:]), costs  # rank 1's, through MAX (rank 0's own is far less)
    assert r0["first"] == FASTEST  # before any check was measured
    assert min(SLOW / CHECK_SHARE, SLOWEST) <= r0["interval"] <= SLOWEST, (r0["interval"], costs)
    # a gloo job's checks ride its own group (no threads of their own), and leave it working
    assert r0["shared"] and r1["shared"] and r0["after"] == r1["after"] == 3


class _Dist:
    """What agreement.shared_group reads of torch.distributed, for one backend."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.default = object()
        self.distributed_c10d = self

    def _get_default_group(self) -> object:
        return self.default

    def get_backend(self, group: object) -> str:
        assert group is self.default
        return self.backend


def test_a_gloo_jobs_checks_share_its_group_and_an_nccl_jobs_get_a_gloo_group_of_their_own() -> None:
    gloo, nccl = _Dist("gloo"), _Dist("nccl")
    assert shared_group(gloo) is gloo.default
    assert shared_group(nccl) is None  # NCCL: the CPU tensor of a check needs a gloo group (made by the Agreement)
    assert shared_group(object()) is None  # a torch without these: a group of its own
