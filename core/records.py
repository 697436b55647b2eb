"""Every record of the jobs directory is one typed class, decoded and checked once, here.

Other users, other programs, older and newer releases and crashed processes write the
jobs directory. A record is a JSON object read by :func:`~.files.read_record`; here it
becomes one :class:`msgspec.Struct` (``Status``, ``Job``, ``Endpoint``, ...) whose fields
carry their type, range and size, or a :class:`RecordError` naming the field, so the
job it belongs to shows as ``corrupt`` with the reason while every other job is listed
as usual. Unknown fields are dropped: what passes on is only what was checked. Writers
build the same classes and write them with :func:`encode`, so a record has one shape.

msgspec, not pydantic: importing pydantic and building models costs about 100 ms, which
``forgather control list`` (0.3 s budget, most of it Python's own start-up) cannot pay;
msgspec imports in a few milliseconds and checks a record in a few microseconds. JSON is
parsed by :mod:`json` first (a diverging loss is written as ``NaN``, which strict JSON
parsers refuse) and the parsed object converted.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import re
from typing import Annotated, Any, ClassVar, Self, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from forgather_control.core.files import RecordError, read_record
from forgather_control.core.ids import JOB_ID_PATTERN
from forgather_control.core.states import JobState

__all__ = [
    "UNSET",
    "AgreementTrace",
    "Alert",
    "AlertClaim",
    "AlertSinks",
    "CheckpointListed",
    "CheckpointRecord",
    "ClusterNode",
    "CommandFile",
    "CommandOptions",
    "CommandResult",
    "Endpoint",
    "FailureRecord",
    "FrameRecord",
    "GuardFiring",
    "GuardRule",
    "Http",
    "Identity",
    "Job",
    "JobDetails",
    "JobRow",
    "KnobCarry",
    "KnobChange",
    "KnobSetting",
    "KnobValue",
    "Mark",
    "Marker",
    "MetricHistory",
    "Metrics",
    "MissingNode",
    "NoControl",
    "Node",
    "RankTime",
    "Receipt",
    "Record",
    "RecordError",
    "Relaunch",
    "ResumeRequest",
    "RollBack",
    "Scheduler",
    "Series",
    "ServedJob",
    "SettledEntry",
    "SlurmBatch",
    "StackAnswer",
    "StackRank",
    "StacksRegistration",
    "Stall",
    "StallNotice",
    "Status",
    "Straggler",
    "ThreadRecord",
    "UnsetType",
    "decode",
    "encode",
    "from_json",
    "load",
    "load_or_none",
    "parse_json",
    "to_json",
]

#: Strings longer than this are not ours (a path, a host name, a reason).
MAX_TEXT = 4096
_MAX_INT = 1 << 62


Text = Annotated[str, Meta(max_length=MAX_TEXT)]
Str16 = Annotated[str, Meta(max_length=16)]
Str64 = Annotated[str, Meta(max_length=64)]
Str128 = Annotated[str, Meta(max_length=128)]
Str200 = Annotated[str, Meta(max_length=200)]
Str256 = Annotated[str, Meta(max_length=256)]
Str500 = Annotated[str, Meta(max_length=500)]
Str512 = Annotated[str, Meta(max_length=512)]
Str1024 = Annotated[str, Meta(max_length=1024)]
Str2000 = Annotated[str, Meta(max_length=2000)]
Str2048 = Annotated[str, Meta(max_length=2048)]
Host = Annotated[str, Meta(max_length=255)]
Short = Annotated[str, Meta(max_length=32)]
Count = Annotated[int, Meta(ge=0, le=_MAX_INT)]
Pid = Annotated[int, Meta(ge=1, le=1 << 31)]
Rank = Annotated[int, Meta(ge=0, le=1 << 20)]
ExitCode = Annotated[int, Meta(ge=-(1 << 31), le=1 << 31)]
#: A time or a duration: finite and not negative (``le`` refuses the infinities, ``ge`` NaN).
When = Annotated[float, Meta(ge=0, le=1e300)]
#: A metric value: a number (NaN and infinities allowed: a loss can diverge), a short
#: string, a boolean or null.
Metric = int | float | Annotated[str, Meta(max_length=256)] | bool | None
#: A set of metrics by name (a status's ``metrics``, an evaluation's result).
Metrics = dict[str, Metric]


class Record(Struct, kw_only=True, omit_defaults=True):
    """A record: decoded with :func:`decode`, written with :func:`encode`."""

    #: Fields :func:`encode` writes even at their default (null): where a reader tells
    #: "there is none" from "not said" (a framework acknowledgement's null ``id``).
    always: ClassVar[tuple[str, ...]] = ()

    def as_record(self) -> dict[str, Any]:
        return encode(self)


class Identity(Record):
    """Who wrote a record: the process (pid and start time) on a host (name and boot id),
    in a PID namespace (``pid_ns``: the inode of its /proc/self/ns/pid; two containers
    on one host share its name and boot id, not their pids)."""

    host: Host | None = None
    boot_id: Str128 | None = None
    pid: Pid | None = None
    pid_start_time: When | None = None
    pid_ns: Count | None = None


#: A knob's value: a number (finite: a knob is never NaN) or a boolean.
KnobValue = bool | int | Annotated[float, Meta(ge=-1e300, le=1e300)]


class CheckpointRecord(Record):
    """A checkpoint as a record names it (:class:`~.checkpoints.Checkpoint` is what it means).
    ``knobs``: the job's knob values when it was written (a resumed run's optimizer and
    scheduler come back with the learning-rate scale of then: :mod:`.knobs`)."""

    path: Text | None = None
    step: Count | None = None
    run: Count | None = None
    saved_at: When | None = None
    knobs: Annotated[dict[Str64, KnobValue], Meta(max_length=64)] | None = None
    #: a roll back (``forgather control resume --from``) went to an older checkpoint: this
    #: one stays on disk and in the history, and resume no longer takes it unless named
    left_behind: bool | None = None


class KnobChange(Record):
    """One knob change: asked (``set lr_scale=0.5``: ``value`` as sent, a number or the
    text typed) and, in a receipt's result, done (``old`` -> ``value``, as applied)."""

    name: Str64
    value: KnobValue | Str64
    old: KnobValue | None = None


