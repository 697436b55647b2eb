"""What people see: rich tables, the status panel, and the live progress bar.

Imported only on the human paths; ``--json`` never loads rich. Only the console and
text are imported up front: ``list`` needs nothing else, and tables, panels and the
progress bar (:mod:`forgather_control.cli.watch`) cost another 15 ms of start-up.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from forgather_control.core.commands import verb
from forgather_control.core.files import owner_name
from forgather_control.core.knobs import RESUMED, SCRIPT, SET, describe, describe_value
from forgather_control.core.records import UNSET, CheckpointListed, CommandResult, JobDetails, JobRow, KnobSetting, RankTime, Receipt
from forgather_control.core.states import JobState

from .output import age, describe_entry, duration, printable, stall_line

_STATE_STYLE = {
    "running": "green",
    "stalled": "bold red",
    "starting": "cyan",
    "uncontrolled": "bold yellow",
    "stopping": "yellow",
    "ending": "yellow",
    "alive": "green",
    "finished": "blue",
    "stopped": "blue",
    "paused": "bold cyan",
    "aborted": "magenta",
    "failed": "red",
    "dead": "red",
    "stale": "yellow",
    "unknown": "yellow",
    "completed": "green",
    "queued": "cyan",
    "sent": "cyan",
    "applied": "yellow",
    "dropped": "red",
    "rejected": "red",
}


#: A job of the Forgather framework's own control callback, in the list and the status panel.
FRAMEWORK_MARK = "*"
FRAMEWORK_NOTE = (
    "the Forgather framework's own control callback: reached through its HTTP API on this host; save, stop, save-stop and abort, no eval, no receipts"
)


def console(stderr: bool = False) -> Console:
    """A console; wide when not a terminal so piped tables do not wrap job ids."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=200)


def state_text(state: Any) -> Text:
    s = printable(state or "unknown")
    return Text(s, style=_STATE_STYLE.get(s, ""))


def _t(value: Any, style: str = "") -> Text:
    """A cell from a record or a server: plain text (never rich markup), made printable."""
    return Text(printable(value), style=style)


def _step(row: JobRow) -> str:
    step, total = row.step, row.max_steps
    if step is None:
        return "-"
    return f"{step}/{total}" if total else str(step)


def _run(row: JobRow) -> str:
    """Which run of the job this is (1 for the first), from its restart count."""
    return str(row.restarts + 1) if row.restarts is not None else "-"


def jobs_table(rows: list[JobRow], *, show_node: bool = False) -> Text:
    """The ``list`` table as one styled, column-aligned Text.

    Not a ``rich.table.Table``: that measures every cell and costs about half a
    millisecond a row, which for a few hundred jobs would be most of ``list``'s
    start-up budget. Aligned text with a styled state column renders in a few ms."""
    now = time.time()
    headers = ["JOB", *(["NODE"] if show_node else []), "STATE", "STEP", "LOSS", "RUN", "HOST", "PID", "PORT", "UPDATED"]
    right = {"STEP", "LOSS", "RUN", "PID", "PORT", "UPDATED"}
    table: list[list[str]] = []
    for r in rows:
        cells = [r.job_id + (FRAMEWORK_MARK if r.framework_callback else "")]
        if show_node:
            cells.append(str(r.node or "-"))
        cells += [
            str(r.state),
            _step(r),
            f"{r.loss:.4g}" if r.loss is not None else "-",
            _run(r),
            str(r.host or "-"),
            str(r.pid or "-"),
            str(r.port or "-"),
            age(r.updated_at, now),
        ]
        table.append([printable(c) for c in cells])
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    state_col = headers.index("STATE")

    def line(cells: list[str], out: Text, styles: dict[int, str] | None = None) -> None:
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            padded = cell.rjust(width) if headers[i] in right else cell.ljust(width)
            if i < len(cells) - 1:
                padded += "  "
            out.append(padded, style=(styles or {}).get(i, ""))
        out.append("\n")

    text = Text(no_wrap=True, overflow="ignore")
    line(headers, text, {i: "bold" for i in range(len(headers))})
    text.append("-" * (sum(widths) + 2 * (len(widths) - 1)) + "\n", style="dim")
    for cells in table:
        line(cells, text, {state_col: _STATE_STYLE.get(cells[state_col], "")})
    text.rstrip()
    return text


