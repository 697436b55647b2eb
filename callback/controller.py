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
serves HTTP, polls the inbox and writes endpoint.json / status.json; on every rank it
takes part in the agreement at check steps all ranks know in advance, so every rank
gets the same actions at the same step. With no command pending, ``step`` is an integer
comparison and two attribute writes.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgather.control import (
    ENV_CONTROL_HOST,
    ENV_CONTROL_PORT,
    ENV_JOB_ID,
    PROTOCOL,
    Command,
    JobPaths,
    Ledger,
    default_job_id,
    process_identity,
    resolve_jobs_dir,
    validate_job_id,
    write_json_atomic,
)
from forgather.control.files import remove_quietly

from .agreement import Agreement, Proposal, distributed_context
from .publisher import Publisher

log = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


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
    (remove endpoint.json and stray inbox files at exit), ``max_steps``,
    ``check_interval`` (seconds between agreement checks across ranks), ``signals``
    (signals that mean "save and stop"; () for none).
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
        self.signals = tuple(signals or ())
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
        self.control_error: str | None = None
        self.url: str | None = None
        self.final_step: int | None = None

        self._token = secrets.token_urlsafe(32) if auth else None
        self._server = None
        self._publisher: Publisher | None = None
        self._agreement: Agreement | None = None
        self._solo = self.world_size <= 1
        self._next_check = 0
        self._check_seq = 0
        self._last_check = (0, 0.0)  # (step, monotonic time) of the previous check
        self._attention = False  # set by other threads / handlers: look at the slow path
        self._signal_level = 0
        self._signal_applied = 0
        self._stop_applied: Actions | None = None
        self._awaiting: list[tuple[str, Command, int]] = []  # (id, command, step applied)
        self._rate: float | None = None
        self._rate_sample: tuple[int, float] | None = None
        self._started_at = time.time()
        self._prev_handlers: dict[int, Any] = {}
        self._started = False
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "Controller":
        """Start serving (rank 0) and install signal handlers. Never raises for a
        control-plane failure: it is logged, recorded in status.json, and training goes on."""
        if self._started:
            return self
        self._started = True
        if not self.auth and self.enable_http and not _is_loopback(self.host):
            raise ValueError(
                f"refusing to serve without a token on non-loopback host {self.host!r}; "
                "keep auth=True or bind 127.0.0.1"
            )
        self._install_signals()
        if self.is_rank0:
            try:
                self._start_rank0()
            except Exception as exc:
                self.control_error = f"control plane could not start: {exc}"
                log.warning("%s; training goes on without it", self.control_error)
        self.state = "running"
        if self._publisher is not None:
            self._publisher.changed()
        return self

    def _start_rank0(self) -> None:
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

    def _start_server(self) -> None:
        from .server import ServerThread, create_app, is_loopback

        app = create_app(
            job_id=self.job_id,
            ledger=self.ledger,
            status=self.status,
            token=self._token,
            loopback=is_loopback(self.host),
        )
        server = ServerThread(app, host=self.host, port=self.port)
        server.start()
        self._server = server
        self.url = server.url
        log.info("forgather control for job %s at %s", self.job_id, self.url)

    def _write_endpoint(self) -> None:
        ident = process_identity()
        record = {
            "job_id": self.job_id,
            "url": self.url,
            "port": self._server.port if self._server else None,
            "bind_host": self.host,
            "token": self._token,
            "started_at": self._started_at,
            "protocol": PROTOCOL,
            "world_size": self.world_size,
            **ident,
        }
        write_json_atomic(self.paths.endpoint, record, mode=0o600)

    def close(self, state: str | None = None, *, error: str | None = None) -> None:
        """End the job's control plane. The final state defaults from what happened:
        aborted, stopped (a stop command or signal), failed (``error``) or finished."""
        if self._closed:
            return
        self._closed = True
        if state is None:
            if self._stop_applied is not None and self._stop_applied.abort:
                state = "aborted"
            elif error:
                state = "failed"
            elif self._stop_applied is not None:
                state = "stopped"
            else:
                state = "finished"
        self.state = state
        self.final_step = self.current_step
        self._restore_signals()
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

    def _finish_ledger(self, state: str, error: str | None) -> None:
        ledger = self.ledger
        ledger.close_intake(f"the job has ended ({state})")
        why = f"the job ended ({state}) at step {self.current_step} before the command could apply"
        ledger.drop_pending(why)
        for entry in ledger.open_entries():
            cmd = entry.command
            if cmd in (Command.GRACEFUL_STOP, Command.ABORT) or (cmd == Command.SAVE_AND_STOP and self._saved_for(entry.id)):
                ledger.complete(entry.id, {"step": self.current_step, "final_state": state})
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
        else:
            self.close(error=f"{exc_type.__name__}: {exc}")

    # -- the hot path ---------------------------------------------------------------
    def step(self, step: int, metrics: Any = None) -> Actions:
        """Call once per optimizer step on every rank, with the same ``step`` on all.
        Returns the actions to take now; ``NO_ACTIONS`` almost always."""
        self.current_step = step
        if metrics is not None:
            self.metrics = metrics
        if self._solo:
            if not self._attention:
                return NO_ACTIONS
        elif step < self._next_check:
            return NO_ACTIONS
        try:
            return self._check(step)
        except Exception:
            log.exception("forgather control: check at step %s failed; training goes on", step)
            return NO_ACTIONS

    def _check(self, step: int) -> Actions:
        self._attention = False
        self._expire_receipts(step)
        entry = self.ledger.next_pending() if self.is_rank0 and self._stop_applied is None else None
        proposal = Proposal(
            seq=self._check_seq + 1,
            command=entry.command.code if entry is not None else 0,
            arg=entry.seq if entry is not None else 0,
            signal=min(self._signal_level, 2),
            next_check=self._pick_next_check(step) if self.is_rank0 else 0,
        )
        if self._solo:
            agreed = proposal
        else:
            agreement = self._agreement or self._make_agreement()
            if agreement is None:
                return NO_ACTIONS
            agreed = agreement.exchange(proposal)
            self._next_check = agreed.next_check
        self._check_seq = agreed.seq
        if self._stop_applied is not None:
            return NO_ACTIONS
        if agreed.signal > self._signal_applied:
            self._signal_applied = agreed.signal
            return self._apply_signal(step, agreed.signal)
        if agreed.command:
            cmd = Command.from_code(agreed.command)
            return self._apply(step, cmd, entry.id if entry is not None else None)
        if self.is_rank0 and (self.ledger.has_pending or self._awaiting):
            self._attention = True
        return NO_ACTIONS

    def _apply(self, step: int, cmd: Command, command_id: str | None, reason: str | None = None) -> Actions:
        actions = _actions_for(cmd, command_id, reason)
        if self.is_rank0 and command_id is not None:
            self.ledger.mark_applied(command_id, step)
            if cmd in (Command.SAVE_CHECKPOINT, Command.SAVE_AND_STOP, Command.EVALUATE):
                self._awaiting.append((command_id, cmd, step))
        if actions.stop:
            self._stop_applied = actions
            self.state = "stopping"
            if self.is_rank0:
                self.ledger.close_intake(f"{cmd.value} applied at step {step}")
        if self.is_rank0 and self.ledger.has_pending:
            self._attention = True
        return actions

    def _apply_signal(self, step: int, level: int) -> Actions:
        cmd = Command.ABORT if level >= 2 else Command.SAVE_AND_STOP
        reason = "second signal: stopping without saving" if level >= 2 else "signal received: saving and stopping"
        command_id = None
        if self.is_rank0:
            try:
                entry, _ = self.ledger.submit(cmd, source="signal")
                command_id = entry.id
            except Exception:  # intake already closed (a stop was queued): take over its slot
                entry = self.ledger.next_pending()
                command_id = None
                if entry is not None and entry.command.stops:
                    command_id = entry.id
        log.warning("forgather control: %s at step %s", reason, step)
        return self._apply(step, cmd, command_id, reason)

    def _make_agreement(self) -> Agreement | None:
        try:
            self._agreement = Agreement()
        except Exception as exc:
            log.error("forgather control: %s; commands apply on no rank until it is", exc)
            self._next_check = 1 << 62
            return None
        return self._agreement

    def _pick_next_check(self, step: int) -> int:
        """Rank 0 chooses when to check next so checks come about once per
        ``check_interval`` and at most once per step; the choice travels in the tensor."""
        now = time.monotonic()
        last_step, last_time = self._last_check
        self._last_check = (step, now)
        if self._solo or last_time == 0.0 or step <= last_step:
            return step + 1
        per_step = (now - last_time) / (step - last_step)
        if per_step <= 0:
            return step + 1
        prev_gap = max(1, step - last_step)
        gap = int(self.check_interval / per_step)
        gap = max(1, min(gap, prev_gap * 4, 100_000))  # grow gradually after a slow step
        return step + gap

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
    def checkpoint_saved(self, path: str | os.PathLike[str]) -> None:
        """Record a saved checkpoint; completes the oldest save command waiting for one.
        Also fine to call for the trainer's own periodic saves."""
        self.last_checkpoint = str(Path(path).absolute())
        for i, (cid, cmd, step) in enumerate(self._awaiting):
            if cmd.saves:
                del self._awaiting[i]
                if self.is_rank0:
                    self.ledger.complete(cid, {"checkpoint": self.last_checkpoint, "step": step})
                break
        self._changed()

    def evaluation_done(self, metrics: dict[str, Any] | None = None) -> None:
        """Record an evaluation's metrics; completes the oldest evaluate command."""
        clean = _json_metrics(metrics or {})
        for i, (cid, cmd, step) in enumerate(self._awaiting):
            if cmd == Command.EVALUATE:
                del self._awaiting[i]
                if self.is_rank0:
                    self.ledger.complete(cid, {"metrics": clean, "step": step})
                break
        self._changed()

    def command_failed(self, reason: str, command: Command | None = None) -> None:
        """The loop could not do what an applied command asked (e.g. no evaluation set up)."""
        for i, (cid, cmd, _step) in enumerate(self._awaiting):
            if command is None or cmd == command:
                del self._awaiting[i]
                if self.is_rank0:
                    self.ledger.fail(cid, reason)
                break

    def set_epoch(self, epoch: float | None) -> None:
        self.epoch = epoch

    @property
    def stopping(self) -> bool:
        return self._stop_applied is not None

    @property
    def aborted(self) -> bool:
        return self._stop_applied is not None and self._stop_applied.abort

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
        ident = process_identity()
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
            "commands": self.ledger.recent(20),
            "pending_commands": self.ledger.pending_count(),
            "control_error": self.control_error,
            "http": {"url": self.url} if self.url else None,
            "started_at": self._started_at,
            "updated_at": now,
            "check_interval": self.check_interval,
            "protocol": PROTOCOL,
            **ident,
        }

    def _update_rate(self, step: int, now: float) -> float | None:
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
        self._attention = True
        self._changed()

    def _changed(self) -> None:
        pub = self._publisher
        if pub is not None:
            pub.changed()

    # -- signals --------------------------------------------------------------------
    def raise_signal_flag(self) -> None:
        """What a signal handler does: raise the level, nothing else (no I/O, no
        collective). Usable by launchers and tests without a real signal."""
        self._signal_level += 1
        self._attention = True

    def _install_signals(self) -> None:
        if not self.signals or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            try:
                self._prev_handlers[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError) as exc:
                log.debug("cannot handle signal %s: %s", signum, exc)

    def _on_signal(self, signum: int, frame: Any) -> None:
        prev = self._prev_handlers.get(signum)
        if self._stop_applied is not None and self._signal_level >= 1:
            # Already stopping (maybe inside a long save) and asked again: escalate the
            # way the process would have without us.
            self._restore_signals()
            if callable(prev):
                prev(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.raise_signal_flag()
        if callable(prev) and prev not in (signal.default_int_handler,):
            try:
                prev(signum, frame)
            except Exception:
                log.exception("previous handler for signal %s failed", signum)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, prev in self._prev_handlers.items():
            try:
                signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self._prev_handlers.clear()


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
