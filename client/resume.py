"""Start a stopped, paused, preempted or failed job again from its own record:
``forgather control resume JOB [--from CHECKPOINT|STEP] [--detach]``, and the same for a
Python caller (:func:`resume`, or :func:`prepare` and then one of :class:`Resumption`'s ways).

Node 0's launcher wrote ``relaunch.json`` at the job's last start (core/relaunch.py): its
command line, Python, working directory and environment without secrets, and under SLURM
its batch script and options. A resume

- refuses, before anything starts (:class:`~forgather_control.core.errors.NotResumable`,
  exit 8), a job that still runs or may (its launcher's heartbeat cannot be judged), one
  of another user, one without a relaunch record, a named checkpoint that is gone or not
  the job's, and a SLURM job on a host without ``sbatch``;
- starts ``forgather launch`` again with the recorded arguments, in the recorded folder,
  with the recorded environment plus the secrets of the resume's own (a secret is never
  recorded: the launch took it from its environment too), and ``FORGATHER_RESUME`` naming
  the job: the launcher then resumes from the job's newest checkpoint still on disk, as
  a relaunch of the same id always has (launcher/records.py);
- or, under SLURM, submits the recorded batch script again with its options; the new
  allocation runs under the same job id, its runs numbered on from the job's last;
- ``--from`` rolls back: the launcher resumes from that checkpoint of the job's history
  and marks every newer one left behind (kept on disk and in the history, never deleted).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from forgather_control.core.checkpoints import Checkpoint, Scope, Skipped, choose, find, history
from forgather_control.core.env import ENV_DETACHED, ENV_OUTPUT_DIR, ENV_RESUME
from forgather_control.core.errors import ControlError, NotResumable, PrivateJob
from forgather_control.core.files import RecordError, owner_name, write_bytes_atomic
from forgather_control.core.ids import validate_job_id
from forgather_control.core.jobs import JobPaths, resolve_jobs_dir
from forgather_control.core.records import Job, Relaunch, ResumeRequest, RollBack, encode, load
from forgather_control.core.relaunch import new_roll_back_id, read_relaunch, relaunch_env, sbatch_argv
from forgather_control.core.states import JobState, is_final

from .jobinfo import JobInfo
from .listing import find_job

log = logging.getLogger(__name__)

__all__ = ["LAUNCHER_MAIN", "ResumeFailed", "Resumed", "Resumption", "parse_checkpoint_ref", "prepare", "resume"]

#: What a local relaunch runs with the recorded Python: the ``forgather`` command line.
LAUNCHER_MAIN = "forgather_control.cli.main"
#: Seconds a detached relaunch has to record its run before the resume stops waiting.
START_TIMEOUT = 60.0


class ResumeFailed(ControlError):
    """The relaunch was started but did not take: its launcher exited before its run began,
    or sbatch refused the job."""


def parse_checkpoint_ref(text: str) -> str | int:
    """``--from``: a step (digits) or a checkpoint's path (made absolute here)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if not text:
        raise NotResumable("--from needs a checkpoint's path or a step")
    return os.path.abspath(text)


@dataclass(frozen=True)
class Resumed:
    """What a resume started: the job and run, where it resumes from, what the roll back
    left behind, and how to follow it (the detached launcher's pid and log, or the SLURM
    job's id; ``exit_code`` for one that ran attached)."""

    job_id: str
    run: int
    how: str
    resume_from: str | None = None
    resume_step: int | None = None
    left_behind: tuple[str, ...] = ()
    pid: int | None = None
    log: str | None = None
    slurm_job_id: str | None = None
    exit_code: int | None = None
    #: the relaunch did not show its run starting within the wait (it may still)
    unconfirmed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "run": self.run,
            "how": self.how,
            "resume_from": self.resume_from,
            "resume_step": self.resume_step,
            "left_behind": list(self.left_behind),
            "pid": self.pid,
            "log": self.log,
            "slurm_job_id": self.slurm_job_id,
            "exit_code": self.exit_code,
            "unconfirmed": self.unconfirmed,
        }