def print_jobs(
    rows: list[JobRow], *, show_node: bool = False, where: str = "", all_: bool = False, private: dict[str, int] | None = None, hidden: int = 0
) -> None:
    """The ``list`` table and its notes: what it left out (ended jobs, other users'
    private folders) is counted, never silently dropped."""
    con = console()
    ended = f"{hidden} ended job{'s' if hidden != 1 else ''} hidden; add --all" if hidden and not all_ else ""
    if not rows:
        hint = f" ({ended})" if ended else "" if all_ else " (ended jobs are hidden; add --all)"
        con.print(_t(f"no jobs{f' in {where}' if where else ''}{hint}"), highlight=False)
        _private_note(con, private)
        return
    con.print(jobs_table(rows, show_node=show_node), crop=False, soft_wrap=True)
    if any(r.framework_callback for r in rows):
        con.print(_t(f"{FRAMEWORK_MARK} {FRAMEWORK_NOTE}", style="dim"), crop=False, soft_wrap=True, highlight=False)
    notes = [(r.job_id, r.no_control) for r in rows if r.state == JobState.UNCONTROLLED and r.no_control is not None]
    for job_id, notice in notes:
        con.print(_t(f"{job_id}: {notice.why}", style="yellow"), crop=False, soft_wrap=True, highlight=False)
    if notes:
        con.print(_t(f"to attach control: {notes[0][1].add}", style="dim"), crop=False, soft_wrap=True, highlight=False)
    if ended:
        con.print(_t(ended, style="dim"), crop=False, soft_wrap=True, highlight=False)
    _private_note(con, private)


def private_note(private: dict[str, int]) -> str:
    """One line for the job folders of other users a listing left out (private to them)."""
    counts: dict[int, int] = {}
    for uid in private.values():
        counts[uid] = counts.get(uid, 0) + 1
    whose = ", ".join(f"{n} of {owner_name(uid)}" for uid, n in sorted(counts.items()))
    folders = "folder" if len(private) == 1 else "folders"
    return f"not shown: {len(private)} job {folders} of other users, private to them ({whose})"


def _private_note(con: Console, private: dict[str, int] | None) -> None:
    if private:
        con.print(_t(private_note(private), style="dim"), crop=False, soft_wrap=True, highlight=False)


def _given(value: Any) -> Any:
    """A detail the job has, or None (a field left unset reads as None)."""
    return None if value is UNSET else value