class KnobCarry(Record):
    """``FORGATHER_KNOBS``: what a relaunch carries from the job's last run (the launcher
    writes it unless ``--script-knobs``): the knobs' last values, and their values when
    the checkpoint it resumes from was written."""

    values: Annotated[dict[Str64, KnobValue], Meta(max_length=64)] = msgspec.field(default_factory=dict)
    at_checkpoint: Annotated[dict[Str64, KnobValue], Meta(max_length=64)] | None = None


class KnobSetting(Record):
    """A knob of a running job (``status.json`` ``knobs``): its kind and range, its value
    now and where that came from (``script``, ``set`` at ``step`` by ``command_id``, or
    ``resumed`` from the job's last run). Declared by :class:`~.knobs.KnobTable` only."""

    name: Str64
    kind: Short
    value: KnobValue | None = None
    default: KnobValue | None = None
    min: Annotated[float, Meta(ge=-1e300, le=1e300)] | None = None
    max: Annotated[float, Meta(ge=-1e300, le=1e300)] | None = None
    #: the value must be above this (exclusive): a learning rate above 0
    above: Annotated[float, Meta(ge=-1e300, le=1e300)] | None = None
    origin: Short | None = None
    step: Count | None = None
    command_id: Str64 | None = None
    help: Str256 | None = None
    #: false: a relaunch does not carry it (``lr``: its changes are ``lr_scale``'s)
    carry: bool | None = None


class CommandOptions(Record):
    """What a command may carry beyond its name (:data:`~.ledger.COMMAND_OPTIONS` says
    which command takes which): ``evaluate`` false on a save skips the evaluation a
    trainer with evaluation set up runs first."""

    evaluate: bool | None = None
    #: a ``set``'s knob changes (at least one, at most :data:`~.knobs.MAX_CHANGES`)
    changes: Annotated[list[KnobChange], Meta(max_length=64)] | None = None


class CommandResult(Record):
    """What a final receipt says came of its command: a save's checkpoint, an evaluation's
    metrics, the state and step a stop ended the job in."""

    checkpoint: Text | None = None
    #: the step the command applied at
    step: Count | None = None
    #: the step the checkpoint was written at (a save reported later than it applied)
    saved_at_step: Count | None = None
    metrics: Annotated[dict[Str256, Metric], Meta(max_length=128)] | None = None
    final_state: Short | None = None
    final_step: Count | None = None
    #: who carried the command out when the ranks could not ("launcher")
    ended_by: Short | None = None
    #: a ``set``'s changes as applied: old -> new
    changes: Annotated[list[KnobChange], Meta(max_length=64)] | None = None


class GuardRule(Record):
    """One guard a job declared (``forgather launch --guard``): a condition and an action.
    ``text`` is its canonical spelling (``spike:save,factor=3,window=20,times=3``); the
    parameters a kind does not take stay unset. Parsed from a person's text by
    :func:`forgather_control.core.guards.parse_guard` only."""

    kind: Short
    action: Short
    text: Str256
    factor: Annotated[float, Meta(gt=0, le=1e6)] | None = None
    window: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    times: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    fraction: Annotated[float, Meta(gt=0, lt=1)] | None = None
    for_: Annotated[float, Meta(ge=0, le=1e7)] | None = msgspec.field(default=None, name="for")
    metric: Str64 | None = None


class GuardFiring(Record):
    """A guard that fired: which, at what step, on which rank, and the evidence (the
    values it saw, and a sentence a person reads). Carried by the receipt of the command
    it queued, and by ``status.json`` ``guard_events`` (an ``alert`` queues none)."""

    id: Str64
    guard: Str256
    kind: Short
    action: Short
    step: Count | None = None
    rank: Rank | None = None
    at: When | None = None
    evidence: Text | None = None
    values: Annotated[dict[Str64, float], Meta(max_length=32)] | None = None
    #: the command it queued (absent for ``alert``)
    command_id: Str64 | None = None


