"""The live progress bar of ``status --watch``: steps/max_steps, steps/s, ETA, loss."""

from __future__ import annotations

from collections.abc import Iterable

from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from forgather_control.client.handle import Snapshot
from forgather_control.core.records import Status
from forgather_control.core.states import JobState

from .output import duration, printable
from .render import console


class _Fields(ProgressColumn):
    """steps/s, ETA and loss from the job's own status (not rich's estimate: the job
    knows its rate better than two samples a second apart)."""

    def render(self, task: Task) -> Text:
        f = task.fields
        rate = f.get("rate")
        parts = [f"{task.completed:.0f}/{task.total:.0f}" if task.total else f"{task.completed:.0f}"]
        if JobState.parse(f.get("state")) in (JobState.RUNNING, JobState.STOPPING):  # an ended job has no ETA
            parts.append(f"{rate:.1f} steps/s" if isinstance(rate, (int, float)) else "- steps/s")
            parts.append(f"ETA {duration(f.get('eta'))}")
        loss = f.get("loss")
        if isinstance(loss, (int, float)):
            parts.append(f"loss {loss:.4g}")
        parts.append(str(f.get("state") or ""))
        return Text(printable("  ".join(parts)))


def watch(snapshots: Iterable[Snapshot], *, job_id: str) -> Status | None:
    """Show a progress bar fed by ``snapshots`` (a JobHandle's ``watch``) until the last
    one says why it ended, or the user presses Ctrl-C. Returns the last status."""
    last: Status | None = None
    ended: str | None = None
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), _Fields(), console=console(), transient=False)
    task = progress.add_task(job_id, total=None, state="connecting")
    try:
        with progress:
            for snap in snapshots:
                st, ended = snap.status, snap.ended
                if st is not None:
                    last = st
                    progress.update(
                        task,
                        completed=st.step or 0,
                        total=st.max_steps or None,
                        rate=st.steps_per_second,
                        eta=st.eta_seconds,
                        loss=(st.metrics or {}).get("loss"),
                        state=st.state.value if st.state is not None else None,
                    )
    except KeyboardInterrupt:
        ended = None
    if ended:
        console().print(Text(printable(ended)), highlight=False)
    return last
