"""Issue 3, acceptance 4: SIGTERM to one rank of a two-rank torchrun job (DDP plain loop).

- SIGTERM to rank 1 only (plain DDP loop), and separately to rank 0 only (HF Trainer):
  every rank saves and stops at the same step, exit code 0.
- A second SIGTERM while the first one's save is being carried out (a slow save) ends
  every process without saving; no process remains.
"""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
from support.records import final_status
from support.torchrun import TIMEOUT, end_step, ended_lines, torchrun, wait_client, wait_step, workers_by_rank
from support.waiting import wait_for

from forgather_control.core.records import Receipt

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # real torchrun jobs on 2 cores shared with other test runs

SCRIPT = "plain_loop.py"


def _signal_entry(client) -> Receipt | None:
    for e in client.status().commands or ():
        if e.source == "signal":
            return e
    return None


def test_sigterm_to_one_rank_saves_and_stops_every_rank(jobs_dir: Path, procs, tmp_path: Path) -> None:
    jobs = {}
    scripts = {1: ("plain_loop.py", "checkpoint-{}.pt"), 0: ("hf_trainer.py", "checkpoint-{}/trainer_state.json")}
    for target, (script, _) in scripts.items():  # both jobs run at once
        out = tmp_path / f"out-{target}"
        job = torchrun(procs, script, "--output-dir", str(out), "--job-id", f"sig-{target}", "--step-time", "0.01", jobs_dir=jobs_dir, name=f"sig-{target}")
        jobs[target] = (job, out)
    for target, (job, out) in jobs.items():
        client = wait_client(jobs_dir, f"sig-{target}", job)
        wait_step(client, 3)
        workers = workers_by_rank(job, 2)
        workers[target].send_signal(signal.SIGTERM)
        assert job.wait(TIMEOUT) == 0, job.output()[-3000:]
        lines = ended_lines(job)
        assert set(lines) == {0, 1}, job.output()[-3000:]
        step = end_step(lines[0])
        assert end_step(lines[1]) == step
        assert (out / scripts[target][1].format(step)).is_file()
        final = final_status(jobs_dir, f"sig-{target}")
        assert final["state"] == "stopped" and final["stop_reason"].startswith("signal")
        entry = next(e for e in final["commands"] if e["source"] == "signal")
        assert entry["command"] == "save_and_stop" and entry["state"] == "completed" and entry["step"] == step
        assert entry["result"]["checkpoint"] == str(out / scripts[target][1].format(step).split("/")[0])
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers.values())


def test_second_sigterm_during_the_save_ends_every_rank_without_saving(jobs_dir: Path, procs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = torchrun(
        procs,
        SCRIPT,
        "--output-dir",
        str(out),
        "--job-id",
        "sig-2",
        "--step-time",
        "0.01",
        "--save-delay",
        "600",
        jobs_dir=jobs_dir,
        env={"FORGATHER_SIGNAL_REPEAT_WINDOW": "0"},
    )
    client = wait_client(jobs_dir, "sig-2", job)
    wait_step(client, 3)
    workers = workers_by_rank(job, 2)
    workers[1].send_signal(signal.SIGTERM)
    # The first signal applied: every rank is now inside the (600 s) save.
    applied = wait_for(
        lambda: (lambda e: e if e and e.state == "applied" else None)(_signal_entry(client)), timeout=TIMEOUT, what="the signal's save_and_stop to apply"
    )
    assert applied.command == "save_and_stop"
    workers[1].send_signal(signal.SIGTERM)
    assert job.wait(TIMEOUT) != 0  # torchrun reports the worker that ended on the signal
    psutil.wait_procs(list(workers.values()), timeout=30)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers.values())
    assert not out.exists() or not any(out.iterdir())  # nothing saved
    final = final_status(jobs_dir, "sig-2")
    assert final["state"] == "aborted", final