class AgreementTrace(Record):
    """``<FORGATHER_TRACE_AGREEMENT>/rank-<R>.json``: every exchange one rank made, as
    agreed (tests and debugging), and how its run ended."""

    rank: Rank
    fields: Annotated[list[Short], Meta(max_length=64)]
    trace: list[list[int]]
    world_size: Count | None = None
    final_step: Count | None = None
    state: Short | None = None
    served_http: bool | None = None
    pid: Pid | None = None


class RankTime(Record):
    """One rank's own time per training step (outside collectives: its data wait, forward,
    backward compute), as rank 0 last heard it at the agreed checks, and its ratio to the
    median of the other ranks'. ``node`` is the rank's node (torchrun's GROUP_RANK), whose
    host ``nodes/<node>.json`` names."""

    rank: Rank
    node: Count | None = None
    seconds: When | None = None
    ratio: Annotated[float, Meta(ge=0, le=1e9)] | None = None
    #: the node's host, as a reader found it in ``nodes/<node>.json`` (rank 0 does not say)
    host: Host | None = None


class Straggler(Record):
    """A rank persistently slower than the others: ``factor`` times the median of the
    others' own time per step, since ``since`` (rank 0's clock), named at ``step``."""

    rank: Rank
    factor: Annotated[float, Meta(ge=0, le=1e9)]
    since: When | None = None
    step: Count | None = None
    node: Count | None = None


class Receipt(Record):
    """One command's receipt, as status.json and the HTTP API carry it."""

    id: Str64 | None = None
    command: Str64 | None = None
    state: Short | None = None
    key: Str128 | None = None
    source: Short | None = None
    seq: Count | None = None
    created_at: When | None = None
    updated_at: When | None = None
    step: Count | None = None
    result: CommandResult | None = None
    reason: Text | None = None
    options: CommandOptions | None = None
    #: the guard that queued it, with its evidence (``source`` is then ``guard``)
    guard: GuardFiring | None = None


class CommandFile(Record):
    """``inbox/<ns>-<id>.json``: a command a client dropped for rank 0 (the file channel).
    Its id, key and command are checked where read (rank 0 answers a bad one with a
    rejected receipt under the file's id), so they are only bounded here."""

    id: Text | None = None
    command: Text | None = None
    key: Text | None = None
    sent_at: When | None = None
    options: CommandOptions | None = None


class Endpoint(Identity):
    """``endpoint.json``: where rank 0's control API listens (0600: it holds the token)."""

    job_id: Str128 | None = None
    url: Str2048 | None = None
    port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    bind_host: Host | None = None
    token: Str512 | None = None
    started_at: When | None = None
    protocol: Count | None = None
    world_size: Count | None = None


class Stall(Record):
    """Rank 0's word that its step has not moved: for how long, past which threshold, in what."""

    for_: When | None = msgspec.field(default=None, name="for")
    after: When | None = None
    step: Count | None = None
    phase: Short | None = None


class Http(Record):
    url: Str2048 | None = None


class Status(Identity):
    """``status.json``: rank 0's view of its run (the launcher closes it when rank 0 cannot)."""

    job_id: Str128 | None = None
    state: JobState | None = None
    step: Count | None = None
    max_steps: Count | None = None
    epoch: Annotated[float, Meta(ge=0, le=1e300)] | None = None
    metrics: Annotated[dict[Str256, Metric], Meta(max_length=128)] | None = None
    steps_per_second: When | None = None
    eta_seconds: When | None = None
    last_checkpoint: Text | None = None
    #: UNSET in a status written before resume points were recorded (``last_checkpoint`` then counts)
    resume_point: CheckpointRecord | UnsetType | None = UNSET
    #: every checkpoint of this run every rank finished writing, oldest first (the newest
    #: is ``resume_point``): the job's history keeps each
    checkpoints: Annotated[list[CheckpointRecord], Meta(max_length=256)] | None = None
    unsynced_checkpoint: CheckpointRecord | None = None
    world_size: Count | None = None
    stop_reason: Text | None = None
    stopped_by_signal: bool | None = None
    #: when this run's loop reported its first training step (None: none yet, so a stop
    #: has nothing to save: core.attachment.nothing_to_save)
    first_step_at: When | None = None
    phase: Short | None = None
    progress_at: When | None = None
    stall: Stall | None = None
    closed_by: Short | None = None
    commands: Annotated[list[Receipt], Meta(max_length=256)] | None = None
    pending_commands: Count | None = None
    control_error: Text | None = None
    error: Text | None = None
    http: Http | None = None
    started_at: When | None = None
    updated_at: When | None = None
    heartbeat_at: When | None = None
    ended_at: When | None = None
    check_interval: When | None = None
    protocol: Count | None = None
    restarts: Count | None = None
    resumed_from: Text | None = None
    #: the guards this run watches with, and what fired (newest last)
    guards: Annotated[list[GuardRule], Meta(max_length=64)] | None = None
    guard_events: Annotated[list[GuardFiring], Meta(max_length=256)] | None = None
    #: each rank's own time per step, by rank (the first 1024), and the
    #: ranks named stragglers
    ranks: Annotated[list[RankTime], Meta(max_length=1024)] | None = None
    stragglers: Annotated[list[Straggler], Meta(max_length=1024)] | None = None
    #: the job's live knobs: kind, range, value now and where it came from
    knobs: Annotated[list[KnobSetting], Meta(max_length=64)] | None = None


