"""Every ``FORGATHER_*`` environment variable, named once.

The launcher sets most of them for its workers; a user may set any of them by hand (a
job started without the launcher reads the same names). Code elsewhere imports the
constant, never spells the string, so a rename cannot leave a reader behind.
"""

from __future__ import annotations

#: The jobs directory (default ``~/.forgather/jobs``); on shared storage for multi-node jobs.
ENV_JOBS_DIR = "FORGATHER_JOBS_DIR"
#: The job's id; every rank and every node of one job must agree on it.
ENV_JOB_ID = "FORGATHER_JOB_ID"
#: Where rank 0 serves HTTP (default 127.0.0.1; another address needs the token).
ENV_CONTROL_HOST = "FORGATHER_CONTROL_HOST"
#: Rank 0's control port (default 0: an ephemeral one).
ENV_CONTROL_PORT = "FORGATHER_CONTROL_PORT"
#: A bearer token for ``--remote`` clients (never set for workers: rank 0 makes its own).
ENV_TOKEN = "FORGATHER_TOKEN"
#: Which run of the job this is (SLURM requeues, relaunches of one id); rank 0 copies it
#: into status.json so a listing can tell this run's status from a previous run's.
ENV_RESTARTS = "FORGATHER_RESTARTS"
#: "PID:START_TIME" of the launcher that started this worker: a worker whose launcher is
#: gone ends itself (no orphans).
ENV_LAUNCHER_PID = "FORGATHER_LAUNCHER_PID"
#: "1": the worker bootstrap injects the control callback; "0": the script runs as is.
ENV_LAUNCHED = "FORGATHER_LAUNCHED"
#: "1": after an abort, the trainer's train()/fit() returns into the script as usual
#: (by default the worker ends there, so code after training never runs on an aborted model).
ENV_ABORT_RETURNS = "FORGATHER_ABORT_RETURNS"
#: The checkpoint a restarted run resumes from, when the job has one.
ENV_RESUME_FROM = "FORGATHER_RESUME_FROM"
#: the step of that checkpoint: where a resumed run's count starts (status and rate)
ENV_RESUME_STEP = "FORGATHER_RESUME_STEP"
#: What ``forgather control resume`` tells the launcher it starts (JSON,
#: ``core.records.ResumeRequest``): the job id, a SLURM resubmission's first run, a roll back.
ENV_RESUME = "FORGATHER_RESUME"
#: What a relaunch carries from the job's last run: its knobs' values (JSON,
#: ``core.records.KnobCarry``; the launcher sets it unless ``--script-knobs``).
ENV_KNOBS = "FORGATHER_KNOBS"
#: The folder a job's checkpoints live in (default: the launch's working directory): a
#: run resumes only from a checkpoint inside it that its own user owns.
ENV_OUTPUT_DIR = "FORGATHER_OUTPUT_DIR"
#: This node's rank in a multi-node launch.
ENV_NODE_RANK = "FORGATHER_NODE_RANK"
#: Seconds within which two deliveries of a stop signal count once (default 1).
ENV_SIGNAL_REPEAT_WINDOW = "FORGATHER_SIGNAL_REPEAT_WINDOW"
#: Seconds without a step after which a job counts as stalled (default: adapts to the
#: job's step time, never below five minutes).
ENV_STALL_AFTER = "FORGATHER_STALL_AFTER"
#: Seconds between a job's status.json rewrites when nothing changed (its heartbeat;
#: default 2). Lower it where something waits on the file: a test, a dashboard.
ENV_HEARTBEAT_INTERVAL = "FORGATHER_HEARTBEAT_INTERVAL"
#: Seconds between rank 0's looks into the inbox (default 0.5): how soon a command sent
#: through the file channel is taken.
ENV_POLL_INTERVAL = "FORGATHER_POLL_INTERVAL"
#: Seconds between agreement checks across ranks (default 1): how soon a command applies
#: on a job of several ranks, at one small all-reduce per check.
ENV_CHECK_INTERVAL = "FORGATHER_CHECK_INTERVAL"
#: Seconds ``forgather control`` waits for one HTTP answer from a job or a ``--remote``
#: server (default 5): an unreachable job is an error this long after it was asked.
ENV_HTTP_TIMEOUT = "FORGATHER_HTTP_TIMEOUT"
#: Seconds after which a launcher whose job has no control attached yet (rank 0 has not
#: published this run's status) says so once (default 300; ``--no-control-after``).
ENV_NO_CONTROL_AFTER = "FORGATHER_NO_CONTROL_AFTER"
#: Where a job's alerts go: apprise URLs (Slack, Discord, ntfy, json://, ...), separated by
#: whitespace, added to ``forgather launch --notify``. Secrets: kept in the job's 0600
#: notify.json, never passed on to torchrun or the workers.
ENV_NOTIFY = "FORGATHER_NOTIFY"
#: A command that gets each alert as JSON on its stdin: one command line, split as a shell
#: would split it (shlex) and run without a shell; added to ``--notify-cmd``.
ENV_NOTIFY_CMD = "FORGATHER_NOTIFY_CMD"
#: The most bytes one rank's log file in the job folder holds before it is rotated to
#: ``.1`` (bytes, or 16M, 512K; default 8M, least 64K): a rank keeps at most twice this.
ENV_LOG_BYTES = "FORGATHER_LOG_BYTES"
#: Set by a detached relaunch (``resume --detach``) for its launcher, whose terminal is
#: then a log file in the job folder: the launcher copies at most one log file's bound
#: (:data:`ENV_LOG_BYTES`) of the ranks' output there; their own logs keep all of it.
ENV_DETACHED = "FORGATHER_DETACHED"
#: Set by the launcher for its workers: the socket their bootstrap hands stdout and
#: stderr to (the launcher writes them to the terminal and the rank's log).
ENV_LOG_SOCKET = "FORGATHER_LOG_SOCKET"
#: A folder where each rank writes its agreement trace at close (tests, debugging).
ENV_TRACE_AGREEMENT = "FORGATHER_TRACE_AGREEMENT"
#: The guards a launch passes its ranks (``;`` between rules: core.guards).
ENV_GUARDS = "FORGATHER_GUARDS"
# torchrun's own variables, read (never set) by the worker side
#: The worker's global rank.
ENV_RANK = "RANK"
#: How many workers the job has.
ENV_WORLD_SIZE = "WORLD_SIZE"

#: Test hook read on a Ray node: seconds its listing task sleeps before answering.
ENV_RAY_LIST_DELAY = "FORGATHER_RAY_LIST_DELAY"
