"""``forgather control stacks JOB``: where every rank of a job is, grouped.

The library gathers the stacks (:meth:`JobHandle.stacks`), each frame with its line of
code as read on the rank's host; this module prints them: the main thread of each group
of ranks whose stacks are the same, innermost frame last, the ranks that did not answer,
and (``--all-threads``) every thread.
"""

from __future__ import annotations

import os

import click
import msgspec

from forgather_control.client.lookup import open_job
from forgather_control.client.stackreport import DEFAULT_TIMEOUT, StacksReport, native_stacks
from forgather_control.core.records import StallNotice
from forgather_control.core.stacks import Frame, RankStacks, Thread, group, rank_list
from forgather_control.core.states import JobState

from . import options
from .output import print_json, printable, stall_line

_BOOTSTRAP = os.path.join("callback", "bootstrap.py")
#: Frames shown per thread, innermost last (a deep stack's outer frames are runpy and the trainer).
MAX_FRAMES = 30
#: Said after a frame's line when its file changed since the rank started.
CHANGED = "file changed since the rank started; line may differ"


@click.command("stacks")
@click.argument("job")
@options.as_json
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True, help="Seconds to wait for every rank's answer.")
@click.option("--all-threads", is_flag=True, help="Every thread of every rank, not only the main thread.")
@click.option("--native", is_flag=True, help="Also py-spy's native frames for the ranks on this host (needs py-spy and ptrace permission).")
@options.where
def stacks_cmd(
    job: str,
    as_json: bool,
    timeout: float,
    all_threads: bool,
    native: bool,
    jobs_dir: str | None,
    remote: str | None,
    token: str | None,
    ray: str | None,
) -> int:
    """Where every rank is: the Python stack of each, from every node, grouped."""
    reach = options.reach_timeout(ray)
    with open_job(job, jobs_dir=jobs_dir, remote=remote, token=token, ray=ray, timeout=reach) as handle:
        report = handle.stacks(timeout=timeout)
        stall, state = handle.stall, handle.state
    if native:
        local = {s.rank: s.pid for s in report.ranks if s.error is None and s.pid is not None and s.host == _hostname()}
        report.native = native_stacks(local)
    if as_json:
        print_json(msgspec.structs.replace(report.as_record(), state=state, stall=stall))
        return 0
    for line in describe(report, state=state, stall=stall, all_threads=all_threads):
        click.echo(line)
    return 0


def describe(report: StacksReport, *, state: JobState, stall: StallNotice | None, all_threads: bool = False) -> list[str]:
    """The report as lines for a person (every field from a record made printable)."""
    answered = [s for s in report.ranks if s.error is None]
    total = report.world_size if report.world_size is not None else len(report.ranks)
    out = [printable(f"job {report.job_id} ({state.value}): stacks from {len(answered)} of {total} rank(s)")]
    if stall and state == JobState.STALLED:
        out.append(f"stalled: {stall_line(stall)}")
    for ranks, threads in group(answered, all_threads=all_threads):
        out.append("")
        out.append(printable(_label(ranks)))
        for t in threads:
            out.extend(_thread_lines(t, label=all_threads))
    for s in report.ranks:
        if s.error is not None:
            out.append(printable(f"rank {s.rank} ({s.host}, pid {s.pid}): no stacks: {s.error}"))
    if report.missing:
        out.append(printable(f"no answer from rank(s) {rank_list(report.missing)}"))
    out.extend(printable(n) for n in report.notes)
    for rank, text in sorted(report.native.items()):
        out.append("")
        out.append(f"rank {rank}, native (py-spy):")
        out.extend("  " + printable(line) for line in text.splitlines())
    return out


def _label(ranks: list[RankStacks]) -> str:
    nums = [s.rank for s in ranks]
    where = "; ".join(f"{host}: pid {', '.join(str(s.pid) for s in ranks if s.host == host)}" for host in dict.fromkeys(s.host for s in ranks))
    return f"{'rank' if len(nums) == 1 else 'ranks'} {rank_list(nums)} ({where}):"


def _thread_lines(t: Thread, *, label: bool) -> list[str]:
    out = [f"  thread {t.ident:#x}{' (main)' if t.main else ''}:"] if label else []
    frames = _user_frames(list(t.frames))
    if len(frames) > MAX_FRAMES:
        out.append(f"    ... {len(frames) - MAX_FRAMES} outer frame(s)")
        frames = frames[-MAX_FRAMES:]
    for f in frames:
        out.append(printable(f"    {f}"))
        said = [part for part in (f.source, f"[{CHANGED}]" if f.changed else None) if part]
        if said:
            out.append(printable("      " + "  ".join(said)))
    if not frames:
        out.append("    (no Python frames)")
    return out


def _user_frames(frames: list[Frame]) -> list[Frame]:
    """Without the outer frames every worker shares (``python -m``'s runpy and the
    forgather bootstrap that runs the script): the stack starts at the user's code."""
    i = 0
    while i < len(frames) and (frames[i].file.startswith("<frozen runpy") or frames[i].file.endswith(_BOOTSTRAP)):
        i += 1
    return frames[i:] if i < len(frames) else frames


def _hostname() -> str:
    from forgather_control.core.host import local_host

    return local_host().hostname