class Scheduler(Record):
    """Where the job runs (job.json ``scheduler``): ``judge`` asks squeue for a slurm one."""

    type: Short | None = None
    slurm_job_id: Str64 | None = None
    nodelist: Text | None = None
    restart_count: Count | None = None
    nodes: Annotated[list[Host], Meta(max_length=10_000)] | None = None
    #: SLURM's names for the allocation, as the launcher found them (for a person)
    array_job_id: Str64 | None = None
    array_task_id: Str64 | None = None
    partition: Text | None = None
    cluster: Text | None = None
    job_name: Text | None = None


class RollBack(Record):
    """A roll back: the checkpoint a relaunch goes back to (``resume --from``), every newer
    one of the job's history left behind. ``id`` names it once: a SLURM requeue keeps the
    environment that asked for it, and must not roll back again."""

    id: Annotated[str, Meta(pattern=r"\A[0-9a-f]{8,32}\Z")]
    path: Text
    step: Count | None = None
    #: the run that applied it, and when (job.json)
    run: Count | None = None
    at: When | None = None


class ResumeRequest(Record):
    """``FORGATHER_RESUME`` (JSON), set by ``forgather control resume`` for the launcher it
    starts: the job id to run under (a launch that named none made one up), under SLURM
    the run number a new allocation's first run takes (its requeues count on from it), and
    the roll back to apply."""

    job_id: Annotated[str, Meta(pattern=rf"\A{JOB_ID_PATTERN}\Z")]
    run: Count | None = None
    roll_back: RollBack | None = None


#: A batch script larger than this is not recorded (SLURM's own default limit is 4 MB).
MAX_BATCH_SCRIPT = 512 * 1024


class SlurmBatch(Record):
    """What submitting a SLURM job again needs: its batch script (``scontrol write
    batch_script``), the script's arguments, and the sbatch options SLURM shows
    (``scontrol show job``); unset ones were not given or cannot be seen."""

    slurm_job_id: Str64
    script: Annotated[str, Meta(max_length=MAX_BATCH_SCRIPT)]
    script_args: Annotated[list[Text], Meta(max_length=1024)] = msgspec.field(default_factory=list)
    job_name: Text | None = None
    partition: Text | None = None
    nodes: Annotated[int, Meta(ge=1, le=1 << 20)] | None = None
    ntasks_per_node: Annotated[int, Meta(ge=1, le=1 << 20)] | None = None
    #: minutes, as ``--time`` takes them
    time_limit: Annotated[int, Meta(ge=1, le=1 << 30)] | None = None
    account: Text | None = None
    qos: Text | None = None
    #: ``--signal`` as given on sbatch's command line, when SLURM says it (a ``#SBATCH``
    #: line of the script travels with the script)
    signal: Str64 | None = None
    workdir: Text | None = None
    output: Text | None = None
    error: Text | None = None
    requeue: bool | None = None


class Relaunch(Record):
    """``relaunch.json`` (node 0's launcher, 0600, every run): what ``forgather control
    resume`` needs to start the job again. The launcher's command line with ``--notify``
    values left out (the sinks stay in notify.json), the Python it ran on, its working
    directory and its environment without secrets or per-run variables
    (:mod:`.relaunch`), and under SLURM the batch script and its options."""

    job_id: Str128
    argv: Annotated[list[Text], Meta(min_length=1, max_length=1024)]
    python: Text
    cwd: Text
    env: Annotated[dict[Str256, Annotated[str, Meta(max_length=32768)]], Meta(max_length=4096)] = msgspec.field(default_factory=dict)
    scheduler: Short = "local"
    slurm: SlurmBatch | None = None
    #: the run that wrote it, and when
    run: Count | None = None
    written_at: When | None = None


class FailureRecord(Record):
    """One rank's exception (``failures/run-R-rank-N.json``), or the launcher's own."""

    rank: Rank | None = None
    run: Count | None = None
    host: Host | None = None
    pid: Pid | None = None
    type: Str200 | None = None
    message: Str2000 | None = None
    traceback: Annotated[list[Str500], Meta(max_length=64)] | None = None
    at: When | None = None


