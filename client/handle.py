"""One job and the way to reach it: what every command, the CLI's and a script's, goes through.

A :class:`JobHandle` is made by :func:`~forgather_control.client.lookup.open_job` from a
job id or prefix: from a jobs directory (its records, liveness judged, HTTP with the
endpoint's token or the file channel), from ``--remote HOST:PORT``, or from a Ray
cluster. It owns the rules that hold whatever asks: which channel a job can be reached
on, whether it can take a command at all, where its status comes from when the server
is gone, and when waiting for a receipt can end.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import msgspec

from forgather_control.client import framework_jobs
from forgather_control.client.jobinfo import LIVE_FIELDS, JobInfo, overlay, stall_of
from forgather_control.client.listing import judge_job
from forgather_control.client.stackreport import StacksReport, collect
from forgather_control.client.transport import FileTransport, HttpTransport, NotSent, Transport, probe_endpoint
from forgather_control.core.commands import ABORT_GRACE, BadOptions, Command, State, is_final_receipt, new_key, parse_command
from forgather_control.core.errors import CommandFailed, ControlError, JobEnded, Unreachable, UsageError, WaitTimeout
from forgather_control.core.knobs import KnobError, check_changes, parse_assignment
from forgather_control.core.ledger import parse_options
from forgather_control.core.liveness import Liveness, is_loopback_url, same_host
from forgather_control.core.records import (
    CommandOptions,
    CommandResult,
    Endpoint,
    Job,
    JobDetails,
    JobRow,
    KnobChange,
    KnobSetting,
    KnobValue,
    MetricHistory,
    Receipt,
    StallNotice,
    Status,
    load_or_none,
)
from forgather_control.core.states import JobState, is_final

log = logging.getLogger(__name__)

CHANNELS = ("auto", "http", "file")
#: How often ``wait`` and ``watch`` judge a local job's liveness again unless their
#: ``rejudge_every`` says otherwise (a job whose processes died leaves a status.json that
#: says "running" forever).
REJUDGE_EVERY = 2.0
_KNOB_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _as_sent(value: object) -> KnobValue | str:
    """A value a caller gave for a knob, as it goes on the wire: a bool or a number as
    is, anything else as its text (the job reads it as the knob's kind)."""
    if isinstance(value, (bool, int, float)):
        return value
    return str(value)[:64]


@dataclass(frozen=True)
class Snapshot:
    """One look at a watched job: its status (None while it has none) and, on the last
    snapshot, why watching ended."""

    status: Status | None
    ended: str | None = None


class JobHandle:
    """A job found somewhere, and the transport that reaches it.

    ``info`` holds the job's records when it was found in a jobs directory (None for
    ``--remote`` and Ray); ``summary`` is what a remote server or a Ray node said of it.
    ``fallback``: a command HTTP did not send goes to the job's inbox (channel auto).
    """

    def __init__(
        self,
        job_id: str,
        transport: Transport,
        *,
        info: JobInfo | None = None,
        summary: JobRow | None = None,
        timeout: float = 5.0,
        ray: tuple[str, str | None] | None = None,
        fallback: bool = False,
    ) -> None:
        self.job_id = job_id
        self.fallback = fallback
        self.transport = transport
        self.info = info
        self.summary = summary
        self.timeout = timeout
        #: (address, jobs dir) of the Ray cluster the job was found through
        self.ray = ray
        self._warned_stale = False

    @classmethod
    def from_info(cls, info: JobInfo, *, channel: str = "auto", timeout: float = 5.0) -> JobHandle:
        """A handle for a job read from a jobs directory; ``channel`` auto, http or file."""
        return cls(info.job_id, local_transport(info, channel, timeout=timeout), info=info, timeout=timeout, fallback=channel == "auto")

    # -- what it is ---------------------------------------------------------------------
    @property
    def channel(self) -> str:
        return self.transport.channel

    @property
    def state(self) -> JobState:
        if self.info is not None:
            return self.info.state
        return self.summary.state if self.summary is not None else JobState.UNKNOWN

    @property
    def stall(self) -> StallNotice | None:
        """Why the job counts as stalled (how long, the step, what rank 0 is doing), or None."""
        if self.info is not None:
            return self.info.stall
        return self.summary.stall if self.summary is not None else None

    def refresh(self) -> JobState:
        """Read the job's records again and judge them now (a local job only)."""
        if self.info is not None:
            self.info = judge_job(self.info.paths, probe=probe_endpoint)
        return self.state

    def details(self) -> JobDetails:
        """Everything known about the job (``status --json``): its records, overlaid with
        what its server says right now. ``live`` tells whether the server answered."""
        d = self.info.details() if self.info is not None else JobDetails.of(self.summary or JobRow(job_id=self.job_id))
        d.live = False
        dead = self.info is not None and self.info.liveness in (Liveness.DEAD, Liveness.FINISHED)
        if self.channel not in ("http", framework_jobs.CHANNEL) or dead:
            return d
        try:
            live = self.transport.status()
        except Unreachable as exc:
            if self.info is None:
                raise
            d.live_error = str(exc)
            return d
        overlay(d, live, LIVE_FIELDS)
        if self.info is not None and isinstance(d.ranks, list):
            d.ranks = self.info.with_hosts(d.ranks)  # the server names each rank's node, not its host
        if d.resume_point is None and self.info is not None:
            d.resume_point = self.info.resume_point()  # the run's own says none yet; the job's stands
        d.live = True
        d.stall = stall_of(live, time.time())
        if d.stall is not None:
            d.state = JobState.STALLED
        return d

    def status(self) -> Status:
        """The job's status right now: from its server, else from its status.json."""
        try:
            return self.transport.status()
        except Unreachable:
            if self.info is None or self.channel != "http":
                raise
            return FileTransport(self.info.paths).status()

    def metrics(self, since: int | None = None) -> MetricHistory:
        """The job's metric history (points after step ``since`` when given): from its
        server while it serves, else from its folder (a finished job keeps its curves)."""
        try:
            return self.transport.metrics(since)
        except Unreachable:
            if self.info is None or self.channel == "file":
                raise
            return FileTransport(self.info.paths).metrics(since)

    def stall_notice(self, command: Command) -> str | None:
        """What to tell someone who sends ``command`` to this job while it is stalled
        (None when it is not): a command applies at an agreed step, which a hung rank
        never reaches; only an abort is carried out without one, by the launcher."""
        stall = self.stall
        if stall is None:
            return None
        secs = stall.for_
        how_long = f"no step for {secs:.0f}s (at step {stall.step}): " if secs is not None else ""
        head = f"job {self.job_id} is stalled: {how_long}{stall.why}"
        where = f"see where every rank is with `forgather control stacks {self.job_id}`"
        if command != Command.ABORT:
            return (
                f"{head}. The {command.value} is queued and applies only if the job recovers; {where}, or end it with `forgather control abort {self.job_id}`"
            )
        launched = self.info is not None and bool(self.info.nodes)
        if launched:
            return f"{head}. If its ranks cannot agree on the abort within {ABORT_GRACE:g}s, its launcher ends every rank"
        return f"{head}. It was not started by `forgather launch`: if the abort cannot apply, end its processes yourself; {where}"

    def no_control_notice(self) -> str | None:
        """What to tell someone who sends a command to a job that has no control attached
        (``uncontrolled``), or None: nothing takes it unless the script starts a Controller."""
        notice = self.info.no_control if self.info is not None else self.summary.no_control if self.summary is not None else None
        if notice is None:
            return None
        return f"job {self.job_id} has {notice.why}. The command waits in its inbox and applies only if one starts; to attach control: {notice.add}"

    def stacks(self, *, timeout: float = 10.0) -> StacksReport:
        """Every rank's Python stacks, from every node (through the job folder, or Ray),
        within ``timeout``; the report names the ranks that did not answer."""
        if self.info is not None:
            return collect(self.info, timeout=timeout)
        if self.ray is not None:
            from forgather_control.client.ray_listing import stacks_cluster
            from forgather_control.core.stacks import RankStacks

            found, missing = stacks_cluster(self.job_id, address=self.ray[0], jobs_dir=self.ray[1], timeout=timeout)
            ranks = {r.rank: r for r in (RankStacks.from_record(x) for x in found) if r is not None}
            world = self.summary.world_size if self.summary is not None else None
            report = StacksReport(self.job_id, world, [ranks[r] for r in sorted(ranks)])
            report.missing = [r for r in range(report.world_size or 0) if r not in ranks]
            report.notes += [f"Ray node {m.node} did not answer: {m.reason}" for m in missing]
            return report
        raise UsageError(
            f"job {self.job_id} was reached through its server only; its ranks' stacks are taken on their hosts. "
            "Run this where its jobs directory is, or pass --ray"
        )

    # -- commands -----------------------------------------------------------------------
    def send(self, command: Command | str, *, key: str | None = None, options: CommandOptions | None = None) -> Receipt:
        """Queue a command; returns its receipt (queued, sent to the inbox, or rejected).

        Every command carries an idempotency key (``key``, else a fresh one): sending the
        same command again with the same key returns the first receipt and queues
        nothing, so a retry after :class:`OutcomeUnknown` is always safe, even after the
        job has ended (its receipt is then read from status.json). A key that names
        another command is refused. Raises before sending anything when the job cannot
        take commands. On channel auto, a command its server did not take before a byte
        of it was sent (:class:`NotSent`) goes to the job's inbox, with a warning."""
        try:
            cmd = command if isinstance(command, Command) else parse_command(command)
            options = parse_options(cmd, options)
        except (ValueError, BadOptions) as exc:
            raise UsageError(str(exc)) from None
        try:
            self.check_controllable()
        except JobEnded:
            first = FileTransport(self.info.paths).entry("", key) if key is not None and self.info is not None else None
            if first is not None and first.command == cmd.value:
                return first  # the retry of a command the job took before it ended
            raise
        key = key or new_key()
        try:
            return self.transport.send(cmd, key, options)
        except NotSent as exc:
            if not (self.fallback and self.info is not None and isinstance(self.transport, HttpTransport)):
                raise
            log.warning("job %s's server did not take the %s (%s); it goes to the job's inbox (the file channel) instead", self.job_id, cmd.value, exc)
            self.transport.close()
            self.transport = FileTransport(self.info.paths)
            return self.transport.send(cmd, key, options)

    def set(self, changes: Mapping[str, object] | Iterable[KnobChange | str], *, key: str | None = None) -> Receipt:
        """Queue a ``set``: knob changes (``{"lr_scale": 0.5}``, or ``"NAME=VALUE"`` as
        typed), applied on every rank at one agreed step. Checked first against the knobs
        the job's status lists (:func:`~forgather_control.core.knobs.check_changes`): a
        knob it does not have, a value of the wrong kind or out of range raises
        :class:`~forgather_control.core.errors.BadKnob` before anything is sent. Rank 0
        checks again, and its refusal is a BadKnob too; nothing is queued either way.
        Returns the receipt; follow it with :meth:`wait`."""
        if isinstance(changes, Mapping):
            asked = [KnobChange(name=str(name), value=_as_sent(value)) for name, value in changes.items()]
        else:
            asked = [c if isinstance(c, KnobChange) else parse_assignment(str(c)) for c in changes]
        for change in asked:
            if not isinstance(change.name, str) or not _KNOB_NAME.fullmatch(change.name):
                raise KnobError(f"{str(change.name)[:64]!r} is not a knob name (lowercase letters, digits and _, starting with a letter)")
        known = self.knobs()
        if known is not None:
            asked = check_changes(known, asked)
        return self.send(Command.SET, key=key, options=CommandOptions(changes=asked))

    def knobs(self) -> list[KnobSetting] | None:
        """The job's knobs as its status says now (its server's when it answers), or None
        when no status says (a job starting: rank 0 is then the only judge of a set).
        Raises BadKnob for a running job that has declared none."""
        if self.channel == framework_jobs.CHANNEL:
            raise UsageError(f"job {self.job_id} runs {framework_jobs.WHAT}, which has no knobs; launch it with `forgather launch` to change them live")
        status: Status | None = None
        if self.channel == "http":
            try:
                status = self.transport.status()
            except ControlError:
                status = None
        if status is None and self.info is not None:
            status = self.info.current_status
        if status is None or status.state not in (JobState.RUNNING, JobState.STOPPING):
            return None
        if not status.knobs:
            raise KnobError(
                f"job {self.job_id} has no knobs (yet): a trainer declares its own when training starts, a plain loop with ctl.knob(...); "
                f"`forgather control status {self.job_id}` lists them"
            )
        return status.knobs

    def check_followable(self, command: Command | str) -> None:
        """Raise UsageError before anything is sent when ``wait`` could not follow
        ``command`` on this job (a save to a job of the framework's own callback)."""
        if self.channel == framework_jobs.CHANNEL:
            framework_jobs.check_followable(command)

    def check_controllable(self) -> None:
        """Say clearly why the job cannot take commands, before anything is sent."""
        if self.info is None:
            return  # a remote or Ray job: its server is the judge
        check_controllable(self.info, self.channel)
        if self.info.liveness == Liveness.STALE and self.channel != "file" and not self._warned_stale:
            self._warned_stale = True
            log.warning("job %s looks stale (%s); trying anyway", self.job_id, self.info.evidence)

    def entry(self, command_id: str, key: str | None = None) -> Receipt | None:
        """A command's receipt: from the server, else from status.json (by id, or by
        the key it was sent with)."""
        try:
            found = self.transport.entry(command_id, key)
        except Unreachable:
            if self.info is None:
                raise
            found = None
        if found is None and self.info is not None and self.channel != "file":
            found = FileTransport(self.info.paths).entry(command_id, key)
        return found

    def wait(
        self,
        command_id: str,
        *,
        key: str | None = None,
        timeout: float = 300.0,
        interval: float = 0.2,
        rejudge_every: float = REJUDGE_EVERY,
        on_poll: Callable[[Receipt | None], None] | None = None,
        command: Command | str | None = None,
    ) -> Receipt:
        """Follow a command to its final receipt. The server going away is not an error
        when the job's records (or, for a remote job, the command itself) say how it
        ended; a job that ends without taking the command ends the wait with why.
        ``key``: the command's idempotency key, to follow a re-sent command file that
        rank 0 answered with the first receipt. A job of the framework's own callback
        keeps no receipts: its stop, save-stop or abort (``command``) is followed until
        the job ends (:func:`~forgather_control.client.framework_jobs.follow`).
        ``rejudge_every``: seconds between judgements of a local job's liveness (its
        processes may die with the command open and nobody left to say so)."""
        if self.channel == framework_jobs.CHANNEL and self.info is not None:
            if command is None:
                raise UsageError(f"job {self.job_id} keeps no receipts; name the command to follow its end (wait(..., command=...))")
            return framework_jobs.follow(self.info, command, timeout=timeout, interval=interval, on_poll=on_poll)
        deadline = time.monotonic() + timeout
        judged = time.monotonic()
        last: Receipt | None = None
        while True:
            try:
                last = self.entry(command_id, key) or last
            except Unreachable as exc:
                gone = _server_gone_after_stop(last)
                if gone is None or last is None:
                    why = str(exc).removesuffix("; nothing was sent")  # said of the request that read it, not the command
                    seen = f"last seen {last.state}" if last is not None else "not yet picked up"
                    raise type(exc)(
                        f"lost the job while following command {command_id} ({seen}): {why}. "
                        f"The command was sent; see how the job ended with `forgather control status {self.job_id}`"
                    ) from None
                log.warning("the job's server went away after %s applied at step %s: it has ended", last.command, last.step)
                return gone
            if last is not None and is_final_receipt(last):
                return last
            if on_poll is not None:
                on_poll(last)
            if time.monotonic() >= deadline:
                state = last.state if last is not None else "not yet picked up"
                if last is None and self.info is not None and self.refresh() == JobState.UNCONTROLLED:
                    raise WaitTimeout(f"command {command_id} was not picked up after {timeout:g}s: {self.no_control_notice()}")
                raise WaitTimeout(
                    f"command {command_id} is still {state} after {timeout:g}s; it stays queued. Check later with `forgather control status {self.job_id}`"
                )
            ended = self._ended_without(command_id, key, last)
            if ended is not None:
                return ended
            if self.info is not None and time.monotonic() - judged > rejudge_every:
                judged = time.monotonic()
                self.refresh()  # its processes may be gone with nobody left to say so
                if self.info.liveness in (Liveness.DEAD, Liveness.FINISHED):
                    last = FileTransport(self.info.paths).entry(command_id, key) or last
                    if last is not None and is_final_receipt(last):
                        return last
                    raise CommandFailed(
                        f"job {self.job_id} has ended ({self.info.state}: {self.info.evidence}) and command {command_id} "
                        f"never reached a final state (last seen {last.state if last is not None else 'not picked up'})"
                    )
            time.sleep(interval)

    def _ended_without(self, command_id: str, key: str | None, last: Receipt | None) -> Receipt | None:
        """The final receipt when the job's records show it ended; raises CommandFailed
        when it ended without one. None while the job may still take the command."""
        info = self.info
        if info is None:
            return None
        if info.endpoint is None:
            # Sent to a job that was starting: if its launcher has recorded the end (it
            # died before rank 0 took the command), waiting longer cannot help.
            job = load_or_none(info.paths.job, Job)
            if job is None or not is_final(job.state):
                return None
            last = self.entry(command_id, key) or last
            if last is not None and is_final_receipt(last):
                return last
            raise CommandFailed(f"job {self.job_id} ended ({job.state}, exit code {job.exit_code}) before it took command {command_id}")
        if info.paths.endpoint.exists():
            return None
        # The job ended (rank 0 removed its endpoint); status.json is final.
        last = self.entry(command_id) or last
        if last is not None and is_final_receipt(last):
            return last
        st = load_or_none(info.paths.status, Status)
        if st is not None and is_final(st.state):
            raise CommandFailed(f"job {self.job_id} ended ({st.state}) and its ledger has no final entry for command {command_id}")
        return None

    # -- following ----------------------------------------------------------------------
    def watch(self, *, interval: float = 0.5, rejudge_every: float = REJUDGE_EVERY) -> Iterator[Snapshot]:
        """Snapshots of the job's status every ``interval`` seconds until it ends (a final
        state, a dead verdict, or a remote server gone); the last one says why. A local
        job's liveness is judged again every ``rejudge_every`` seconds."""
        last_judged = time.monotonic()
        while True:
            try:
                st = self.status()
            except Unreachable as exc:
                if self.info is None:
                    yield Snapshot(None, f"lost contact with job {self.job_id}: {exc}")
                    return
                st = None
            state = st.state if st is not None else None
            if st is not None and state is not None and state.final:
                yield Snapshot(st, f"job {self.job_id} {state} at step {st.step}")
                return
            if self.info is not None and time.monotonic() - last_judged > rejudge_every:
                last_judged = time.monotonic()
                self.refresh()
                if self.info.liveness == Liveness.DEAD:
                    yield Snapshot(st, f"job {self.job_id} is dead ({self.info.evidence})")
                    return
                if self.channel == framework_jobs.CHANNEL and not self.info.framework:
                    yield Snapshot(st, f"job {self.job_id}'s training has ended (the framework's callback removed its endpoint)")
                    return
            yield Snapshot(st)
            time.sleep(interval)

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> JobHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r}, channel={self.channel!r})"