def status_panel(d: JobDetails) -> Any:
    """Everything ``status`` knows about one job, for a person (a rich Panel)."""
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    now = time.time()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()

    state = Text.assemble(state_text(d.state))
    if d.liveness and d.liveness != d.state:
        state.append(printable(f"  ({d.liveness}: {d.evidence or ''})"), style="dim")
    elif d.evidence:
        state.append(printable(f"  ({d.evidence})"), style="dim")
    grid.add_row("state", state)
    step = _step(d)
    if d.step is not None and d.max_steps:
        step += f"  ({100.0 * d.step / d.max_steps:.1f}%)"
    grid.add_row("step", _t(step))
    epoch = _given(d.epoch)
    if epoch is not None:
        grid.add_row("epoch", _t(f"{epoch:.3g}" if isinstance(epoch, float) else str(epoch)))
    if d.state == JobState.STALLED:  # no speed and no ETA: it does not move
        grid.add_row("stalled", _t(stall_line(d.stall), style="red"))
        grid.add_row("", _t(f"where every rank is: forgather control stacks {d.job_id}", style="dim"))
    elif d.state == JobState.UNCONTROLLED:  # no step under control yet: no speed, no ETA
        notice = d.no_control
        grid.add_row("control", _t(notice.why if notice is not None and notice.why else "no control attached yet", style="yellow"))
        grid.add_row("", _t(f"to attach control: {notice.add if notice is not None else None}", style="dim"))
    elif d.state.live:  # a dead or ended job has no speed and no ETA
        rate = _given(d.steps_per_second)
        grid.add_row("speed", _t(f"{rate:.2f} steps/s" if rate is not None else "-"))
        grid.add_row("eta", _t(duration(_given(d.eta_seconds))))
    exit_code = _given(d.exit_code)
    if exit_code is not None:
        grid.add_row("exit code", _t(str(exit_code)))
    failure = _given(d.failure)
    error = _given(d.error)
    if failure is not None:
        where = f"rank {failure.rank} ({failure.host}, pid {failure.pid})"
        why = _t(f"{where}: {failure.type}: {failure.message}", style="red")
        for line in (failure.traceback or [])[-6:]:
            why.append("\n" + printable(line), style="dim")
        grid.add_row("failed", why)
    elif error:
        grid.add_row("error", _t(error, style="red"))
    elif d.why and d.state.final:
        grid.add_row("why", _t(d.why))  # a stop's or an abort's reason (JobInfo.why)
    metrics = _given(d.metrics) or {}
    if metrics:
        grid.add_row("metrics", _t(", ".join(f"{k}={_fmt(v)}" for k, v in list(metrics.items())[:12])))
    if _given(d.last_checkpoint):
        grid.add_row("checkpoint", _t(str(d.last_checkpoint)))
    if _run(d) != "-":
        run = _run(d) + (f"  (resumed from {d.resumed_from})" if d.resumed_from else "  (a fresh start)")
        grid.add_row("run", _t(run))
    where = f"{d.host or '-'}  pid {d.pid or '-'}"
    if d.world_size:
        where += f"  world size {d.world_size}"
    grid.add_row("where", _t(where))
    if d.url:
        grid.add_row("url", _t(d.url))
    if d.framework_callback:
        grid.add_row("control", _t(f"{FRAMEWORK_NOTE}; port {d.port or '-'}", style="dim"))
    if _given(d.node):
        grid.add_row("node", _t(str(d.node)))
    grid.add_row("updated", _t(age(d.updated_at, now)))
    if _given(d.started_at):
        grid.add_row("started", _t(age(d.started_at, now)))
    if _given(d.ended_at):
        grid.add_row("ended", _t(age(d.ended_at, now)))
    if _given(d.control_error):
        grid.add_row("control", _t(d.control_error, style="red"))
    if d.live is False and _given(d.live_error):
        grid.add_row("live", _t(f"no live answer: {d.live_error}", style="yellow"))
    guards = _given(d.guards) or []
    if guards:
        grid.add_row("guards", _t("; ".join(g.text for g in guards)))
    stragglers = (_given(d.stragglers) or []) if d.state.live else []
    if stragglers:
        named = "; ".join(
            f"rank {s.rank}{f' (node {s.node})' if s.node is not None else ''} {s.factor:.2f}x the median of the others"
            + (f", since step {s.step}" if s.step is not None else "")
            for s in stragglers[:8]
        )
        grid.add_row("stragglers", _t(named + (f" and {len(stragglers) - 8} more" if len(stragglers) > 8 else ""), style="yellow"))

    parts: list[Any] = [grid]
    commands = (_given(d.commands) or [])[-8:]
    if commands:
        ct = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title="recent commands", title_justify="left")
        for col in ("ID", "COMMAND", "STATE", "STEP", "RESULT", "WHEN"):
            ct.add_column(col, no_wrap=col != "RESULT")
        for c in commands:
            ct.add_row(
                _t(c.id),
                _t((verb(c.command) + (" (guard)" if c.source == "guard" else "")) if c.command else None),
                state_text(c.state),
                _t(c.step if c.step is not None else "-"),
                _t(_result(c)),
                _t(age(c.updated_at, now)),
            )
        parts.append(ct)
    events = (_given(d.guard_events) or [])[-8:]
    if events:
        gt = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title="guards fired", title_justify="left")
        for col in ("GUARD", "STEP", "RANK", "EVIDENCE", "QUEUED", "WHEN"):
            gt.add_column(col, no_wrap=col not in ("GUARD", "EVIDENCE"))
        for e in events:
            gt.add_row(
                _t(e.guard),
                _t(e.step if e.step is not None else "-"),
                _t(e.rank if e.rank is not None else "-"),
                _t(e.evidence or "-"),
                _t(f"{e.action} {e.command_id}" if e.command_id else "alert only" if e.action == "alert" else f"{e.action} not queued"),
                _t(age(e.at, now)),
            )
        parts.append(gt)
    ranks = (_given(d.ranks) or []) if d.state.live else []
    if len(ranks) > 1:
        parts.append(_ranks_table(ranks, {s.rank for s in stragglers}))
    knobs = _given(d.knobs) or []
    if knobs:
        parts.append(_knobs_table(knobs, job_id=d.job_id, live=d.state.live))
    points = _given(d.checkpoints) or []
    if points:
        parts.append(_checkpoints_table(points, job_id=d.job_id, now=now))
    return Panel(Group(*parts), title=_t(f"job {d.job_id}"), title_align="left", expand=False)


#: ranks shown in the status table; a bigger job shows its slowest (the rest in --json)
RANKS_SHOWN = 16


def _ranks_table(ranks: list[RankTime], named: set[int]) -> Any:
    """Each rank's own time per step and its ratio to the median of the others' (the
    slowest first when there are more than fit)."""
    from rich import box
    from rich.table import Table

    shown = ranks if len(ranks) <= RANKS_SHOWN else sorted(ranks, key=lambda r: -(r.ratio or 0))[:RANKS_SHOWN]
    title = "ranks" if len(shown) == len(ranks) else f"ranks (the {RANKS_SHOWN} slowest of {len(ranks)})"
    rt = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left")
    for col in ("RANK", "HOST", "NODE", "OWN TIME/STEP", "X MEDIAN", ""):
        rt.add_column(col, no_wrap=True, justify="right" if col in ("OWN TIME/STEP", "X MEDIAN") else "left")
    for r in shown:
        rt.add_row(
            _t(r.rank),
            _t(r.host or "-"),
            _t(r.node if r.node is not None else "-"),
            _t(f"{r.seconds * 1e3:.1f} ms" if r.seconds is not None else "-"),
            _t(f"{r.ratio:.2f}" if r.ratio is not None else "-"),
            _t("straggler" if r.rank in named else "", style="yellow"),
        )
    return rt


