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
  ``forgather-step=<step>.ckpt``;
- ``evaluate``: the validation loop, run the way Lightning runs it mid-epoch;
- ``graceful_stop`` / ``save_and_stop``: ``trainer.should_stop = True`` (Lightning's own
  end of training follows, validation included);
- ``abort``: ``should_stop``, no validation, and every save after it is skipped
  (``ModelCheckpoint`` would otherwise save at the epoch end and delete the previous
  checkpoint it replaces).
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
            self._last_step = -1
            self._aborted = False
            ctl.start()
            ctl.begin()  # torch.distributed is initialised by now, on every rank
        except Exception:
            log.exception("forgather control: could not start; training goes on without it")

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

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
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
        if act.save:
            path = os.path.join(_checkpoint_dir(trainer), f"forgather-step={step}.ckpt")
            trainer.save_checkpoint(path)  # every rank; Lightning writes on rank 0 and waits for all
            ctl.checkpoint_saved(path)
        if act.evaluate:
            if trainer.enable_validation:
                _run_validation(trainer)
            else:
                ctl.command_failed("this Trainer has no validation set up (no val_dataloaders or validation_step)", Command.EVALUATE)
        if act.stop:
            trainer.should_stop = True

    def _block_saves(self, trainer: Any) -> None:
        """After an abort nothing is saved: ModelCheckpoint skips a step it saved at, and
        any other caller of trainer.save_checkpoint gets a no-op."""
        for cb in getattr(trainer, "checkpoint_callbacks", []) or []:
            if hasattr(cb, "_last_global_step_saved"):
                cb._last_global_step_saved = trainer.global_step
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        if loop is not None and hasattr(loop, "_skip_next_val"):
            loop._skip_next_val = True
        if self._patched_save is None:
            self._patched_save = trainer.__dict__.get("save_checkpoint", _MISSING)

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