def check_controllable(info: JobInfo, channel: str) -> None:
    """Raise, with the reason and what to do, when the job ``info`` describes cannot take
    a command over ``channel``."""
    jid = info.job_id
    if info.corrupt:
        raise Unreachable(f"job {jid}'s records are corrupt ({'; '.join(info.corrupt)}); it cannot be controlled through them")
    if info.liveness == Liveness.FINISHED:
        raise JobEnded(f"job {jid} has ended ({info.state}); there is nothing left to command")
    if info.liveness == Liveness.DEAD:
        raise JobEnded(f"job {jid} is dead ({info.evidence}); it cannot take commands. Remove its records with `forgather control cleanup`")
    if info.framework:
        framework_jobs.check_reachable(info)
        return
    if info.endpoint is None and info.state in (JobState.STARTING, JobState.UNCONTROLLED):
        # The launcher runs and rank 0 polls the inbox once its control plane is up (the
        # launcher cleared the inbox before starting the workers, so a command dropped
        # now is this run's): queue it there rather than make the user retry.
        if channel == "http":
            raise Unreachable(
                f"job {jid} is {info.state}: rank 0 does not serve HTTP yet. Retry in a moment, or leave out --channel http to queue the command in its inbox"
            )
        return
    if info.endpoint is None and info.state == JobState.REQUEUED:
        sched = info.job.scheduler if info.job is not None else None
        slurm_id = sched.slurm_job_id if sched is not None else None
        raise Unreachable(
            f"job {jid} was requeued and waits in SLURM's queue; it takes commands once it runs again"
            + (f". To keep it from running again: scancel {slurm_id}" if slurm_id else "")
        )
    if info.endpoint is None:
        raise Unreachable(f"job {jid} has no endpoint.json (it has not started its control plane, or it ended); check `forgather control status {jid}`")