def _knobs_table(knobs: list[KnobSetting], *, job_id: str, live: bool) -> Any:
    """The job's knobs: each one's value now, the script's, where the value came from
    (the script, a ``set`` at a step by a command, or the job's last run), its range and
    what it is. An ended job's are its last: what a relaunch starts from."""
    from rich import box
    from rich.table import Table

    title = f"knobs (change one: forgather control set {job_id} NAME=VALUE)" if live else "knobs (the last values: a relaunch starts from them)"
    kt = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=_t(title), title_justify="left")
    for col in ("KNOB", "VALUE", "SCRIPT'S", "FROM", "RANGE", "WHAT"):
        kt.add_column(col, no_wrap=col not in ("WHAT",), justify="right" if col in ("VALUE", "SCRIPT'S") else "left")
    for k in knobs:
        changed = k.origin not in (None, SCRIPT)
        kt.add_row(
            _t(k.name),
            _t(describe_value(k.value) if k.value is not None else "-", style="bold" if changed else ""),
            _t(describe_value(k.default) if k.default is not None else "-"),
            _t(knob_origin(k), style="yellow" if changed else "dim"),
            _t(_knob_range(k), style="dim"),
            _t(k.help or "", style="dim"),
        )
    return kt


def _checkpoints_table(points: list[CheckpointListed], *, job_id: str, now: float) -> Any:
    """Every completed checkpoint of the job's runs, the newest last: which one a resume
    starts from, which a roll back left behind, which are gone from disk."""
    from rich import box
    from rich.table import Table

    title = f"checkpoints (roll back: forgather control resume {job_id} --from STEP)"
    ct = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=_t(title), title_justify="left")
    for col in ("RUN", "STEP", "SAVED", "PATH", ""):
        ct.add_column(col, no_wrap=col != "PATH", justify="right" if col in ("RUN", "STEP") else "left")
    for p in points:
        notes = [n for n, on in (("resume point", p.resume_point), ("left behind", p.left_behind), ("gone", p.on_disk is False)) if on]
        ct.add_row(
            _t((p.run or 0) + 1),
            _t(p.step if p.step is not None else "-"),
            _t(age(p.saved_at, now) if p.saved_at else "-"),
            _t(p.path),
            _t(", ".join(notes), style="bold" if p.resume_point else "dim"),
        )
    return ct


def knob_origin(k: KnobSetting) -> str:
    """Where a knob's value came from: ``script``, ``set at step 120 (c-1a2b)``, ``resumed``."""
    if k.origin == SET:
        at = f" at step {k.step}" if k.step is not None else ""
        return f"set{at}" + (f" ({k.command_id})" if k.command_id else "")
    if k.origin == RESUMED:
        return "resumed (the job's last run)"
    return k.origin or "-"


def _knob_range(k: KnobSetting) -> str:
    if k.kind == "bool":
        return "true/false"
    low = f"> {describe_value(k.above)}" if k.above is not None else f">= {describe_value(k.min)}" if k.min is not None else ""
    high = f"<= {describe_value(k.max)}" if k.max is not None else ""
    bounds = ", ".join(b for b in (low, high) if b)
    return f"{k.kind} {bounds}" if bounds else k.kind


def print_status(d: JobDetails) -> None:
    console().print(status_panel(d))


def _result(entry: Receipt) -> str:
    """What came of a command, in a few words."""
    r = entry.result or CommandResult()
    if r.changes:
        return describe(r.changes)
    if r.checkpoint:
        return r.checkpoint
    if r.metrics:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in list(r.metrics.items())[:4])
    if entry.reason:
        return entry.reason
    if r.final_state:
        return f"job {r.final_state}"
    return ""


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_entry(entry: Receipt, *, stderr: bool = False) -> None:
    state = str(entry.state)
    con = console(stderr=stderr)
    con.print(Text(describe_entry(entry), style=_STATE_STYLE.get(state, "")), highlight=False)


def print_cleanup(rows: list[JobRow], *, title: str) -> None:
    from rich import box
    from rich.table import Table

    con = console()
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left")
    for col in ("JOB", "STATE", "WHY", "UPDATED"):
        table.add_column(col, no_wrap=col != "WHY")
    now = time.time()
    for r in rows:
        table.add_row(_t(r.job_id), state_text(r.state), _t(r.evidence or ""), _t(age(r.updated_at, now)))
    con.print(table)
