"""`status` for a person: each rank's own time per step and the stragglers (issue 21),
written clean whatever a record holds; a big job shows its slowest ranks."""

from __future__ import annotations

import io

from rich.console import Console

from forgather_control.cli import render
from forgather_control.core.records import JobDetails, RankTime, Straggler
from forgather_control.core.states import JobState


def shown(d: JobDetails) -> str:
    out = io.StringIO()
    Console(file=out, width=140, color_system=None).print(render.status_panel(d))
    return out.getvalue()


def test_the_ranks_table_names_the_straggler_and_prints_a_hostile_host_clean() -> None:
    d = JobDetails(
        job_id="j",
        state=JobState.RUNNING,
        ranks=[RankTime(rank=0, node=0, seconds=0.0321, ratio=0.68, host="evil\x1b[2J"), RankTime(rank=1, node=1, seconds=0.047, ratio=1.46, host="b")],
        stragglers=[Straggler(rank=1, factor=1.46, step=103, node=1)],
    )
    text = shown(d)
    assert "stragglers  rank 1 (node 1) 1.46x the median of the others, since step 103" in text
    rows = {line.split()[1]: line.split() for line in text.splitlines() if line.split()[1:2] and line.split()[1] in ("0", "1")}
    assert rows["0"][2:6] == ["evil\\x1b[2J", "0", "32.1", "ms"] and rows["1"][-2:] == ["straggler", "│"]
    assert "\x1b" not in text


def test_a_big_job_shows_its_sixteen_slowest_ranks_and_an_ended_one_none() -> None:
    ranks = [RankTime(rank=r, node=r // 8, seconds=0.01 + r * 1e-4, ratio=1.0 + r / 1000) for r in range(64)]
    text = shown(JobDetails(job_id="j", state=JobState.RUNNING, ranks=ranks))
    assert f"ranks (the {render.RANKS_SHOWN} slowest of 64)" in text
    listed = [int(line.split()[1]) for line in text.splitlines() if line.split()[1:2] and line.split()[1].isdigit() and len(line.split()) > 5]
    assert listed == list(range(63, 63 - render.RANKS_SHOWN, -1))
    assert "ranks" not in shown(JobDetails(job_id="j", state=JobState.FINISHED, ranks=ranks)).split("updated")[1]
