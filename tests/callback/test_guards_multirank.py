"""Guards on real jobs: ``forgather launch --nproc-per-node 2 --guard ...`` (torchrun,
gloo, CPU), the guards reaching the ranks as FORGATHER_GUARDS.

- A NaN on rank 1 alone (``--guard nan:abort``), in a plain loop, HF's Trainer and
  Lightning (the callback injected by the launcher): both ranks stop at the same step,
  the launcher exits 77, and the abort's receipt in status.json names the guard, with
  rank 1 in its evidence.
- A spike of rank 0's loss (``--guard spike:save,window=5,times=2``) saves, with a
  receipt that names the guard and the values it saw.
- A slowdown (``--guard slowdown:alert,fraction=0.5,for=2``) records an alert in
  status.json ``guard_events`` and queues nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.launcher import START_TIMEOUT, launch
from support.processes import Procs
from support.records import final_status, read_record
from support.scripts import GUARDED_HF, GUARDED_LIGHTNING, GUARDED_LOOP
from support.torchrun import end_step, ended_lines, read_traces
from support.waiting import wait_for

from forgather_control.callback.agreement import FIELDS
from forgather_control.callback.guarding import decode_vote
from forgather_control.core.outcome import EXIT_ABORTED, EXIT_STOPPED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # forgather launch, torchrun, HF and Lightning

TWO = ("--nproc-per-node", "2")
NAN_AT = 30

SCRIPTS = {
    # script text, its arguments, its environment (the launcher injects the callback into the trainers)
    "plain": (GUARDED_LOOP, ("--nan-at", str(NAN_AT), "--nan-rank", "1"), {}),
    "hf": (GUARDED_HF, ("--no-control-callback", "--step-time", "0.02", "--logging-steps", "10"), {}),
    "lightning": (GUARDED_LIGHTNING, ("--no-control-callback", "--step-time", "0.02"), {}),
}


def guard_receipts(status: dict) -> list[dict]:
    return [c for c in status.get("commands") or [] if c.get("source") == "guard"]


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_a_nan_on_rank_1_alone_aborts_both_ranks_at_the_same_step(kind: str, jobs_dir: Path, procs: Procs, tmp_path: Path) -> None:
    text, args, _ = SCRIPTS[kind]
    script = tmp_path / f"nan_{kind}.py"
    script.write_text(text)
    out, job_id = tmp_path / "out", f"nan-{kind}"
    traces = tmp_path / "traces"
    env = {
        "GUARD_NAN_AT": str(NAN_AT),
        "GUARD_NAN_RANK": "1",
        "FORGATHER_ABORT_RETURNS": "1",
        "FORGATHER_TRACE_AGREEMENT": str(traces),
    }  # the trainers' scripts print their end
    job = launch(procs, jobs_dir, job_id, script, *args, "--output-dir", str(out), opts=(*TWO, "--guard", "nan:abort"), **env)
    assert job.wait(START_TIMEOUT + 120) == EXIT_ABORTED, job.output()[-4000:]
    lines = ended_lines(job)
    assert set(lines) == {0, 1}, job.output()[-4000:]
    assert end_step(lines[0]) == end_step(lines[1]) >= NAN_AT and all("aborted=True" in line for line in lines.values()), lines
    status = final_status(jobs_dir, job_id)
    assert status["state"] == "aborted", status
    [receipt] = guard_receipts(status)
    guard = receipt["guard"]
    assert (receipt["command"], receipt["state"], receipt["step"]) == ("abort", "completed", end_step(lines[0])), receipt
    assert (guard["guard"], guard["kind"], guard["rank"], guard["step"]) == ("nan:abort,metric=loss", "nan", 1, receipt["step"]), guard
    assert f"the loss is nan on rank 1 at step {receipt['step']}" == guard["evidence"], guard
    assert [g["text"] for g in status["guards"]] == ["nan:abort,metric=loss"] and [e["id"] for e in status["guard_events"]] == [guard["id"]]
    assert not list(out.glob("**/checkpoint-*")), "an abort saves nothing"
    # Voted at the first agreed check at or after the NaN and acted on where that check
    # resolved: check k starts at the next_check check k-1 agreed and resolves the agreed
    # lag later; the vote is in the first exchange with a guard.
    trace = read_traces(traces)
    assert trace[0] == trace[1], "every rank made the same exchanges"
    nxt, vote, lag = FIELDS.index("next_check"), FIELDS.index("guard"), FIELDS.index("lag")
    voted = next(i for i, t in enumerate(trace[0]) if t[vote])
    started = trace[0][voted - 1][nxt]
    assert voted >= 2 and trace[0][voted - 2][nxt] < NAN_AT <= started, trace[0][-5:]
    assert receipt["step"] == started + trace[0][voted - 1][lag], (receipt["step"], trace[0][-5:])
    assert decode_vote(trace[0][voted][vote]) == (1, "nan")
    if kind != "plain":  # the integration handed its DDP model over: stragglers by their own time
        assert job.output().count("timing this rank's waits in the gradient all-reduce") == 2, job.output()[-4000:]


def running_until(jobs_dir: Path, job_id: str, job, what: str, pick):
    """Wait until ``pick(status.json)`` is true, failing at once when the launcher ends first."""

    def seen():
        if job.popen.poll() is not None:
            raise AssertionError(f"the launcher exited ({job.popen.returncode}) before {what}:\n{job.output()[-4000:]}")
        status = read_record(jobs_dir, job_id, "status.json")
        return status if pick(status) else None

    return wait_for(seen, timeout=START_TIMEOUT + 120, interval=0.2, what=what)


def test_a_spike_on_rank_0_saves_with_a_receipt_naming_the_guard(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    script = tmp_path / "spike.py"
    script.write_text(GUARDED_LOOP)
    out, rule = tmp_path / "out", "spike:save,window=5,times=2"
    job = launch(procs, jobs_dir, "spike", script, "--output-dir", str(out), "--spike-at", "600", opts=(*TWO, "--guard", rule))
    status = running_until(jobs_dir, "spike", job, "the spike's save", lambda st: any(r["state"] == "completed" for r in guard_receipts(st)))
    [receipt] = guard_receipts(status)
    guard = receipt["guard"]
    assert receipt["command"] == "save_checkpoint" and receipt["step"] >= 600 and Path(receipt["result"]["checkpoint"]).is_file(), receipt
    assert guard["guard"] == "spike:save,factor=3,window=5,times=2,metric=loss", guard
    assert (guard["kind"], guard["rank"], guard["command_id"]) == ("spike", 0, receipt["id"]), guard
    assert guard["values"]["ratio"] > 3 and guard["values"]["loss"] > 3 * guard["values"]["average"], guard
    assert "checks in a row" in guard["evidence"], guard
    assert cli("control", "stop", "spike", "--wait", timeout=START_TIMEOUT).code == 0
    assert job.wait(START_TIMEOUT) == EXIT_STOPPED, job.output()[-4000:]
    assert len(guard_receipts(final_status(jobs_dir, "spike"))) == 1  # one save for the episode


def test_a_slowdown_records_an_alert_and_queues_nothing(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(GUARDED_LOOP)
    rule = "slowdown:alert,fraction=0.5,for=2"
    # checks twice a second: the run's median pace is known (5 checks or more) well before step 400
    job = launch(
        procs,
        jobs_dir,
        "slow",
        script,
        "--output-dir",
        str(tmp_path / "out"),
        "--slowdown-at",
        "400",
        opts=(*TWO, "--guard", rule),
        FORGATHER_CHECK_INTERVAL="0.5",
    )
    status = running_until(jobs_dir, "slow", job, "the slowdown's alert", lambda st: st.get("guard_events"))
    [event] = status["guard_events"]
    assert (event["guard"], event["kind"], event["action"], event.get("command_id")) == ("slowdown:alert,fraction=0.5,for=2", "slowdown", "alert", None), event
    assert event["step"] >= 400 and event["values"]["steps_per_second"] < 0.5 * event["values"]["median"] and event["values"]["for"] >= 2, event
    assert "of the run's median" in event["evidence"] and not guard_receipts(status), status
    assert cli("control", "stop", "slow", "--wait", timeout=START_TIMEOUT).code == 0
    assert job.wait(START_TIMEOUT) == EXIT_STOPPED, job.output()[-4000:]