def local_transport(info: JobInfo, channel: str, *, timeout: float = 5.0) -> Transport:
    """The transport for a job found in a jobs directory.

    ``auto``: HTTP when the endpoint has a URL this host can use, else the file channel.
    A loopback URL written on another host names *that* host's loopback: connecting to it
    here would reach whatever listens on the port on this machine and hand it the job's
    token. Such a job is reached through the file channel (the jobs directory is shared,
    or we would not see it), and ``http`` is refused with the reason.
    """
    if channel not in CHANNELS:
        raise UsageError(f"unknown channel {channel!r}; use auto, http or file")
    if info.framework:
        if channel == "file":
            raise UsageError(f"job {info.job_id} runs {framework_jobs.WHAT}, which has no file channel (inbox); leave out --channel file")
        return framework_jobs.FrameworkTransport(info, timeout=timeout)
    ep = info.endpoint or Endpoint()
    url = ep.url
    foreign_loopback = url is not None and is_loopback_url(url) and not same_host(ep)
    if channel == "http" and foreign_loopback:
        raise Unreachable(
            f"job {info.job_id} serves HTTP on the loopback of {ep.host or 'another host'} ({url}); "
            "it cannot be reached from here. Use --channel file, or run the command on that host"
        )
    if channel == "http" and url is None:
        check_controllable(info, channel)  # the job's own reason first, when it has one
        raise Unreachable(f"job {info.job_id} has no HTTP endpoint (it ended, or serves the file channel only); try --channel file")
    if channel == "file" or url is None or foreign_loopback:
        return FileTransport(info.paths)
    return HttpTransport(url, ep.token, info.job_id, timeout=timeout)


def _server_gone_after_stop(last: Receipt | None) -> Receipt | None:
    """A remote job's server goes away when a stop applies: that is the stop working, not
    the job being unreachable. The receipt it would have written, or None."""
    if last is None or State.parse(last.state) != State.APPLIED:
        return None
    if last.command == Command.PAUSE.value and last.result is not None and last.result.checkpoint:
        # its checkpoint was written: the pause did its part, the job has ended
        return msgspec.structs.replace(last, state=State.COMPLETED.value, result=msgspec.structs.replace(last.result, final_state="ended (server gone)"))
    if last.command not in (Command.GRACEFUL_STOP.value, Command.ABORT.value):
        return None
    return msgspec.structs.replace(last, state=State.COMPLETED.value, result=CommandResult(step=last.step, final_state="ended (server gone)"))