class Job(Record):
    """``job.json``: the launcher's record of the job, across its runs (node 0 writes it)."""

    job_id: Str128 | None = None
    argv: Annotated[list[Text], Meta(max_length=1024)] | None = None
    command: Annotated[list[Text], Meta(max_length=1024)] | None = None
    cwd: Text | None = None
    user: Host | None = None
    host: Host | None = None
    scheduler: Scheduler | None = None
    environment: Short | None = None
    nnodes: Short | None = None
    nproc_per_node: Short | None = None
    created_at: When | None = None
    started_at: When | None = None
    updated_at: When | None = None
    restarts: Count | None = None
    resume_from: Text | None = None
    #: the step of ``resume_from``: a relaunch that is still starting is listed at it
    resume_step: Count | None = None
    output_dir: Text | None = None
    checkpoints: Annotated[list[CheckpointRecord], Meta(max_length=256)] | None = None
    last_checkpoint: Text | None = None
    #: the knob values this run was given from the job's last run (``FORGATHER_KNOBS``):
    #: the other nodes' launchers give their ranks the same, and a run that ends before
    #: declaring its knobs passes them on
    knobs: KnobCarry | None = None
    #: the last roll back a run of the job applied (``FORGATHER_RESUME``'s, once: a requeue keeps its env)
    roll_back: RollBack | None = None
    requeue: bool | None = None
    grace: When | None = None
    control: bool | None = None
    no_control_after: When | None = None
    no_control_since: When | None = None
    state: JobState | None = None
    exit_code: ExitCode | None = None
    ended_at: When | None = None
    final_step: Count | None = None
    signals: Annotated[list[Short], Meta(max_length=64)] | None = None
    leftover_pids: Annotated[list[Count], Meta(max_length=1024)] | None = None
    requeued_at: When | None = None
    requeue_error: Text | None = None
    error: Text | None = None
    reason: Text | None = None
    torchrun_exit_code: ExitCode | None = None
    failure: FailureRecord | None = None


class Node(Identity):
    """``nodes/<n>.json``: the launcher on node n, its heartbeat and its end."""

    job_id: Str128 | None = None
    node_rank: Count | None = None
    nnodes: Short | None = None
    started_at: When | None = None
    heartbeat_at: When | None = None
    state: JobState | None = None
    restarts: Count | None = None
    slurm_job_id: Str64 | None = None
    exit_code: ExitCode | None = None
    ended_at: When | None = None


class StacksRegistration(Identity):
    """A worker that can dump its stacks (``stacks/rank-<R>.json``): who it is and where it
    writes its dumps (a file name in the same folder)."""

    rank: Rank | None = None
    run: Count | None = None
    dump: Str128 | None = None
    main_thread: Count | None = None
    registered_at: When | None = None
    launcher_pid: Pid | None = None
    launcher_start_time: When | None = None
    #: the FIFO (a name in the same folder) its control thread answers requests on
    requests: Str128 | None = None
    #: that thread's ident: not shown among the rank's threads
    dump_thread: Count | None = None
    #: its working directory: what a relative file in its frames is relative to
    cwd: Text | None = None
    #: when it started (the wall clock, to the kernel's tick, rounded up): a source file
    #: changed later may not be the one it runs
    started_at: When | None = None


class FrameRecord(Record, omit_defaults=False):
    """A frame as its rank saw it (``file`` relative or absolute), and its line of code
    read on the rank's host (``source``; None when not read: an older answer, a file not
    there). ``changed``: the file changed since the rank started (None: unknown)."""

    file: Str1024 | None = None
    line: Count | None = None
    func: Str256 | None = None
    source: Str256 | None = None
    changed: bool | None = None


class ThreadRecord(Record, omit_defaults=False):
    ident: Count | None = None
    main: bool | None = None
    frames: Annotated[list[FrameRecord], Meta(max_length=512)] | None = None


class StackRank(Record, omit_defaults=False):
    """One rank's stacks, as a node answers them."""

    rank: Rank | None = None
    host: Host | None = None
    pid: Pid | None = None
    error: Text | None = None
    threads: Annotated[list[ThreadRecord], Meta(max_length=512)] | None = None


class StackAnswer(Record):
    """One node's answer to a stacks request (``stacks/answers/<id>/node-<n>.json``)."""

    node: Rank | None = None
    host: Host | None = None
    ranks: Annotated[list[StackRank], Meta(max_length=4096)] | None = None


class Marker(Identity):
    """A run marker (``.runs/<job>@<nonce>``): a process of the job started a run here."""

    job_id: Str128 | None = None
    created_at: When | None = None
    format: Count | None = None


class SettledEntry(Record):
    """A settled entry (``.settled/<job>``): the job has provably ended, and how we know."""

    job_id: Str128 | None = None
    verdict: Str16 | None = None
    state: Short | None = None
    evidence: Text | None = None
    restarts: Count | None = None
    settled_at: When | None = None
    host: Host | None = None
    pid: Pid | None = None
    format: Count | None = None


