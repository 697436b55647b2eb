"""The trainer-agnostic Controller: queue -> agreement -> actions, and the job's status.

Any loop::

    with Controller(max_steps=1000) as ctl:
        for step in range(1, 1001):
            loss = train_step()
            act = ctl.step(step, {"loss": loss})
            if act.evaluate:
                ctl.evaluation_done(evaluate())
            if act.save:
                ctl.checkpoint_saved(save(step))
            if act.stop:
                break

Every rank calls ``step`` with the same step numbers. On global rank 0 the Controller
serves HTTP, polls the inbox and writes endpoint.json / status.json; every rank takes
part in the agreement at check steps all ranks know in advance (the next one travels in
the agreed tensor), so every rank gets the same actions at the same step. Between
checks ``step`` is one comparison and two attribute writes; a process alone makes no
collective and looks at the ledger only when something changed.

Ranks are read from torch.distributed when it is initialised, else from torchrun's
environment (RANK, WORLD_SIZE). A job whose processes initialise torch.distributed
after the Controller started, without those variables (``mp.spawn``), is corrected at
train begin / the first step: a process that turns out not to be rank 0 stops serving.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgather_control.control import (
    ENV_CONTROL_HOST,
    ENV_CONTROL_PORT,
    ENV_JOB_ID,
    ENV_RESTARTS,
    PROTOCOL,
    Command,
    JobPaths,
    Ledger,
    LedgerError,
    default_job_id,
    is_loopback_host,
    process_identity,
    read_json,
    resolve_jobs_dir,
    validate_job_id,
    write_json_atomic,
)
from forgather_control.control.env import ENV_TRACE_AGREEMENT
from forgather_control.control.files import remove_quietly

from .agreement import Agreement, Proposal, distributed_context, distributed_ready, dump_trace
from .publisher import Publisher
from . import signals as _signals_mod
from .signals import DEFAULT_SIGNALS, SignalFlags

log = logging.getLogger(__name__)

#: ``_next_check`` for "never by the step counter" (a process alone, or no agreement).
NEVER = 1 << 62
#: Gap between checks is at most this many steps, and grows at most this factor per check.
MAX_GAP = 100_000
GAP_GROWTH = 4

__all__ = ["Actions", "Controller", "DEFAULT_SIGNALS", "NO_ACTIONS"]


@dataclass(frozen=True)
class Actions:
    """What the training loop should do now. Falsy when there is nothing to do."""

    save: bool = False
    evaluate: bool = False
    stop: bool = False
    abort: bool = False
    command: Command | None = None
    command_id: str | None = None  # rank 0 only; other ranks do not see the ledger
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.save or self.evaluate or self.stop


NO_ACTIONS = Actions()


def _actions_for(cmd: Command, command_id: str | None, reason: str | None = None) -> Actions:
    return Actions(
        save=cmd.saves,
        evaluate=cmd == Command.EVALUATE,
        stop=cmd.stops,
        abort=cmd == Command.ABORT,
        command=cmd,
        command_id=command_id,
        reason=reason,
    )


def _json_metrics(metrics: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(metrics, dict):
        return out
    for k, v in list(metrics.items())[:64]:
        try:
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, bool) or v is None or isinstance(v, str):
                out[str(k)] = v if not isinstance(v, str) else v[:200]
            elif isinstance(v, (int, float)):
                out[str(k)] = v if math.isfinite(v) else str(v)
        except Exception:
            continue
    return out


class Controller:
    """Owns the control plane of one training process.

    Keyword-only options: ``job_id`` (default: ``$FORGATHER_JOB_ID``, else a SLURM- or
    host-derived id), ``jobs_dir``, ``host`` (default loopback, or
    ``$FORGATHER_CONTROL_HOST``), ``port`` (0 = ephemeral, or
    ``$FORGATHER_CONTROL_PORT``), ``enable_http`` (False = file channel only), ``auth``
    (False is an explicit opt-out, refused on a non-loopback host), ``cleanup_on_exit``
    (remove endpoint.json at exit), ``max_steps``, ``check_interval`` (seconds between
    agreement checks across ranks), ``signals`` (signals that mean "save and stop"; ()
    for none), ``signal_repeat_window`` (deliveries closer than this count once;
    default ``$FORGATHER_SIGNAL_REPEAT_WINDOW`` or 1 s), ``rank``/``world_size``
    (override what torch.distributed or the environment say).
    """

    def __init__(
        self,
        *,
        job_id: str | None = None,
        jobs_dir: str | os.PathLike[str] | None = None,
        host: str | None = None,
        port: int | None = None,
        enable_http: bool = True,
        auth: bool = True,
        cleanup_on_exit: bool = True,
        max_steps: int | None = None,
        check_interval: float = 1.0,
        heartbeat_interval: float = 2.0,
        poll_interval: float = 0.5,
        max_pending: int = 16,
        signals: tuple[int, ...] | None = DEFAULT_SIGNALS,
        signal_repeat_window: float | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.job_id = validate_job_id(job_id or os.environ.get(ENV_JOB_ID) or default_job_id())
        self.jobs_dir = resolve_jobs_dir(jobs_dir)
        self.paths = JobPaths(self.jobs_dir, self.job_id)
        self.host = host or os.environ.get(ENV_CONTROL_HOST) or "127.0.0.1"
        env_port = os.environ.get(ENV_CONTROL_PORT)
        self.port = int(port if port is not None else (env_port or 0))
        self.enable_http = enable_http
        self.auth = auth
        self.cleanup_on_exit = cleanup_on_exit
        self.max_steps = max_steps
        self.check_interval = float(check_interval)
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self._fixed_rank = rank is not None or world_size is not None
        env_rank, env_world = distributed_context()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        self.is_rank0 = self.rank == 0

        self.ledger = Ledger(max_pending=max_pending, on_change=self._ledger_changed)
        # Live training facts; written by the training thread, read by the I/O thread.
        self.current_step = 0
        self.metrics: Any = None
        self.epoch: float | None = None
        self.last_checkpoint: str | None = None
        self.state = "starting"
        self.stop_reason: str | None = None
        self.control_error: str | None = None
        self.url: str | None = None

        self._token = secrets.token_urlsafe(32) if auth else None
        self._server = None
        self._served_http = False  # this process ran the HTTP server at some point
        self._publisher: Publisher | None = None
        self._agreement: Agreement | None = None
        self._solo = self.world_size <= 1
        # The hot path: a check when ``step >= _next_check`` or ``_poke`` is set. Only a
        # process alone is poked; ranks of a job check at agreed steps only.
        self._next_check = 0
        self._poke = False
        self._ready = False  # context resolved and agreement made (first check)
        self._waiting_logged = False
        self._check_seq = 0
        self._last_check = (0, 0.0)  # (step, monotonic time) of the previous check
        self._signal_applied = 0
        self._stop_applied: Actions | None = None
        self._awaiting: list[tuple[str, Command, int]] = []  # (id, command, step applied)
        self._unsynced: list[tuple[str, dict[str, Any]]] = []  # saves done on rank 0, maybe not elsewhere
        self._last_eval: tuple[int, dict[str, Any]] | None = None  # (step, metrics)
        self._rate: float | None = None
        self._rate_sample: tuple[int, float] | None = None
        self._started_at = time.time()
        #: host, boot id, pid and its start time: fixed for the process, read once
        #: (not on every status write or HTTP status request).
        self._identity = process_identity()
        #: which run of the job this is (set by the launcher): a listing that finds a
        #: previous run's status.json next to this run's job.json knows it is stale.
        self._run = {"restarts": int(r)} if (r := os.environ.get(ENV_RESTARTS, "")).isdigit() else {}
        self._signals = SignalFlags(
            tuple(signals or ()),
            on_raise=self._wake,
            stopping=self._second_signal_ends_process,
            repeat_window=signal_repeat_window,
        )
        self.signals = self._signals.signals
        self._started = False
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "Controller":
        """Start serving (rank 0) and install signal handlers. Never raises for a
        control-plane failure: it is logged, recorded in status.json, and training goes on."""
        if self._started:
            return self
        if not self.auth and self.enable_http and not is_loopback_host(self.host):
            raise ValueError(
                f"refusing to serve without a token on non-loopback host {self.host!r}; "
                "keep auth=True or bind 127.0.0.1"
            )
        self._started = True
        self._resolve_context()
        self._signals.install()
        early = _signals_mod.controller_started()
        if early:
            log.warning("forgather control: a stop signal arrived before training started; saving and stopping at the first step")
            for _ in range(early):
                self.raise_signal_flag()
        atexit.register(self._at_exit)
        if self.is_rank0:
            self._serve()
        self.state = "running"
        self._changed()
        return self

    def begin(self) -> None:
        """Train begin: make the agreement now, on every rank at the same point.

        Integrations call this at their train-begin event, when torch.distributed is
        initialised. Calling it is optional: the first ``step`` does the same. Never
        raises."""
        if not self._started:
            self.start()
        if self._ready or self._closed:
            return
        try:
            self._prepare()
        except Exception:
            log.exception("forgather control: could not prepare the agreement; commands apply on no rank")
            self._next_check = NEVER

    @property
    def closed(self) -> bool:
        return self._closed

    def _serve(self) -> None:
        try:
            self.paths.create()
            if self.enable_http:
                try:
                    self._start_server()
                except Exception as exc:
                    self.control_error = f"HTTP server did not start ({exc}); the file channel still works"
                    log.warning("forgather control: %s", self.control_error)
            self._write_endpoint()
            self._publisher = Publisher(
                paths=self.paths,
                ledger=self.ledger,
                status=self.status,
                poll_interval=self.poll_interval,
                heartbeat_interval=self.heartbeat_interval,
            )
            self._publisher.write_status()
            self._publisher.start()
        except Exception as exc:
            self.control_error = f"control plane could not start: {exc}"
            log.warning("forgather control: %s; training goes on without it", self.control_error)

    def _start_server(self) -> None:
        from .server import ServerThread, create_app

        app = create_app(
            job_id=self.job_id,
            ledger=self.ledger,
            status=self.status,
            token=self._token,
            loopback=is_loopback_host(self.host),
        )
        server = ServerThread(app, host=self.host, port=self.port)
        server.start()
        self._server = server
        self._served_http = True
        self.url = server.url
        log.info("forgather control for job %s at %s", self.job_id, self.url)

    def _write_endpoint(self) -> None:
        record = {
            "job_id": self.job_id,
            "url": self.url,
            "port": self._server.port if self._server else None,
            "bind_host": self.host,
            "token": self._token,
            "started_at": self._started_at,
            "protocol": PROTOCOL,
            "world_size": self.world_size,
            **self._identity,
        }
        write_json_atomic(self.paths.endpoint, record, mode=0o600)

    def _resolve_context(self) -> None:
        """Adopt torch.distributed's rank and world size when it is initialised. A
        process that served as rank 0 on a guess, and is not, stops serving."""
        if self._fixed_rank:
            return
        rank, world = distributed_context()
        if (rank, world) == (self.rank, self.world_size):
            return
        was_rank0 = self.is_rank0
        log.info("forgather control: rank %s of %s (was %s of %s)", rank, world, self.rank, self.world_size)
        self.rank, self.world_size = rank, world
        self.is_rank0 = rank == 0
        self._solo = world <= 1
        if self._started and was_rank0 and not self.is_rank0:
            self._stop_serving(remove_endpoint=True)
        elif self._started and self.is_rank0 and not was_rank0:
            self._serve()

    def _stop_serving(self, *, remove_endpoint: bool) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            self.url = None
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None
        if remove_endpoint:
            ep = read_json(self.paths.endpoint, quiet=True) or {}
            if ep.get("pid") == os.getpid():  # only our own record, never the real rank 0's
                remove_quietly(self.paths.endpoint)

    def _prepare(self) -> bool:
        """Resolve the context and, for a job of several processes, make the agreement
        (a collective: every rank gets here at the same point). False: not yet."""
        self._resolve_context()
        if self._solo:
            self._ready = True
            self._next_check = NEVER
            return True
        if not distributed_ready():
            # torchrun's environment says several processes, but torch.distributed is not
            # initialised yet: try again next step. Every rank runs the same program, so
            # every rank makes the agreement at the same step.
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info("forgather control: %s processes but torch.distributed is not initialised yet; "
                         "commands apply once it is", self.world_size)
            return False
        self._agreement = Agreement()
        self._ready = True
        if self.is_rank0 and self._server is not None:
            # After the agreement (a rendezvous of every rank) no process that guessed it
            # was rank 0 still owns endpoint.json: write ours again.
            self._write_endpoint()
        return True

    def close(self, state: str | None = None, *, error: str | None = None) -> None:
        """End the job's control plane. The final state defaults from what happened:
        aborted, stopped (a stop command or signal), failed (``error``) or finished."""
        if self._closed:
            return
        self._closed = True
        if state is None:
            if self._signals.escalated is not None or (self._stop_applied is not None and self._stop_applied.abort):
                state = "aborted"
            elif error:
                state = "failed"
            elif self._stop_applied is not None:
                state = "stopped"
            else:
                state = "finished"
        self.state = state
        self._signals.restore()
        if self._started:
            _signals_mod.controller_closed()
        try:
            atexit.unregister(self._at_exit)
        except Exception:  # pragma: no cover
            pass
        self._dump_trace()
        if self._agreement is not None:
            self._agreement.close()
        if not self.is_rank0 or not self._started:
            return
        try:
            self._finish_ledger(state, error)
            if self._server is not None:
                self._server.stop()
            if self._publisher is not None:
                self._publisher.stop()
                self._publisher.poll_inbox()  # late files: recorded as rejected, not lost
                self._publisher.write_status({"ended_at": time.time(), "error": error})
            if self.cleanup_on_exit:
                remove_quietly(self.paths.endpoint)
        except Exception:
            log.exception("forgather control: error while closing; the job's records may be stale")

    def _at_exit(self) -> None:
        """The process is ending without ``close`` (an exception through the trainer,
        or a second signal): record how it ended, never raise."""
        try:
            if self._signals.escalated is not None:
                self.close("aborted", error="a second signal ended the process without saving")
            else:
                self.close(error="the process exited before training ended")
        except Exception:  # pragma: no cover
            pass

    def _dump_trace(self) -> None:
        directory = os.environ.get(ENV_TRACE_AGREEMENT)
        if not directory:
            return
        try:
            trace = self._agreement.trace if self._agreement is not None else []
            dump_trace(directory, self.rank, trace, extra={"world_size": self.world_size, "final_step": self.current_step, "state": self.state, "served_http": self._served_http, "pid": os.getpid()})
        except Exception:
            log.exception("forgather control: could not write the agreement trace")

    def _finish_ledger(self, state: str, error: str | None) -> None:
        ledger = self.ledger
        self._complete_unsynced()
        ledger.close_intake(f"the job has ended ({state})")
        if self._stop_applied is not None:
            why = f"the job stopped ({self.stop_reason or state}) at step {self.current_step} before the command could apply"
        else:
            why = f"training ended ({state}) at step {self.current_step} before the command could apply (no training step came after it)"
        ledger.drop_pending(why)
        for entry in ledger.open_entries():
            cmd = entry.command
            if cmd in (Command.GRACEFUL_STOP, Command.ABORT) or (cmd == Command.SAVE_AND_STOP and self._saved_for(entry.id)):
                ledger.complete(entry.id, {"step": entry.step, "final_state": state, "final_step": self.current_step})
            elif error:
                ledger.fail(entry.id, f"the job failed before the command completed: {error}")
            else:
                ledger.fail(entry.id, f"the job ended ({state}) before the training loop reported the {cmd.value} result")

    def _saved_for(self, command_id: str) -> bool:
        try:
            e = self.ledger.get(command_id)
        except Exception:
            return False
        return bool(e.result and e.result.get("checkpoint"))

    def __enter__(self) -> "Controller":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("stopped", error="interrupted")
        elif issubclass(exc_type, SystemExit) and self._signals.escalated is not None:
            self.close("aborted", error="a second signal ended the process without saving")
        else:
            self.close(error=f"{exc_type.__name__}: {exc}")

    # -- the hot path ---------------------------------------------------------------
    def step(self, step: int, metrics: Any = None) -> Actions:
        """Call once per optimizer step on every rank, with the same ``step`` on all.
        Returns the actions to take now; ``NO_ACTIONS`` almost always."""
        self.current_step = step
        if metrics is not None:
            self.metrics = metrics
        if step < self._next_check and not self._poke:
            return NO_ACTIONS
        return self._slow_step(step)

    def _slow_step(self, step: int) -> Actions:
        try:
            if not self._ready:
                if not self._started:
                    self.start()
                if not self._prepare():
                    self._next_check = step + 1
                    return NO_ACTIONS
            return self._check(step)
        except Exception:
            log.exception("forgather control: check at step %s failed; commands are off, training goes on", step)
            self._next_check = NEVER
            self._poke = False
            return NO_ACTIONS

    def _check(self, step: int) -> Actions:
        self._poke = False
        rank0 = self.is_rank0
        entry = None
        if rank0:
            self._expire_receipts(step)
            if self._stop_applied is None:
                entry = self.ledger.next_pending()
        proposal = Proposal(
            seq=self._check_seq + 1,
            command=entry.command.code if entry is not None else 0,
            arg=entry.seq if entry is not None else 0,
            signal=min(self._signals.level, 2),
            next_check=self._pick_next_check(step) if rank0 and not self._solo else 0,
        )
        if self._solo:
            agreed = proposal
        else:
            agreed = self._agreement.exchange(proposal)  # type: ignore[union-attr]
            if agreed.seq != proposal.seq:
                log.error("forgather control: ranks disagree on the check count (%s here, %s elsewhere)", proposal.seq, agreed.seq)
            self._next_check = agreed.next_check if agreed.next_check > step else step + 1
        self._check_seq = agreed.seq
        if self._unsynced:  # every rank got here, so every rank finished its earlier saves
            self._complete_unsynced()
        if self._stop_applied is not None:
            return NO_ACTIONS
        if agreed.signal > self._signal_applied:
            self._signal_applied = agreed.signal
            return self._apply_signal(step, agreed.signal)
        if agreed.command:
            cmd = Command.from_code(agreed.command)
            return self._apply(step, cmd, entry.id if entry is not None else None)
        return NO_ACTIONS

    def _apply(self, step: int, cmd: Command, command_id: str | None, reason: str | None = None) -> Actions:
        actions = _actions_for(cmd, command_id, reason)
        if self.is_rank0 and command_id is not None:
            self.ledger.mark_applied(command_id, step)
            if cmd in (Command.SAVE_CHECKPOINT, Command.SAVE_AND_STOP, Command.EVALUATE):
                self._awaiting.append((command_id, cmd, step))
        if actions.stop:
            self._stop_applied = actions
            self.stop_reason = reason or cmd.value
            self.state = "stopping"
            if self.is_rank0:
                self.ledger.close_intake(f"{cmd.value} applied at step {step}")
        if self.is_rank0 and self.ledger.has_pending:
            self._wake()
        self._changed()
        return actions

    def _apply_signal(self, step: int, level: int) -> Actions:
        cmd = Command.ABORT if level >= 2 else Command.SAVE_AND_STOP
        reason = "second signal: stopping without saving" if level >= 2 else "signal received: saving and stopping"
        command_id = None
        if self.is_rank0:
            try:
                entry, _ = self.ledger.submit(cmd, source="signal")
                command_id = entry.id
            except LedgerError as exc:
                # A stop command is queued already: the signal's stop takes its place; the
                # queued one is dropped with a reason when the job ends.
                log.info("forgather control: signal stop not recorded as a command: %s", exc)
        log.warning("forgather control: %s at step %s", reason, step)
        return self._apply(step, cmd, command_id, reason)

    def _pick_next_check(self, step: int) -> int:
        """Rank 0 chooses when to check next so checks come about once per
        ``check_interval`` and at most once per step; the choice travels in the tensor.
        The last step (when known) is always a check, so a command that arrives near
        the end still applies."""
        now = time.monotonic()
        last_step, last_time = self._last_check
        self._last_check = (step, now)
        if last_time == 0.0 or step <= last_step:
            nxt = step + 1
        else:
            per_step = (now - last_time) / (step - last_step)
            prev_gap = step - last_step
            gap = int(self.check_interval / per_step) if per_step > 0 else prev_gap * GAP_GROWTH
            gap = max(1, min(gap, prev_gap * GAP_GROWTH, MAX_GAP))  # grow gradually after a slow step
            nxt = step + gap
        if self.max_steps and step < self.max_steps < nxt:
            nxt = self.max_steps
        return nxt

    def _expire_receipts(self, step: int) -> None:
        if not self._awaiting:
            return
        still = []
        for cid, cmd, applied_at in self._awaiting:
            try:
                done = self.ledger.get(cid).state.final
            except Exception:
                done = True
            if done:
                continue
            if step > applied_at and cmd != Command.SAVE_AND_STOP:
                what = "checkpoint (call checkpoint_saved(path))" if cmd.saves else "evaluation (call evaluation_done(metrics))"
                self.ledger.fail(cid, f"the training loop did not report the {what} after step {applied_at}")
                continue
            still.append((cid, cmd, applied_at))
        self._awaiting = still

    # -- receipts from the training loop ----------------------------------------------
    def checkpoint_saved(self, path: str | os.PathLike[str], *, synced: bool = True) -> None:
        """Record a saved checkpoint; completes the oldest save command waiting for one.
        Also fine to call for the trainer's own periodic saves. Call it on every rank.

        ``synced``: every rank's part of the save is done when this is called (the
        trainer waited for all ranks, like Lightning and the plain loop). With
        ``synced=False`` (HF's Trainer writes rank-local files and does not wait), rank 0
        completes the receipt at the next agreed check, which every rank reaches only
        after its own save, or when the job ends."""
        self.last_checkpoint = str(Path(path).absolute())
        for i, (cid, cmd, step) in enumerate(self._awaiting):
            if cmd.saves:
                del self._awaiting[i]
                result: dict[str, Any] = {"checkpoint": self.last_checkpoint, "step": step, "saved_at_step": self.current_step}
                if self._last_eval is not None and self._last_eval[0] == self.current_step:
                    result["metrics"] = self._last_eval[1]  # "evaluate first": the checkpoint's metrics
                if synced or self._solo:
                    self.ledger.complete(cid, result)
                else:
                    self._unsynced.append((cid, result))
                break
        self._changed()

    def _complete_unsynced(self) -> None:
        done, self._unsynced = self._unsynced, []
        for cid, result in done:
            self.ledger.complete(cid, result)

    def evaluation_done(self, metrics: dict[str, Any] | None = None) -> None:
        """Record an evaluation's metrics; completes the oldest evaluate command."""
        clean = _json_metrics(metrics or {})
        self._last_eval = (self.current_step, clean)
        if clean:
            merged = dict(self.metrics) if isinstance(self.metrics, dict) else {}
            merged.update(clean)
            self.metrics = merged
        for i, (cid, cmd, step) in enumerate(self._awaiting):
            if cmd == Command.EVALUATE:
                del self._awaiting[i]
                self.ledger.complete(cid, {"metrics": clean, "step": step})
                break
        self._changed()

    def command_failed(self, reason: str, command: Command | None = None) -> None:
        """The loop could not do what an applied command asked (e.g. no evaluation set up)."""
        for i, (cid, cmd, _step) in enumerate(self._awaiting):
            if command is None or cmd == command:
                del self._awaiting[i]
                self.ledger.fail(cid, reason)
                break
        self._changed()

    def update_metrics(self, metrics: dict[str, Any]) -> None:
        """Merge the trainer's latest logged values (loss, learning rate, ...) into the
        status. Never a check: log events are not step ends."""
        merged = dict(self.metrics) if isinstance(self.metrics, dict) else {}
        merged.update(metrics)
        self.metrics = merged

    def set_epoch(self, epoch: float | None) -> None:
        self.epoch = epoch

    @property
    def stopping(self) -> bool:
        return self._stop_applied is not None

    @property
    def aborted(self) -> bool:
        return self._signals.escalated is not None or (self._stop_applied is not None and self._stop_applied.abort)

    # -- status ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status record (status.json and GET /status). Called from the I/O and
        HTTP threads; reads only plain attributes."""
        now = time.time()
        step = self.current_step
        rate = self._update_rate(step, now)
        eta = None
        if rate and self.max_steps and step is not None:
            eta = max(0.0, (self.max_steps - step) / rate)
        return {
            "job_id": self.job_id,
            "state": self.state,
            "step": step,
            "max_steps": self.max_steps,
            "epoch": self.epoch,
            "metrics": _json_metrics(self.metrics),
            "steps_per_second": rate,
            "eta_seconds": eta,
            "last_checkpoint": self.last_checkpoint,
            "world_size": self.world_size,
            "stop_reason": self.stop_reason,
            "commands": self.ledger.recent(20),
            "pending_commands": self.ledger.pending_count(),
            "control_error": self.control_error,
            "http": {"url": self.url} if self.url else None,
            "started_at": self._started_at,
            "updated_at": now,
            "check_interval": self.check_interval,
            "protocol": PROTOCOL,
            **self._run,
            **self._identity,
        }

    def _update_rate(self, step: int, now: float) -> float | None:
        with self._lock:  # the I/O and HTTP threads both ask
            sample = self._rate_sample
            if sample is None or step < sample[0]:
                self._rate_sample = (step, now)
                return self._rate
            dt = now - sample[1]
            if dt >= 1.0:
                inst = (step - sample[0]) / dt
                self._rate = inst if self._rate is None else 0.5 * self._rate + 0.5 * inst
                self._rate_sample = (step, now)
            return self._rate

    def _ledger_changed(self) -> None:
        self._wake()
        self._changed()

    def _wake(self) -> None:
        """Something to look at (a command, a signal). A process alone checks at its
        next step; ranks of a job wait for their next agreed check."""
        if self._solo:
            self._poke = True

    def _changed(self) -> None:
        pub = self._publisher
        if pub is not None:
            pub.changed()

    # -- signals --------------------------------------------------------------------
    def raise_signal_flag(self) -> None:
        """What a signal handler does: raise the level, nothing else (no I/O, no
        collective). Usable by launchers and tests without a real signal."""
        self._signals.raise_level()

    def _second_signal_ends_process(self) -> bool:
        """A signal while a stop is being carried out, when that stop came from a
        signal (here or agreed from another rank) or this rank had one already."""
        return self._stop_applied is not None and (self._signal_applied >= 1 or self._signals.level >= 1)

