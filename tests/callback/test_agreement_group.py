"""The check's gloo group: one worker thread of its own, the job's device, gone at close.

Real parts: a 2-rank torchrun job on gloo (CPU), the real Agreement. Threads are counted
in /proc/self/task, and named once they ran (a gloo thread names itself when it starts:
the worker ``pt_gloo_runloop``, a device's event loop ``gloo_tcp_loop``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.torchrun import rank_script

SCRIPT = r"""
import collections, json, os, sys
import torch, torch.distributed as dist
from forgather_control.callback.agreement import Agreement, Proposal

out = sys.argv[1]
def threads():
    return collections.Counter(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
def batched():
    return sorted(int(t) for t in os.listdir("/proc/self/task") if os.sched_getscheduler(int(t)) == os.SCHED_BATCH)

dist.init_process_group("gloo")
rank = dist.get_rank()
before = threads()
ag = Agreement(node=0)
answers = [ag.exchange(Proposal(seq=i, command=rank + 1)).command for i in range(3)]
answers.append(ag.start(Proposal(seq=3, signal=rank + 1)).wait().signal)
during = threads()                   # after collectives ran: every gloo thread has named itself
batch = [open(f"/proc/self/task/{t}/comm").read().strip() for t in batched()]
ag.close()
after = threads()
job = torch.tensor([rank + 1])
dist.all_reduce(job)                 # the job's group works on, its device shared
gloo = {k: during[k] for k in ("pt_gloo_runloop", "gloo_tcp_loop")}
added, left = sum(during.values()) - sum(before.values()), sum(after.values()) - sum(before.values())
json.dump({"batch": batch, "added": added, "left": left, "gloo": gloo, "answers": answers, "job": int(job)}, open(f"{out}/r{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # a real torchrun job
@pytest.mark.timeout(300)
def test_the_check_group_adds_one_gloo_worker_on_the_jobs_device_and_close_removes_it(jobs_dir: Path, procs, tmp_path: Path) -> None:
    for r in rank_script(procs, tmp_path, jobs_dir, SCRIPT, name="group"):
        assert r["added"] == 1, r  # one thread
        assert r["batch"] == ["pt_gloo_runloop"], r  # it, and no other, never preempts the training thread
        assert r["gloo"] == {"pt_gloo_runloop": 3, "gloo_tcp_loop": 1}, r  # a worker beside the job's two; the job's event loop only
        assert r["left"] == 0, r  # shut at close: nothing of it outlives the training
        assert r["answers"] == [2, 2, 2, 2] and r["job"] == 3, r  # MAX over both ranks; the job's group still works