class AlertSinks(Record):
    """``notify.json`` (0600, the launcher's on node 0): where the job's alerts go. A URL
    is a secret (a Slack or Discord webhook is its own password): it is kept here and
    nowhere else, never in job.json, an argv, a log line or a plan."""

    #: apprise URLs (``slack://...``, ``ntfy://...``, ``json://host:port/path``)
    urls: Annotated[list[Str2048], Meta(max_length=32)] = msgspec.field(default_factory=list)
    #: commands (argv, run without a shell) that get each alert as JSON on their stdin
    cmds: Annotated[list[Annotated[list[Text], Meta(min_length=1, max_length=256)]], Meta(max_length=32)] = msgspec.field(default_factory=list)


class Alert(Record, omit_defaults=False):
    """One message about a job (core/alerts.py): what happened (``event``: stalled, guard,
    straggler, finished, stopped, aborted, failed, dead), to which run of which job, where,
    at what step, why, and the command that shows more. ``key`` names the event once
    (``r<run>-end``, ``r<run>-guard-<firing id>``): the claim's name, and a receiver's
    way to drop a repeat. It never holds a token. Sent as this JSON to ``json://`` sinks
    and a command's stdin; as a title and text to apprise's other sinks."""

    job_id: Str128
    event: Short
    key: Str128
    run: Count
    command: Text
    at: When
    state: Short | None = None
    host: Host | None = None
    step: Count | None = None
    reason: Text | None = None
    #: the guard that fired (its rule), and the rank it named
    guard: Str256 | None = None
    rank: Rank | None = None


class AlertClaim(Identity, kw_only=True):
    """``alerts/<key>``: who took on sending one alert (its process), when, the alert
    itself (a taker-over sends the same), and how it went: ``sent_at`` once a sink took
    it, ``failed_at`` (and why) when every try of every sink failed. A claim with
    neither, whose claimant is gone or which is older than
    :data:`~forgather_control.core.alerts.CLAIM_STALE_AFTER`, may be taken over."""

    key: Str128
    claimed_at: When
    alert: Alert
    sent_at: When | None = None
    failed_at: When | None = None
    failure: Text | None = None


class Series(Record, omit_defaults=False):
    """One curve of a metric history: steps (ascending), times and values (finite or null)
    of one length."""

    step: list[int] = msgspec.field(default_factory=list)
    time: list[float] = msgspec.field(default_factory=list)
    value: list[float | None] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not len(self.step) == len(self.time) == len(self.value):
            raise ValueError("step, time and value must be lists of one length")
        if any(a >= b for a, b in itertools.pairwise(self.step)):
            raise ValueError("steps out of order (they must ascend)")
        if not all(math.isfinite(t) for t in self.time) or not all(v is None or math.isfinite(v) for v in self.value):
            raise ValueError("holds something that is not a point (a time or value that is not finite)")

    def since(self, step: int | None) -> Series:
        """The points after ``step`` (all of them for None)."""
        if step is None:
            return self
        start = bisect.bisect_right(self.step, step)
        return Series(step=self.step[start:], time=self.time[start:], value=self.value[start:])


class Mark(Record):
    """Something that happened at a step, drawn on the charts (``kind`` ``set``: a knob
    change, ``label`` ``lr_scale 1 -> 0.5``)."""

    step: Count
    time: When
    kind: Short
    label: Str256


class MetricHistory(Record, omit_defaults=False):
    """``metrics.json`` (and the API's ``/metrics``): a job's curves, kept small
    (:mod:`.metrics` writes it), and the marks drawn on them (the newest
    :data:`~.metrics.MAX_MARKS`)."""

    version: int = 1
    job_id: str = ""
    series: Annotated[dict[Annotated[str, Meta(max_length=128)], Series], Meta(max_length=64)] = msgspec.field(default_factory=dict)
    marks: Annotated[list[Mark], Meta(max_length=1024)] = msgspec.field(default_factory=list)

    def since(self, step: int | None) -> MetricHistory:
        if step is None:
            return self
        return MetricHistory(
            version=self.version,
            job_id=self.job_id,
            series={k: v.since(step) for k, v in self.series.items()},
            marks=[m for m in self.marks if m.step > step],
        )


# -- what a listing says of a job (``list --json``, ``status --json``, the page) -------------
class StallNotice(Stall):
    """Why a running job counts as stalled: rank 0's word (a :class:`Stall`) or its silence
    (phase ``silent``), and ``why``, a sentence for a person."""

    why: Text | None = None


class NoControl(Record, omit_defaults=False):
    """Why an ``uncontrolled`` job is: the launcher's threshold (``after``, seconds), when it
    judged so (``since``, its clock), and two sentences for a person (:mod:`.attachment`)."""

    after: When | None = None
    since: When | None = None
    why: Text = ""
    add: Text = ""


