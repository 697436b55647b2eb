"""Lightning integration: :class:`LightningControlCallback`.

Importing ``forgather_control.callback`` never imports this module, and importing this module
imports no Lightning: the class is built on first use, on the ``Callback`` of the package
the trainer comes from. ``lightning.pytorch`` and the standalone ``pytorch_lightning``
are separate packages with separate ``Callback`` types, and both may be installed;
``LightningControlCallback`` is the one for ``lightning.pytorch`` (else
``pytorch_lightning``), ``control_callback_class("pytorch_lightning")`` the other.

Where the commands land: at ``on_train_batch_end`` once the optimizer has stepped
(``trainer.global_step`` moved; with gradient accumulation the batches in between are
not step ends), on every rank at the agreed step:

- ``save_checkpoint`` / ``save_and_stop``: ``trainer.save_checkpoint(path)`` on every rank
  (Lightning writes on rank 0 and waits for all ranks), ``path`` under the
  ``ModelCheckpoint`` folder (else ``<default_root_dir>/checkpoints``) named
  ``forgather-step=<step>.ckpt``; a ``save`` validates first when validation is
  configured (a val dataloader and ``validation_step``: ``actions.evaluates_first``);
- ``evaluate``: the validation loop, run the way Lightning runs it mid-epoch; a checkpoint
  the trainer's own callbacks write after it (``ModelCheckpoint``) is named in the receipt;
- ``graceful_stop``: ``trainer.should_stop = True`` (Lightning's own end of training
  follows, validation included); ``save_and_stop``: the same without that validation;
- ``abort``: ``should_stop``, no validation, and every save after it is skipped
  (``ModelCheckpoint`` would otherwise save at the epoch end and delete the previous
  checkpoint it replaces).

A stop that cannot wait (a signal's save-and-stop, ``save-stop``, ``abort``) also applies
between validation batches, when every rank has the same number of them (agreed once at
``on_validation_start``): the validation ends there (``StopIteration``, as after its last
batch), ``ModelCheckpoint`` does not judge its partial metrics, and the stop is carried out
at ``on_validation_end``, at the step the validation belongs to.

Live knobs (``forgather control set``), declared at ``on_train_start`` on every rank for
what this trainer honours, each changed on every rank at the agreed step, where Lightning
reads it next:

- ``lr``, ``lr_scale``: every parameter group of ``trainer.optimizers`` and the base rates
  of the schedulers in ``trainer.lr_scheduler_configs``, in proportion (the schedule keeps
  the change);
- ``max_steps``: ``fit_loop.epoch_loop.max_steps``, read after every batch; below the
  current step the fit ends (finished) after this one. With a finite ``max_epochs`` the
  run also ends when those epochs are done: the knob's ``max`` is the steps they hold;
- ``log_every``: ``trainer.log_every_n_steps`` (when logging is on);
- ``save_every``: ``ModelCheckpoint(every_n_train_steps=N)``'s interval (declared when one
  saves every N steps; every ModelCheckpoint with the first one's interval changes). Its
  checkpoint state keeps the key of the script's interval, so a resumed run finds it;
- ``eval_every``: an int ``val_check_interval`` (batches), in optimizer steps: the
  trainer's ``val_check_batch`` is the knob times ``accumulate_grad_batches``; with
  ``check_val_every_n_epoch`` set it counts within each epoch, at most the epoch's steps;
- ``max_grad_norm``: ``trainer.gradient_clip_val`` when clipping by norm is set (0: none).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
from typing import Any

from forgather_control.core import Command

from .controller import Controller
from .knobs import learning_rate_knobs

log = logging.getLogger(__name__)

#: The two packages a Lightning Trainer can come from, the unified one first.
PACKAGES = ("lightning.pytorch", "pytorch_lightning")
_classes: dict[str, type] = {}


def control_callback_class(package: str | None = None) -> type:
    """The control callback class built on ``package``'s ``Callback``.

    One class per package, made once: a ``pytorch_lightning.Trainer`` only knows
    ``pytorch_lightning.Callback``. ``package=None`` picks ``lightning.pytorch`` when
    ``lightning`` is installed, else ``pytorch_lightning``.
    """
    if package is None:
        package = PACKAGES[0] if importlib.util.find_spec("lightning") is not None else PACKAGES[1]
    if package not in PACKAGES:
        raise ValueError(f"unknown Lightning package {package!r}; expected one of {', '.join(PACKAGES)}")
    cls = _classes.get(package)
    if cls is None:
        try:
            pl = importlib.import_module(package)
        except ImportError as exc:
            hint = "pip install 'forgather-control[lightning]'" if package == PACKAGES[0] else "pip install pytorch-lightning"
            raise ImportError(f"the Lightning control callback needs {package} ({exc}); install it with {hint}", name=exc.name) from exc
        cls = type(
            "LightningControlCallback",
            (LightningControl, pl.Callback),
            {"__module__": __name__, "__qualname__": "LightningControlCallback", "__doc__": LightningControl.__doc__},
        )
        _classes[package] = cls
    return cls


def __getattr__(name: str) -> Any:
    if name == "LightningControlCallback":
        return control_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LightningControl:
    """Control a Lightning ``Trainer.fit``. Takes the :class:`Controller` options, or
    ``controller=`` (then its owner closes it).

    The behaviour, without a base class: :func:`control_callback_class` mixes it into the
    right package's ``Callback``, and ``isinstance(cb, LightningControl)`` finds either.
    """

    def __init__(self, controller: Controller | None = None, **options: Any) -> None:
        super().__init__()
        self._own = controller is None
        self._options = options
        self.controller: Controller = controller if controller is not None else Controller(**options)
        self._last_step = -1
        self._aborted = False
        self._patched_save: Any = None
        self._val_batches = 0  # batches of the validation under way
        self._cut: Any = None  # the stop that cut the validation under way short
        self._validating = False  # a commanded validation: it reports when the trainer's callbacks are done
        # The last batch's outputs, read into metrics only when the Controller looks (a
        # status write, a check): the step itself builds nothing (bench_hooks.py).
        self._outputs: Any = None
        self._trainer: Any = None
        self._step_metrics = self._metrics_of_last_step  # one bound method, made once

    @property
    def aborted(self) -> bool:
        return self._aborted or self.controller.aborted

    def _metrics_of_last_step(self) -> dict[str, Any]:
        """The loss of the last batch (a detached tensor: read as a number by whoever looks)
        and the learning rate now."""
        outputs = self._outputs
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        return {"loss": loss.detach() if hasattr(loss, "detach") else loss, "learning_rate": _lr(self._trainer)}

    @property
    def state_key(self) -> str:
        return "LightningControlCallback"

    # -- lifecycle -------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        try:
            if self.controller.closed and self._own:
                self.controller = Controller(**{**self._options, "job_id": self.controller.job_id})
            ctl = self.controller
            max_steps = _max_steps(trainer)
            if max_steps:
                ctl.max_steps = max_steps
            ctl.evaluates = bool(trainer.enable_validation)  # a val dataloader and validation_step
            self._last_step = -1
            self._aborted = False
            ctl.start()
            ctl.begin()  # torch.distributed is initialised by now, on every rank
        except Exception:
            log.exception("forgather control: could not start; training goes on without it")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # The strategy wrapped the model in DDP after ``setup``: hand it over, so stragglers
        # are judged by each rank's own time (the gradient all-reduce's waits left out).
        self.controller.watch(getattr(trainer.strategy, "model", None))
        declare_knobs(self.controller, trainer)  # every rank, here: optimizers, loops and callbacks are set up

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # a micro-batch of gradient accumulation: not a step end
        self._last_step = step
        ctl = self.controller
        ctl.current_step = step
        self._outputs, self._trainer = outputs, trainer
        if step < ctl._next_check and not ctl._poke:
            return  # Controller.step's test, inlined: between checks nothing else runs
        ctl.epoch = trainer.current_epoch
        act = ctl.step(step, self._step_metrics)
        if not act:
            return
        try:
            self._apply(act, trainer, step)
        except Exception:
            log.exception("forgather control: could not apply %s; training goes on", act.command)
            if act.command_id is not None:
                ctl.command_failed(f"{act.command} failed on rank {ctl.rank}; see the job's log", act.command)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._val_batches = 0
        try:
            batches = sum(trainer.num_val_batches)
        except (TypeError, AttributeError):
            batches = 0  # not known: a stop waits for the validation's end
        self.controller.evaluation_started(batches)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        self._val_batches += 1
        act = self.controller.evaluation_batch(self._val_batches)
        if act and act.stop:
            self._cut = act
            for cb in getattr(trainer, "checkpoint_callbacks", []) or []:
                if hasattr(cb, "_last_global_step_saved"):
                    cb._last_global_step_saved = trainer.global_step  # partial metrics judge no checkpoint
            raise StopIteration  # Lightning's evaluation loop ends here, as after its last batch

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.controller.check_next_step()  # every rank builds the checkpoint: a stop asked during the save applies next step

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self.controller.check_next_step()  # every rank validated: a stop asked meanwhile applies next step
        cut, self._cut = self._cut, None
        if cut is not None:
            try:
                self._apply(cut, trainer, trainer.global_step)
            except Exception:
                log.exception("forgather control: could not apply %s; training goes on", cut.command)
                if cut.command_id is not None:
                    self.controller.command_failed(f"{cut.command} failed on rank {self.controller.rank}; see the job's log", cut.command)
            return
        if not self._validating:  # a commanded one reports once ModelCheckpoint has run
            self.controller.evaluation_done(_metrics(trainer))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self._own and not self.controller.closed:
            self.controller.close(error=f"{type(exception).__name__}: {exception}")

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._unpatch(trainer)
            self._close()

    def _close(self) -> None:
        if self._own and not self.controller.closed:
            try:
                self.controller.close()
            except Exception:
                log.exception("forgather control: error while closing")

    # -- mapping ---------------------------------------------------------------------
    def _apply(self, act: Any, trainer: Any, step: int) -> None:
        ctl = self.controller
        if act.abort:
            self._aborted = True
            self._block_saves(trainer)
            trainer.should_stop = True
            return
        if act.evaluate:  # first: a save evaluates before it writes
            if trainer.enable_validation:
                self._validate(trainer)
                if self.aborted:
                    return  # an abort cut the validation short
            else:
                ctl.command_failed("this Trainer has no validation set up (no val_dataloaders or validation_step)", Command.EVALUATE)
        if act.save:
            path = os.path.join(_checkpoint_dir(trainer), f"forgather-step={step}.ckpt")
            trainer.save_checkpoint(path)  # every rank; Lightning writes on rank 0 and waits for all
            ctl.checkpoint_saved(path)
        if act.stop:
            trainer.should_stop = True
            if act.command is not None and act.command.saves_and_stops:
                _skip_next_validation(trainer)  # checkpoint, then stop: not Lightning's validation on the way out

    def _validate(self, trainer: Any) -> None:
        """A commanded validation; reports its metrics, with the checkpoint the trainer's
        own callbacks wrote after it (ModelCheckpoint), unless a stop cut it short."""
        written: list[str] = []
        restore = _capture_saves(trainer, written)
        self._validating = True
        try:
            _run_validation(trainer)
        finally:
            self._validating = False
            restore()
        if self.controller.stopping:
            return  # cut short by a stop, carried out already
        theirs = [p for p in written if os.path.basename(p) != f"forgather-step={trainer.global_step}.ckpt"]
        note = "the trainer's checkpoint callback (ModelCheckpoint) wrote this checkpoint after the evaluation" if theirs else None
        self.controller.evaluation_done(_metrics(trainer), checkpoint=theirs[-1] if theirs else None, note=note)

    def _block_saves(self, trainer: Any) -> None:
        """After an abort nothing is saved: ModelCheckpoint skips a step it saved at, and
        any other caller of trainer.save_checkpoint gets a no-op."""
        for cb in getattr(trainer, "checkpoint_callbacks", []) or []:
            if hasattr(cb, "_last_global_step_saved"):
                cb._last_global_step_saved = trainer.global_step
        _skip_next_validation(trainer)
        if self._patched_save is None:
            current = trainer.__dict__.get("save_checkpoint", _MISSING)
            self._patched_save = getattr(current, "_forgather_had", current)  # not a validation's capture

            def skip(*args: Any, **kwargs: Any) -> None:
                log.info("forgather control: checkpoint skipped, the job was aborted")

            trainer.save_checkpoint = skip

    def _unpatch(self, trainer: Any) -> None:
        if self._patched_save is None:
            return
        if self._patched_save is _MISSING:
            trainer.__dict__.pop("save_checkpoint", None)
        else:
            trainer.save_checkpoint = self._patched_save
        self._patched_save = None


_MISSING = object()


def declare_knobs(ctl: Controller, trainer: Any) -> list[str]:
    """Declare on ``ctl`` the knobs ``trainer`` honours (the module's docstring says where
    each lands); the names declared. A knob the trainer's setup cannot have is left out,
    and one that fails to declare is logged: training goes on without it."""
    done = []
    for name, declare in _KNOBS.items():
        try:
            if declare(ctl, trainer):
                done.append(name)
        except Exception:
            log.exception("forgather control: knob %s not declared; training goes on without it", name)
    return done


def _rate_knobs(ctl: Controller, trainer: Any) -> bool:
    return learning_rate_knobs(ctl, lambda: trainer.optimizers, lambda: [c.scheduler for c in trainer.lr_scheduler_configs])


def _max_steps_knob(ctl: Controller, trainer: Any) -> bool:
    length = _max_steps(trainer)
    if not length:
        return False  # no length: neither max_steps nor max_epochs bounds the run

    def changed(old: Any, new: Any) -> None:
        trainer.fit_loop.epoch_loop.max_steps = int(new)

    bound = _epochs_bound(trainer)
    where = f"; max_epochs={trainer.max_epochs} ends the run at step {bound} at most" if bound else ""
    length = min(length, bound) if bound else length
    ctl.knob("max_steps", length, min=1, max=bound, on_change=changed, help=f"the run's length (Trainer max_steps){where}")
    return True


def _epochs_bound(trainer: Any) -> int | None:
    """The steps ``max_epochs`` allows, when it bounds the run (as Lightning estimates them)."""
    epochs = trainer.max_epochs
    batches = trainer.num_training_batches
    if epochs is None or epochs < 0 or not isinstance(batches, (int, float)) or not math.isfinite(batches):
        return None
    return math.ceil(batches / trainer.accumulate_grad_batches) * max(int(epochs), 1)


def _log_every_knob(ctl: Controller, trainer: Any) -> bool:
    every = trainer.log_every_n_steps
    if not isinstance(every, int) or every < 1:
        return False  # logging is off (barebones)

    def changed(old: Any, new: Any) -> None:
        trainer.log_every_n_steps = int(new)

    ctl.knob("log_every", every, min=1, on_change=changed, help="log every N steps (Trainer log_every_n_steps)")
    return True


def _save_every_knob(ctl: Controller, trainer: Any) -> bool:
    timed = [cb for cb in trainer.checkpoint_callbacks if isinstance(getattr(cb, "_every_n_train_steps", None), int) and cb._every_n_train_steps >= 1]
    if not timed:
        return False
    every = timed[0]._every_n_train_steps
    alike = [cb for cb in timed if cb._every_n_train_steps == every]

    def changed(old: Any, new: Any) -> None:
        for cb in alike:
            _keep_state_key(cb)
            cb._every_n_train_steps = int(new)

    ctl.knob("save_every", every, min=1, on_change=changed, help="save every N steps (ModelCheckpoint every_n_train_steps)")
    return True


#: ModelCheckpoint's subclasses whose state key stays the one of the script's settings.
_KEPT_KEY: dict[type, type] = {}


def _keep_state_key(cb: Any) -> None:
    """A ModelCheckpoint's state in a checkpoint is filed under a key made of its settings
    (``every_n_train_steps`` among them): after a change the callback keeps the key of the
    script's settings, so the run that resumes from its checkpoint (built by the script,
    again) finds its state (best and last paths) instead of a warning."""
    if "_forgather_state_key" in cb.__dict__:
        return
    cb._forgather_state_key = cb.state_key
    cls = type(cb)
    kept = _KEPT_KEY.get(cls)
    if kept is None:
        state_key = property(lambda self: self._forgather_state_key, doc=cls.state_key.__doc__)
        kept = type(cls.__name__, (cls,), {"state_key": state_key, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        _KEPT_KEY[cls] = kept
    cb.__class__ = kept


def _eval_every_knob(ctl: Controller, trainer: Any) -> bool:
    interval, batches, accum = trainer.val_check_interval, trainer.val_check_batch, trainer.accumulate_grad_batches
    if (
        not trainer.enable_validation
        or getattr(trainer, "_val_check_time_interval", None) is not None
        or type(interval) is not int
        or type(batches) is not int
        or type(accum) is not int
        or batches < 1
        or batches % accum
    ):
        return False  # a fraction of an epoch, a time, or batches that are not whole steps
    bound = None
    if trainer.check_val_every_n_epoch is not None:  # counted within each epoch, at most its length
        epoch = trainer.num_training_batches
        bound = int(epoch) // accum if isinstance(epoch, (int, float)) and math.isfinite(epoch) else None

    def changed(old: Any, new: Any) -> None:
        trainer.val_check_batch = trainer.val_check_interval = int(new) * accum

    ctl.knob("eval_every", batches // accum, min=1, max=bound, on_change=changed, help="validate every N steps (Trainer val_check_interval)")
    return True


def _max_grad_norm_knob(ctl: Controller, trainer: Any) -> bool:
    clip, algorithm = trainer.gradient_clip_val, trainer.gradient_clip_algorithm
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0 or (algorithm is not None and algorithm != "norm"):
        return False  # no clipping, or by value
    if not trainer.lightning_module.automatic_optimization or "deepspeed" in type(trainer.strategy).__name__.lower():
        return False  # the module clips, or DeepSpeed (which read the value once, at setup)

    def changed(old: Any, new: Any) -> None:
        trainer.gradient_clip_val = float(new)

    ctl.knob("max_grad_norm", float(clip), min=0.0, on_change=changed, help="clip the gradients' norm to this (Trainer gradient_clip_val; 0: no clipping)")
    return True


_KNOBS = {
    "lr": _rate_knobs,
    "max_steps": _max_steps_knob,
    "log_every": _log_every_knob,
    "save_every": _save_every_knob,
    "eval_every": _eval_every_knob,
    "max_grad_norm": _max_grad_norm_knob,
}


def _skip_next_validation(trainer: Any) -> None:
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if loop is not None and hasattr(loop, "_skip_next_val"):
        loop._skip_next_val = True


def _capture_saves(trainer: Any, written: list[str]) -> Any:
    """Note every path ``trainer.save_checkpoint`` writes until the returned function is
    called (which puts the method back, unless something replaced it meanwhile)."""
    had = trainer.__dict__.get("save_checkpoint", _MISSING)
    inner = trainer.save_checkpoint

    def capture(filepath: Any, *args: Any, **kwargs: Any) -> Any:
        written.append(str(filepath))
        return inner(filepath, *args, **kwargs)

    capture._forgather_had = had  # type: ignore[attr-defined]
    trainer.save_checkpoint = capture

    def restore() -> None:
        if trainer.__dict__.get("save_checkpoint") is capture:
            if had is _MISSING:
                del trainer.__dict__["save_checkpoint"]
            else:
                trainer.save_checkpoint = had

    return restore


def _run_validation(trainer: Any) -> None:
    """The validation loop, as Lightning's training epoch loop runs it mid-epoch."""
    epoch_loop = trainer.fit_loop.epoch_loop
    connector = trainer._logger_connector
    first_loop_iter = connector._first_loop_iter
    trainer.validating = True
    try:
        epoch_loop.val_loop.run()
    finally:
        trainer.training = True
        connector._first_loop_iter = first_loop_iter


def _checkpoint_dir(trainer: Any) -> str:
    cb = getattr(trainer, "checkpoint_callback", None)
    dirpath = getattr(cb, "dirpath", None) if cb is not None else None
    return str(dirpath) if dirpath else os.path.join(trainer.default_root_dir, "checkpoints")


def _max_steps(trainer: Any) -> int | None:
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        est = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - Lightning computes it from the user's dataloaders
        return None
    return int(est) if isinstance(est, (int, float)) and math.isfinite(est) else None


def _lr(trainer: Any) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError, TypeError):
        return None


def _metrics(trainer: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in dict(trainer.callback_metrics).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out