@dataclass(frozen=True)
class Resumption:
    """A resume decided and checked, nothing started yet: what :meth:`detach`,
    :meth:`submit`, :meth:`attach` or :meth:`exec` starts."""

    paths: JobPaths
    record: Relaunch
    #: the run the relaunch starts (0 is the job's first)
    run: int
    #: the checkpoint it resumes from (None: from the start), what it passes over and why
    resume_from: Checkpoint | None
    skipped: tuple[Skipped, ...] = ()
    #: what a roll back leaves behind now (``--from`` an older checkpoint)
    left_behind: tuple[Checkpoint, ...] = ()
    request: ResumeRequest | None = None
    #: the command and environment it starts (sbatch's under SLURM)
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    cwd: str = "."

    @property
    def job_id(self) -> str:
        return self.paths.job_id

    @property
    def how(self) -> str:
        return "slurm" if self.record.scheduler == "slurm" else "local"

    def describe(self) -> str:
        """One line for a person: the run, and where it starts."""
        start = f"from {self.resume_from.describe()}" if self.resume_from is not None else "from the start (no checkpoint)"
        out = f"job {self.job_id} resumes as run {self.run + 1} {start}"
        if self.left_behind:
            out += "; left behind (kept on disk): " + ", ".join(p.describe() for p in self.left_behind)
        return out

    def resumed(self, **kw: Any) -> Resumed:
        """What this resume starts, as :class:`Resumed` (``kw``: how to follow it)."""
        point = self.resume_from
        return Resumed(
            job_id=self.job_id,
            run=self.run,
            how=self.how,
            resume_from=point.path if point else None,
            resume_step=point.step if point else None,
            left_behind=tuple(p.path for p in self.left_behind),
            **kw,
        )

    # -- the ways to start it -----------------------------------------------------------
    def start(self, *, detach: bool = True, timeout: float = START_TIMEOUT) -> Resumed:
        """Under SLURM, :meth:`submit`; else :meth:`detach`, or with ``detach=False``
        :meth:`attach` (returns when the job ends)."""
        if self.how == "slurm":
            return self.submit()
        return self.detach(timeout=timeout) if detach else self.attach()

    def attach(self) -> Resumed:
        """The relaunch attached to this process, as the original ``forgather launch`` ran:
        its output is ours; returns when it ends, with its exit code."""
        self._local_only()
        code = subprocess.call(list(self.argv), cwd=self.cwd, env=dict(self.env))
        return self.resumed(exit_code=code)

    def exec(self) -> NoReturn:
        """The relaunch in place of this process (the command line's attached resume: a
        Ctrl-C and the exit code are the launcher's own)."""
        self._local_only()
        os.chdir(self.cwd)
        os.execve(self.argv[0], list(self.argv), dict(self.env))

    def detach(self, *, timeout: float = START_TIMEOUT) -> Resumed:
        """The relaunch in the background, in a session of its own, its output to
        ``launcher-run-<N>.log`` in the job folder (0600; what its terminal would have
        shown, the ranks' output up to one log file's bound: their logs keep it all). Waits until the launcher has recorded the run as started (or exits first:
        :class:`ResumeFailed` with the end of its log)."""
        self._local_only()
        log_path = self.paths.dir / f"launcher-run-{self.run}.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)
            proc = subprocess.Popen(
                list(self.argv),
                cwd=self.cwd,
                env={**self.env, ENV_DETACHED: "1"},  # its log stays bounded: the ranks' logs keep their output
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(fd)
        confirmed = self._wait_started(proc, log_path, timeout)
        return self.resumed(pid=proc.pid, log=str(log_path), unconfirmed=not confirmed)

    def submit(self) -> Resumed:
        """``sbatch`` the recorded batch script again with its options (the script is
        written to ``relaunch.sbatch`` in the job folder, 0600); returns with SLURM's job id."""
        batch = self.record.slurm
        if batch is None or self.how != "slurm":
            raise NotResumable(f"job {self.job_id} did not run under SLURM: resume it here")
        script = self.paths.dir / "relaunch.sbatch"
        write_bytes_atomic(script, batch.script.encode())
        try:
            done = subprocess.run(list(self.argv), env=dict(self.env), capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ResumeFailed(f"sbatch could not submit job {self.job_id}: {exc}") from None
        if done.returncode != 0:
            raise ResumeFailed(f"sbatch refused job {self.job_id} (exit {done.returncode}): {(done.stderr or done.stdout).strip()[:1000]}")
        slurm_id = done.stdout.strip().split(";")[0].strip()
        return self.resumed(slurm_job_id=slurm_id or None)

    def _local_only(self) -> None:
        if self.how == "slurm":
            raise NotResumable(f"job {self.job_id} ran under SLURM: it is submitted again, never started here")

    def _wait_started(self, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> bool:
        """Until job.json says this run started (True), the launcher exits first
        (ResumeFailed), or ``timeout`` passes (False: it may still start)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = load(self.paths.job, Job, owner=os.geteuid())
            except RecordError:
                job = None
            if job is not None and job.restarts == self.run and job.started_at is not None:
                return True
            code = proc.poll()
            if code is not None:
                tail = _tail(log_path)
                raise ResumeFailed(f"the relaunch of job {self.job_id} exited {code} before its run started; its log ({log_path}) ends:\n{tail}")
            if time.monotonic() > deadline:
                log.warning("job %s's relaunch (pid %d) has not recorded its run within %gs; see %s", self.job_id, proc.pid, timeout, log_path)
                return False
            time.sleep(0.1)


def prepare(
    ref: str,
    *,
    jobs_dir: str | os.PathLike[str] | None = None,
    from_: str | int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Resumption:
    """Check that job ``ref`` (an id or a unique prefix) can be resumed, and decide how:
    nothing is started or written. ``from_``: a step or a checkpoint path of the job's
    history to roll back to. ``environ``: the environment the resume runs in (secrets and
    ``PATH`` for sbatch are taken from it; default ``os.environ``). Raises NotResumable
    (exit 8) with the reason, JobNotFound, AmbiguousJob or InvalidJobId."""
    environ = os.environ if environ is None else environ
    validate_job_id(ref)
    root = resolve_jobs_dir(jobs_dir)
    try:
        info = find_job(root, ref)
    except PrivateJob as exc:
        raise NotResumable(f"{exc}; only its owner can resume it") from None
    paths = info.paths
    _check_owner(paths)
    _check_ended(info)
    try:
        record = read_relaunch(paths)
    except RecordError as exc:
        raise NotResumable(f"job {info.job_id}'s relaunch record is refused: {exc}") from None
    if record is None:
        raise NotResumable(
            f"job {info.job_id} has no relaunch record ({paths.relaunch}): it was not started by `forgather launch` "
            f"(a launch from Python, or a version without resume); launch it again with --job-id {info.job_id} to continue it"
        )
    job = info.job or Job()
    status = info.status
    points = history(job, status, clean_exit=job.exit_code == 0 and is_final(job.state))  # as the launcher reads it
    scope = Scope(job.output_dir or record.env.get(ENV_OUTPUT_DIR) or record.cwd, os.geteuid())
    roll: RollBack | None = None
    left_behind: tuple[Checkpoint, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    if from_ is not None:
        target = find(points, parse_checkpoint_ref(from_) if isinstance(from_, str) else from_)
        if target is None:
            raise NotResumable(f"{from_} is not one of job {info.job_id}'s checkpoints; `forgather control status {info.job_id}` lists them")
        why = scope.refuses(target.path)
        if why is not None:
            raise NotResumable(f"cannot roll job {info.job_id} back to {target.describe()}: {why}")
        at = points.index(target)
        left_behind = tuple(p for p in points[at + 1 :] if not p.left_behind)
        roll = RollBack(id=new_roll_back_id(), path=target.path, step=target.step)
        point: Checkpoint | None = target
    else:
        point, passed = choose(points, scope=scope)
        skipped = tuple(passed)
        if point is None and any(not p.left_behind for p in points):
            gone = "; ".join(s.describe() for s in skipped)
            raise NotResumable(
                f"job {info.job_id} has no checkpoint left to resume from ({gone}); name one with --from, or launch it again to start from the beginning"
            )
    last = max(job.restarts or 0, (status.restarts or 0) if status is not None else 0)
    run = last + 1
    slurm = record.scheduler == "slurm"
    request = ResumeRequest(job_id=info.job_id, run=run if slurm else None, roll_back=roll)
    env = relaunch_env(record.env, environ)
    env[ENV_RESUME] = _json(request)
    if slurm:
        argv = _sbatch(info.job_id, record, paths, environ, env)
        cwd = os.getcwd()
    else:
        argv, cwd = _local(info.job_id, record)
    return Resumption(paths, record, run, point, skipped, left_behind, request, tuple(argv), env, cwd)


def resume(
    ref: str,
    *,
    jobs_dir: str | os.PathLike[str] | None = None,
    from_: str | int | None = None,
    detach: bool = True,
    timeout: float = START_TIMEOUT,
) -> Resumed:
    """:func:`prepare`, then start it: submitted under SLURM, else in the background
    (``detach``) or attached, returning when the job ends."""
    return prepare(ref, jobs_dir=jobs_dir, from_=from_).start(detach=detach, timeout=timeout)


# -- the checks -----------------------------------------------------------------------------
def _check_owner(paths: JobPaths) -> None:
    try:
        uid = os.lstat(paths.dir).st_uid
    except OSError as exc:
        raise NotResumable(f"job {paths.job_id}: {paths.dir}: {exc.strerror or exc}") from None
    if uid != os.geteuid():
        raise NotResumable(
            f"job {paths.job_id} is the job of {owner_name(uid)} ({paths.dir}), not yours ({owner_name(os.geteuid())}): only its owner can resume it"
        )


#: States a resume leaves alone: the job may still be running, or its records cannot be read.
_NOT_ENDED = {JobState.UNKNOWN, JobState.STALE, JobState.CORRUPT}


def _check_ended(info: JobInfo) -> None:
    state = info.state
    if state == JobState.REQUEUED:
        raise NotResumable(f"job {info.job_id} is requeued: SLURM starts it again by itself (`scancel` it first to resume it from here)")
    if state.live:
        raise NotResumable(f"job {info.job_id} is {state}: it still runs; stop it first (`forgather control save-stop {info.job_id} --wait`)")
    if state in _NOT_ENDED:
        raise NotResumable(f"job {info.job_id} is {state} ({info.evidence}): it may still run; resume it once it is judged ended")


def _local(job_id: str, record: Relaunch) -> tuple[list[str], str]:
    if not os.path.isfile(record.python) or not os.access(record.python, os.X_OK):
        raise NotResumable(f"job {job_id} ran on {record.python}, which is not on this host: resume it where it ran")
    if not os.path.isdir(record.cwd):
        raise NotResumable(f"job {job_id} ran in {record.cwd}, which is not on this host: resume it where it ran")
    return [record.python, "-m", LAUNCHER_MAIN, *record.argv], record.cwd


def _sbatch(job_id: str, record: Relaunch, paths: JobPaths, environ: Mapping[str, str], env: dict[str, str]) -> list[str]:
    if record.slurm is None:
        raise NotResumable(
            f"job {job_id} ran under SLURM, but its batch script was not recorded at its start (scontrol could not say it): submit it again with sbatch"
        )
    sbatch = shutil.which("sbatch", path=environ.get("PATH", os.defpath))
    if sbatch is None:
        raise NotResumable(
            f"job {job_id} ran under SLURM: resuming it submits its batch script again with sbatch, which this host does not have "
            "(not on PATH); run the resume on a host of the cluster (a login node)"
        )
    if environ.get("SLURM_CONF"):
        env["SLURM_CONF"] = environ["SLURM_CONF"]  # the cluster this host submits to
    return sbatch_argv(sbatch, record.slurm, str(paths.dir / "relaunch.sbatch"))


def _json(record: ResumeRequest) -> str:
    import json

    return json.dumps(encode(record), separators=(",", ":"))


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