class JobRow(Record, omit_defaults=False):
    """One job as ``list --json`` shows it: every field written, null included. Built by a
    listing (``JobInfo.summary``), by a ``--remote`` client from a server's answers, and by
    each Ray node, whose answer is decoded into it. Never holds the token. The node fields
    are set by a cluster listing only (left out elsewhere)."""

    job_id: Str128
    state: JobState = JobState.UNKNOWN
    recorded_state: JobState | None = None
    liveness: Short = "unknown"
    evidence: Text = ""
    host: Host | None = None
    port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    url: Str2048 | None = None
    pid: Pid | None = None
    step: Count | None = None
    max_steps: Count | None = None
    world_size: Count | None = None
    scheduler: Short | None = None
    restarts: Count | None = None
    stall: StallNotice | None = None
    no_control: NoControl | None = None
    framework_callback: bool = False
    loss: float | None = None
    resumed_from: Text | None = None
    #: why it ended, in one line, for a job that ended or died: a failure's root cause
    #: (the rank whose own code raised), a stop's or an abort's reason
    why: Text | None = None
    #: the job's newest completed checkpoint of any run: what a relaunch resumes from
    last_checkpoint: Text | None = None
    updated_at: When | None = None
    jobs_dir: Text | None = None
    #: where a cluster listing found it: the node's name and ids, "ray" or "local", and
    #: every node that holds a copy when more than one does
    node: Text | UnsetType = UNSET
    node_id: Str128 | UnsetType | None = UNSET
    node_ip: Host | UnsetType | None = UNSET
    source: Short | UnsetType = UNSET
    seen_on: Annotated[list[Text], Meta(max_length=4096)] | UnsetType = UNSET

    @classmethod
    def of(cls, row: JobRow) -> Self:
        """A ``cls`` (a row with more to say: :class:`JobDetails`, the page's row) that
        starts from ``row``, every field of its own still at its default."""
        return cls(**{name: getattr(row, name) for name in row.__struct_fields__})


class CheckpointListed(CheckpointRecord):
    """One of a job's completed checkpoints as ``status`` lists it: whether it is on disk
    now, and whether it is the one a resume starts from."""

    on_disk: bool | None = None
    resume_point: bool | None = None


class JobDetails(JobRow):
    """One job as ``status --json`` shows it: its row, the detail of its status record (and
    of its live status when its server answered: ``live``), its failures and job.json. A
    detail field is written when the job has it (UNSET: left out)."""

    boot_id: Str128 | UnsetType = UNSET
    pid_start_time: When | UnsetType = UNSET
    epoch: Annotated[float, Meta(ge=0, le=1e300)] | UnsetType = UNSET
    metrics: Annotated[dict[Str256, Metric], Meta(max_length=128)] | UnsetType = UNSET
    steps_per_second: When | UnsetType | None = UNSET
    eta_seconds: When | UnsetType | None = UNSET
    resume_point: CheckpointRecord | UnsetType | None = UNSET
    unsynced_checkpoint: CheckpointRecord | UnsetType = UNSET
    stop_reason: Text | UnsetType = UNSET
    stopped_by_signal: bool | UnsetType = UNSET
    phase: Short | UnsetType = UNSET
    progress_at: When | UnsetType = UNSET
    closed_by: Short | UnsetType = UNSET
    commands: Annotated[list[Receipt], Meta(max_length=256)] | UnsetType = UNSET
    pending_commands: Count | UnsetType = UNSET
    #: the guards the run watches with, and what fired (newest last)
    guards: Annotated[list[GuardRule], Meta(max_length=64)] | UnsetType = UNSET
    guard_events: Annotated[list[GuardFiring], Meta(max_length=256)] | UnsetType = UNSET
    #: each rank's own time per step, and the ranks named stragglers
    ranks: Annotated[list[RankTime], Meta(max_length=1024)] | UnsetType = UNSET
    stragglers: Annotated[list[Straggler], Meta(max_length=1024)] | UnsetType = UNSET
    #: the job's live knobs
    knobs: Annotated[list[KnobSetting], Meta(max_length=64)] | UnsetType = UNSET
    #: every completed checkpoint of the job's runs, oldest first (on disk or not, left behind or not)
    checkpoints: Annotated[list[CheckpointListed], Meta(max_length=256)] | UnsetType = UNSET
    control_error: Text | UnsetType = UNSET
    error: Text | UnsetType = UNSET
    http: Http | UnsetType = UNSET
    started_at: When | UnsetType = UNSET
    heartbeat_at: When | UnsetType = UNSET
    ended_at: When | UnsetType = UNSET
    check_interval: When | UnsetType = UNSET
    protocol: Count | UnsetType = UNSET
    exit_code: ExitCode | UnsetType = UNSET
    #: the root cause (the first rank that raised), and every rank's, of a failed run
    failure: FailureRecord | UnsetType = UNSET
    failures: Annotated[list[FailureRecord], Meta(max_length=4096)] | UnsetType = UNSET
    job: Job | UnsetType = UNSET
    #: whether the job's server answered just now, and why not when it was asked and did not
    live: bool = False
    live_error: Text | UnsetType = UNSET


class ServedJob(Record):
    """One job a control server says it serves (``GET /jobs``)."""

    job_id: Str128
    state: JobState | None = None
    step: Count | None = None
    max_steps: Count | None = None


class RayNode(Record):
    """Which Ray node: its name as shown, its id and its address."""

    node: Text | None = None
    node_id: Str128 | None = None
    node_ip: Host | None = None


