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

    @property
    def aborted(self) -> bool:
        return self._aborted or self.controller.aborted

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

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # a micro-batch of gradient accumulation: not a step end
        self._last_step = step
        ctl = self.controller
        ctl.epoch = trainer.current_epoch
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        act = ctl.step(step, {"loss": loss.detach() if hasattr(loss, "detach") else loss, "learning_rate": _lr(trainer)})
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
            if act.command == Command.SAVE_AND_STOP:
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