class MissingNode(RayNode):
    """A Ray node that did not answer a cluster listing, and why (a sentence)."""

    reason: Text | None = None


class ClusterNode(RayNode):
    """A Ray node that answered a cluster listing: the jobs directory it read, and how many
    jobs it gave."""

    hostname: Host | None = None
    jobs_dir: Text | None = None
    jobs: Count | None = None


R = TypeVar("R", bound=Record)

_PATH = re.compile(r"\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\[\.\.\.\])*)")


def decode(raw: object, cls: type[R], *, name: str) -> R:
    """``raw`` (a parsed JSON object) as a ``cls``, or RecordError naming ``name`` and the
    field: "<name>: field 'pid': Expected `int` >= 1"."""
    if not isinstance(raw, dict):
        raise RecordError(f"{name}: not a JSON object ({'null' if raw is None else type(raw).__name__})")
    try:
        return msgspec.convert(raw, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise RecordError(f"{name}: {_problem(str(exc))}") from None
    except RecursionError:
        raise RecordError(f"{name}: nested too deep to be a record") from None


def _problem(message: str) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.commands[0].step`" as "field
    'commands' [0].step: expected `int`, got `str`"."""
    what, _, where = message.rpartition(" - at ")
    if not what:
        return message
    where = where.strip("`")
    key = ""
    if where.startswith("key in "):  # a mapping's key broke a rule
        key, where = " (a key)", where[len("key in ") :].strip("`")
    match = _PATH.fullmatch(where)
    if match is None or not match.group(1):
        return f"{what[0].lower()}{what[1:]}"
    what = _plain(what)
    path = match.group(1)
    top, rest = re.match(r"\.([A-Za-z_][A-Za-z0-9_]*)(.*)", path).groups()  # type: ignore[union-attr]
    return f"field {top!r}{' ' + rest if rest else ''}{key}{':' if what[0].isupper() else ''} {what[0].lower()}{what[1:]}"


_NOUN = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "array": "a list", "object": "an object"}
_GOT = {"array": "list", "object": "dict", "null": "null"}
_TYPE_ERROR = re.compile(r"Expected `(\w+)(?: \| null)?`, got `(\w+)`")


def _plain(what: str) -> str:
    """msgspec's "Expected `int | null`, got `str`" as "must be an integer, not str"."""
    match = _TYPE_ERROR.fullmatch(what)
    if match is None or match.group(1) not in _NOUN:
        return what
    return f"must be {_NOUN[match.group(1)]}, not {_GOT.get(match.group(2), match.group(2))}"


def encode(record: Record) -> dict[str, Any]:
    """The plain JSON object a record is written as. A field at its default is left out,
    a null one too (readers take absent and null alike), but for the record's
    ``always``; ``Status.resume_point`` defaults to UNSET, so its explicit null ("no
    resume point yet") is written."""
    out: dict[str, Any] = msgspec.to_builtins(record)
    for name in record.always:
        if name not in out:
            out[name] = msgspec.to_builtins(getattr(record, name))
    return out


def to_json(record: Record) -> bytes:
    """A record as JSON bytes for another process of ours (a Ray node's answer, the Ray
    driver's): :func:`encode`'s object, a diverging loss written as ``NaN`` as a record
    file has it (``msgspec.json`` would write null)."""
    return json.dumps(encode(record)).encode()


def parse_json(data: object, *, name: str) -> object:
    """The JSON value in ``data`` (bytes or text another process sent), ``NaN`` read back;
    RecordError naming ``name`` when it is not JSON."""
    if not isinstance(data, (bytes, str)):
        raise RecordError(f"{name}: not JSON ({type(data).__name__})")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RecordError(f"{name}: not valid JSON ({str(exc)[:80]})") from None


def from_json(data: object, cls: type[R], *, name: str) -> R:
    """What :func:`to_json` wrote (or another program sent) as a ``cls``, checked by
    :func:`decode`; RecordError naming ``name`` otherwise."""
    return decode(parse_json(data, name=name), cls, name=name)


def load(path: str | os.PathLike[str], cls: type[R], *, max_bytes: int | None = None, owner: int | None = None, dir_fd: int | None = None) -> R | None:
    """The record at ``path`` (relative to the open folder ``dir_fd`` when given) as a
    ``cls``; None when there is none; RecordError naming the file and the field when it
    is there but unusable, or (``owner``, a uid) another user's."""
    if max_bytes is None:
        raw = read_record(path, owner=owner, dir_fd=dir_fd)
    else:
        raw = read_record(path, max_bytes=max_bytes, owner=owner, dir_fd=dir_fd)
    return None if raw is None else decode(raw, cls, name=os.fspath(path))


def load_or_none(path: str | os.PathLike[str], cls: type[R]) -> R | None:
    """The record at ``path``, or None when it is missing or unusable (for a reader that
    only peeks: the listing shows the job as corrupt with the reason)."""
    try:
        return load(path, cls)
    except RecordError:
        return None
