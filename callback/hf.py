"""HF-style callback trainers: :class:`TrainerControlCallback`.

It serves HuggingFace's ``Trainer`` and the Forgather framework's trainers, which take
the same callbacks (their differences: :mod:`.forgather`). Importing this module imports
neither: the callback duck-types the ``TrainerCallback`` protocol (both trainers only
call ``on_*`` methods by name), so the launcher can inject it and a user can import it
without paying for transformers.

Where a checkpoint went is learned from the trainer, never guessed: HF's from its own
run folder (``Trainer._get_output_dir``) and checkpoint prefix, the framework's from what
its checkpoint manager returned. The Controller then records it only if it is on disk.

Where the commands land (all at ``on_step_end``, after ``DefaultFlowCallback`` has set
its flags for the step, because callbacks run in order and the default flow is first):

- ``save_checkpoint``: ``should_save`` (and ``should_evaluate`` when evaluation is
  configured, an eval strategy and an eval dataset, so the checkpoint carries fresh
  metrics: ``actions.evaluates_first``);
- ``evaluate``: ``should_evaluate``;
- ``graceful_stop``: ``should_training_stop`` plus what HF's default flow does at the
  last step (save and evaluate per the strategies): the trainer's own end of training
  (the framework's trainers do that end themselves);
- ``save_and_stop``: ``should_save`` and ``should_training_stop``, no evaluation (none
  at the epoch's end either);
- ``abort``: ``should_training_stop``; HF has no abort flag, so ``should_save`` is held
  false to the end (the epoch-end flow would otherwise save) and ``aborted`` is set; the
  framework's ``should_abort_without_save`` is set where the control object has it.

Traps handled: checks happen at ``on_step_end`` only (one per optimizer step, so
gradient accumulation and the ``on_log`` calls from evaluation and train end never
check or save twice); ``save_strategy="best"`` assigns ``should_save = is_new_best``
after an evaluation in the same step, so a commanded save holds ``should_save`` true
until ``on_save`` (see :func:`_hold`); a command that arrives after the last step is
dropped, with the reason, when training ends.

A stop that cannot wait (a signal's save-and-stop, ``save-stop``, ``abort``) also applies
between evaluation batches (``on_prediction_step``, agreed like a step's check: HF
gathers after every batch, so the ranks are in step): the evaluation ends there, without
metrics (``Trainer.evaluate`` is wrapped for that, once the callback knows its trainer),
and the trainer saves and stops at the step the evaluation belongs to. The framework's
trainers evaluate without gathering, so their stop waits for the evaluation's end.

Knobs (``forgather control set``; :meth:`TrainerControlCallback._declare_knobs`), declared
on every rank at train begin, for what the trainer honours:

- ``lr`` / ``lr_scale``: the optimizer and scheduler the trainer hands its callbacks
  (accelerate's wrappers unwrapped), the scheduler's base rates scaled
  (:mod:`.knobs`), so the schedule keeps the change;
- ``max_steps``: HF's ``state.max_steps``, what ``DefaultFlowCallback`` compares the step
  with. Shorter than the step it applies at, this callback (after the default flow)
  ends training at that step the way the flow ends it at ``max_steps`` (save and
  evaluate per the strategies); the job ends ``finished``. Longer is bounded by what
  HF's loop can reach (:func:`_hf_last_step`): its epoch count is a local computed at
  its start, so the knob's ``max`` refuses more at ``set`` time. The learning-rate
  schedule keeps its own horizon: a linear decay built for the script's ``max_steps``
  is at 0 from there on (set ``lr`` after extending one);
- ``save_every`` / ``eval_every`` / ``log_every``: ``state.save_steps`` /
  ``eval_steps`` / ``logging_steps``, which the default flow reads at every step
  (``global_step % N == 0``); each only when its strategy is ``"steps"``. A change
  applies from the step after the one it applied at (the flow has decided that one);
- ``max_grad_norm``: ``args.max_grad_norm``, read by HF's loop at every step (not with
  DeepSpeed, whose engine clips by its own config).

The framework's trainers honour the same knobs their own way: :func:`.forgather.declare_knobs`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from forgather_control.core import Command

from .controller import Controller
from .forgather import ABORT_FLAG, Periods, SaveWatch, declare_knobs, is_forgather_control, is_forgather_trainer
from .knobs import learning_rate_knobs

if TYPE_CHECKING:
    from forgather_control.core.records import KnobValue

log = logging.getLogger(__name__)

_LOG_KEYS = ("loss", "learning_rate", "grad_norm", "epoch")


class TrainerControlCallback:
    """Control a HuggingFace ``Trainer`` (or any trainer with its callback protocol).

    ``TrainerControlCallback(job_id=..., jobs_dir=..., host=..., port=...,
    enable_http=..., auth=..., check_interval=..., signals=...)`` takes the
    :class:`Controller` options and starts a Controller at train begin (closing it at
    train end); ``controller=`` passes one in instead (then its owner closes it).
    ``trainer=`` (or :meth:`bind` once the trainer exists: the callback is built before
    it) tells the callback where the trainer saves its checkpoints and whether it has an
    eval dataset. ``forgather launch`` binds it; without it an HF save is found under
    ``args.output_dir``, and a Forgather framework save cannot be known, so a commanded
    save then fails with the reason instead of naming a path.
    """

    def __init__(self, controller: Controller | None = None, *, trainer: Any = None, **options: Any) -> None:
        self._own = controller is None
        self._options = options
        self.controller: Controller = controller if controller is not None else Controller(**options)
        self._trainer: weakref.ref[Any] | None = None
        self._forgather = False
        self._saves = SaveWatch(lambda: self.aborted)
        self._eval_ready = False
        self._save_strategy = "steps"
        self._eval_strategy = "no"
        self._aborted = False
        self._eval_batches = 0  # batches of the evaluation under way (0: none)
        self._in_evaluate = 0  # depth in the wrapped Trainer.evaluate: a cut can end it
        self._cut = False  # a stop cut the evaluation under way: every batch left ends it
        self._best_eval: dict[str, Any] | None = None  # an evaluation "best" may save after
        self._rates: tuple[Any, Any] = (None, None)  # the optimizer and scheduler the trainer handed us
        self._state: Any = None  # HF's TrainerState, as the last event gave it
        self._ends_here = False  # max_steps was set at or below the step it applied at
        self._periods = Periods()  # the framework's intervals
        if trainer is not None:
            self.bind(trainer)

    def bind(self, trainer: Any) -> TrainerControlCallback:
        """The trainer this callback serves (kept weakly)."""
        self._trainer = weakref.ref(trainer)
        self._forgather = is_forgather_trainer(trainer)
        if not self._forgather and callable(getattr(trainer, "evaluate", None)) and not getattr(trainer.evaluate, "_forgather_cut", False):
            trainer.evaluate = _cuttable(self, trainer.evaluate)
        _keep_loss(self, trainer, "_forward_backward_step" if self._forgather else "training_step")
        return self

    @property
    def trainer(self) -> Any:
        return self._trainer() if self._trainer is not None else None

    # -- what others read ------------------------------------------------------------
    @property
    def aborted(self) -> bool:
        """True once an abort (or an escalated signal) applied: the run ended without
        saving, and its final state is ``aborted``."""
        return self._aborted or self.controller.aborted

    def __repr__(self) -> str:
        return f"TrainerControlCallback(job_id={self.controller.job_id!r})"

    # -- protocol --------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Events a newer transformers may add: accept and ignore them.
        if name.startswith("on_"):
            return _ignore
        raise AttributeError(name)

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._forgather or is_forgather_control(control):
            self._watch_saves()  # the framework builds its checkpoint manager just before this event
        return control

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        try:
            if self.controller.closed and self._own:
                # A second trainer.train(): a fresh Controller for the same job id.
                self.controller = Controller(**{**self._options, "job_id": self.controller.job_id})
            ctl = self.controller
            ctl.max_steps = int(state.max_steps) if state.max_steps and state.max_steps > 0 else ctl.max_steps
            self._save_strategy = _value(getattr(args, "save_strategy", "steps"))
            self._eval_strategy = _value(getattr(args, "eval_strategy", "no"))
            self._eval_ready = self._eval_strategy != "no" or self._trainer_has_eval()
            # evaluation configured: an eval strategy (HF then requires an eval dataset)
            ctl.evaluates = self._eval_strategy != "no" and (self.trainer is None or self._trainer_has_eval())
            self._aborted = False
            self._forgather = self._forgather or is_forgather_control(control)
            if self._forgather:
                self._watch_saves()
            ctl.start()
            ctl.begin()
            self._watch_model(kwargs.get("model"))
            ctl.set_epoch(state.epoch)
        except Exception:
            log.exception("forgather control: could not start; training goes on without it")
            return control
        try:
            self._declare_knobs(args, state, kwargs)
        except Exception:
            log.exception("forgather control: could not declare the trainer's knobs; training goes on without them")
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        ctl = self.controller
        step = ctl.current_step = state.global_step
        if step < ctl._next_check and not ctl._poke:
            return control  # Controller.step's test, inlined: between checks nothing else runs
        return self._at_check(ctl, step, args, state, control)

    def _at_check(self, ctl: Controller, step: int, args: Any, state: Any, control: Any) -> Any:
        """The rest of ``on_step_end`` at a check (apart: the hook's own frame stays small)."""
        ctl.epoch = state.epoch
        self._state = state
        act = ctl.step(step)
        if self._ends_here:
            self._ends_here = False
            if not control.should_training_stop:
                control.should_training_stop = True  # max_steps set at or below this step
                self._end_like_the_flow(control)
        if not act:
            return control
        try:
            self._apply(act, args, state, control)
        except Exception:
            log.exception("forgather control: could not apply %s; training goes on", act.command)
            if act.command_id is not None:
                ctl.command_failed(f"{act.command} could not be applied on rank {ctl.rank}; see the job's log", act.command)
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._report_best_eval(None)
        if self.aborted:
            control.should_save = False  # held false anyway; also clears the flow's value
            control.should_evaluate = False
        elif self._stopped_saving():
            control.should_evaluate = False  # a save-and-stop does not evaluate on its way out
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._report_best_eval(None)
        return control

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._forgather:
            return control  # the framework evaluates without gathering: no safe point between batches
        ctl = self.controller
        self._eval_batches += 1
        if self._eval_batches == 1:
            ctl.evaluation_started()
        act = ctl.evaluation_batch(self._eval_batches)
        if act and act.stop:
            self._cut = True
            try:
                self._apply(act, args, state, control)
            except Exception:
                log.exception("forgather control: could not apply %s; training goes on", act.command)
        if self._cut and self._in_evaluate:
            raise _EvaluationCut  # Trainer.evaluate (wrapped) returns; the trainer saves and stops
        return control

    def on_predict(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._eval_batches, self._cut = 0, False
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        # Status only. on_log also fires from evaluation and at train end: never a check.
        if logs:
            picked = {k: v for k, v in logs.items() if k in _LOG_KEYS or k.startswith(("eval_", "train_"))}
            if picked:
                self.controller.update_metrics(picked)
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        self._eval_batches = 0
        self.controller.check_next_step()  # every rank evaluated: a stop asked meanwhile applies next step
        if self._save_strategy == "best" and not self._forgather:
            # HF decides after this event whether the evaluation saves (a new best): the
            # receipt waits for on_save, or for the next event, to say so.
            self._best_eval = dict(metrics or {})
            return control
        try:
            self.controller.evaluation_done(metrics or {})
        except Exception:
            log.exception("forgather control: could not record the evaluation")
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.controller.check_next_step()  # every rank saved: a stop asked meanwhile applies next step
        try:
            if self.aborted:
                return control  # nothing of an aborted job is a resume point
            _release(control)
            if self._forgather:
                folder = self._saves.take()
                if folder is None:
                    self.controller.checkpoint_failed(
                        "the trainer saved a checkpoint but did not say where (the callback was not given the trainer): "
                        "use forgather launch, or call callback.bind(trainer) after building it"
                    )
                    return control
                # The framework's save waits for every rank (a barrier) before it returns.
                self.controller.checkpoint_saved(folder, synced=True)
            else:
                path = self._hf_checkpoint(args, state)
                self._report_best_eval(path)
                self.controller.checkpoint_saved(path, synced=False)
        except Exception:
            log.exception("forgather control: could not record the checkpoint")
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._report_best_eval(None)
        _release(control)
        self._saves.close()
        if self._own:
            try:
                self.controller.close()
            except Exception:
                log.exception("forgather control: error while closing")
        return control

    # -- mapping ---------------------------------------------------------------------
    def _apply(self, act: Any, args: Any, state: Any, control: Any) -> None:
        ctl = self.controller
        cmd = act.command
        if act.abort:
            self._aborted = True
            control.should_training_stop = True
            control.should_evaluate = False
            if hasattr(control, ABORT_FLAG):
                setattr(control, ABORT_FLAG, True)
            _hold(control, False)
            return
        if act.save:
            _hold(control, True)
        if cmd is not None and cmd.saves_and_stops:
            control.should_evaluate = False  # checkpoint, then stop: no evaluation, even one the flow scheduled here
        if act.evaluate:
            if self._eval_ready:
                control.should_evaluate = True
            else:
                ctl.command_failed(
                    "evaluation is not set up in this Trainer (eval_strategy is 'no' and no eval dataset is known); "
                    "pass eval_dataset and an eval_strategy, or trainer= to the callback",
                    Command.EVALUATE,
                )
        if act.stop:
            control.should_training_stop = True
            if cmd == Command.GRACEFUL_STOP and not self._forgather:
                self._end_like_the_flow(control)

    def _end_like_the_flow(self, control: Any) -> None:
        """What DefaultFlowCallback does when max_steps is reached."""
        if self._eval_strategy == "steps":
            control.should_evaluate = True
        if self._save_strategy == "steps":
            control.should_save = True

    # -- knobs -----------------------------------------------------------------------
    def _declare_knobs(self, args: Any, state: Any, kwargs: dict[str, Any]) -> None:
        """Declare the knobs this trainer honours (every rank, at train begin): the
        learning rate for the optimizer and scheduler handed to callbacks, then HF's or
        the framework's own (the module's docstring says which and why)."""
        ctl = self.controller
        self._state = state
        self._rates = (kwargs.get("optimizer"), kwargs.get("lr_scheduler"))
        learning_rate_knobs(ctl, lambda: self._rates[0], lambda: self._rates[1])
        if self._forgather:
            declare_knobs(ctl, self.trainer, self._periods)
            return
        if isinstance(state.max_steps, int) and state.max_steps > 0:
            last = _hf_last_step(self.trainer, args, kwargs.get("train_dataloader"))
            ctl.knob(
                "max_steps",
                state.max_steps,
                min=1,
                max=last,
                help="the run's last step" + (f" (this run's epochs end at step {last})" if last is not None else ""),
                on_change=self._max_steps_changed,
            )
        intervals = (
            ("log_every", "logging_strategy", "logging_steps"),
            ("eval_every", "eval_strategy", "eval_steps"),
            ("save_every", "save_strategy", "save_steps"),
        )
        for name, strategy, field in intervals:
            steps = getattr(state, field, None)
            if _value(getattr(args, strategy, "no")) == "steps" and isinstance(steps, (int, float)) and steps >= 1:
                ctl.knob(name, int(steps), min=1, help=f"{field.replace('_', ' ')}: every N steps", on_change=self._interval_changed(args, field))
        if getattr(args, "load_best_model_at_end", False) and self._save_strategy == self._eval_strategy == "steps":
            ctl.knobs.rule("load_best_model_at_end", _saves_at_evaluations)
        deepspeed = getattr(self.trainer, "is_deepspeed_enabled", False) or getattr(args, "deepspeed", None)
        if isinstance(getattr(args, "max_grad_norm", None), (int, float)) and not deepspeed:

            def clip_changed(old: KnobValue, new: KnobValue) -> None:
                args.max_grad_norm = float(new)  # read by the loop at every step; 0: no clipping

            ctl.knob("max_grad_norm", float(args.max_grad_norm), min=0.0, help="the gradients' clip norm (0: no clipping)", on_change=clip_changed)

    def _max_steps_changed(self, old: KnobValue, new: KnobValue) -> None:
        state = self._state
        state.max_steps = int(new)  # what DefaultFlowCallback compares the step with
        if state.global_step >= int(new):
            self._ends_here = True  # the flow ran already this step: on_step_end ends it

    def _interval_changed(self, args: Any, field: str) -> Any:
        # _saves_at_evaluations refuses such a set when it is sent; this catches one the
        # rule did not see (two sets agreed at one check)
        def changed(old: KnobValue, new: KnobValue) -> None:
            state = self._state
            save = int(new) if field == "save_steps" else state.save_steps
            every = int(new) if field == "eval_steps" else state.eval_steps
            if field != "logging_steps" and getattr(args, "load_best_model_at_end", False) and self._save_strategy == self._eval_strategy == "steps":
                why = _saves_at_evaluations({"save_every": int(save), "eval_every": int(every)})
                if why is not None:
                    raise ValueError(why)
            setattr(state, field, int(new))

        return changed

    def _stopped_saving(self) -> bool:
        cmd = self.controller.stop_command
        return cmd is not None and cmd.saves_and_stops

    def _report_best_eval(self, checkpoint: str | None) -> None:
        """Report the evaluation held back for save_strategy "best": with the checkpoint
        it made HF write (on_save), else without."""
        metrics, self._best_eval = self._best_eval, None
        if metrics is None:
            return
        note = "save_strategy 'best': HF saved this checkpoint after the evaluation (a new best)" if checkpoint else None
        try:
            self.controller.evaluation_done(metrics, checkpoint=checkpoint, note=note)
        except Exception:
            log.exception("forgather control: could not record the evaluation")

    def _watch_model(self, model: Any) -> None:
        """Hand the Controller the DDP-wrapped model (HF's ``model_wrapped``, the
        framework's prepared ``model``; the callback's ``model`` argument is unwrapped),
        so stragglers are judged by each rank's own time."""
        trainer = self.trainer
        for candidate in (getattr(trainer, "model_wrapped", None), getattr(trainer, "model", None), model):
            if candidate is not None and self.controller.watch(candidate):
                return

    def _trainer_has_eval(self) -> bool:
        trainer = self.trainer
        return bool(trainer is not None and getattr(trainer, "eval_dataset", None) is not None)

    def _watch_saves(self) -> None:
        trainer = self.trainer
        if trainer is not None:
            self._saves.attach(trainer)

    def _hf_checkpoint(self, args: Any, state: Any) -> str:
        """The folder HF's ``_save_checkpoint`` just wrote: its run folder (the output
        dir, or a hyperparameter trial's) and its checkpoint prefix."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # imported already: HF is training

        trainer = self.trainer
        run_dir = args.output_dir
        if trainer is not None and hasattr(trainer, "_get_output_dir"):
            run_dir = trainer._get_output_dir(trial=getattr(trainer, "_trial", None))
        return os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def _saves_at_evaluations(values: Mapping[str, Any]) -> str | None:
    """HF's ``load_best_model_at_end`` keeps the best checkpoint of those saved where it
    evaluated: ``save_every`` must stay a multiple of ``eval_every`` (HF refuses it at
    start; a set that breaks it is refused when sent)."""
    save, every = values.get("save_every"), values.get("eval_every")
    if isinstance(save, int) and isinstance(every, int) and every > 0 and save % every:
        return f"load_best_model_at_end needs save_every ({save}) to be a multiple of eval_every ({every})"
    return None


def _hf_last_step(trainer: Any, args: Any, dataloader: Any) -> int | None:
    """The last step HF's training loop can reach in this ``train()``; None when unbounded.

    ``Trainer._inner_training_loop`` (transformers 5.25; 4.4x alike) runs ``for epoch in
    range(epochs_trained, num_train_epochs)``, each epoch ``num_update_steps_per_epoch``
    optimizer steps, both locals computed once at its start by
    ``set_initial_training_values`` from ``args.max_steps`` (or ``num_train_epochs``).
    ``state.max_steps`` only makes DefaultFlowCallback stop it sooner: past the end of the
    last epoch (``max_steps=1000`` at 300 steps an epoch: step 1200) it ends, finished,
    short of a longer ``max_steps``. A dataloader without a length makes the epoch count
    ``sys.maxsize`` (each epoch iterates it again): no bound.
    """
    if dataloader is None:
        return None
    try:
        length = len(dataloader)
    except (TypeError, NotImplementedError):
        return None
    epochs = per_epoch = None
    if trainer is not None and callable(getattr(trainer, "set_initial_training_values", None)):
        try:  # the loop's own computation, on the dataloader it iterates
            epochs, per_epoch = trainer.set_initial_training_values(args, dataloader)[:2]
        except Exception:  # noqa: BLE001 - another version's signature: the same rule by hand
            epochs = per_epoch = None
    if not (isinstance(epochs, int) and isinstance(per_epoch, int)):
        if not length:
            return None
        accumulate = max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
        per_epoch = max(length // accumulate + int(length % accumulate > 0), 1)
        max_steps = int(getattr(args, "max_steps", -1) or -1)
        epochs = math.ceil(max_steps / per_epoch) if max_steps > 0 else math.ceil(float(getattr(args, "num_train_epochs", 1)))
    if epochs >= sys.maxsize or per_epoch < 1:
        return None
    return epochs * per_epoch


def _keep_loss(callback: TrainerControlCallback, trainer: Any, name: str) -> None:
    """Wrap the trainer's ``name`` (HF's ``training_step``, the framework's
    ``_forward_backward_step``: each returns this rank's own loss of a micro-batch,
    detached) to hand what it returned to the guards, as it is: the nan vote reads it at
    a check only. HF's logged loss is no substitute: it comes every ``logging_steps``,
    averaged over the ranks, and with ``logging_nan_inf_filter`` (the default) never NaN."""
    method = getattr(trainer, name, None)
    if not callable(method) or getattr(method, "_forgather_loss", False):
        return

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        loss = method(*args, **kwargs)
        callback.controller.guards.loss = loss
        return loss

    run._forgather_loss = True  # type: ignore[attr-defined]
    try:
        setattr(trainer, name, run)
    except (AttributeError, TypeError):  # a trainer that takes no attributes: the logged loss only
        log.warning("forgather control: cannot watch %s.%s; the nan guard reads the logged loss", type(trainer).__name__, name)


class _EvaluationCut(Exception):
    """Raised between evaluation batches to end an evaluation a stop cut short."""


def _cuttable(callback: TrainerControlCallback, evaluate: Any) -> Any:
    """``Trainer.evaluate`` that a stop may end between batches: then it returns no
    metrics, and the trainer goes on to save and stop. With ``metric_for_best_model`` set,
    that metric is there with a value that is never a new best (the current best, or the
    worst possible), so HF neither raises nor calls it one."""

    @functools.wraps(evaluate)
    def run(*args: Any, **kwargs: Any) -> Any:
        callback._in_evaluate += 1  # an eval_dataset dict evaluates each one in a nested call
        callback._eval_batches = 0
        try:
            return evaluate(*args, **kwargs)
        except _EvaluationCut:
            log.warning("forgather control: the evaluation was cut short: %s", callback.controller.stop_reason)
            return _cut_metrics(callback.trainer)
        finally:
            callback._in_evaluate -= 1
            callback._eval_batches = 0
            if not callback._in_evaluate:
                callback._cut = False

    run._forgather_cut = True  # type: ignore[attr-defined]
    return run


def _cut_metrics(trainer: Any) -> dict[str, float]:
    args = getattr(trainer, "args", None)
    name = getattr(args, "metric_for_best_model", None)
    if not name:
        return {}
    key = name if name.startswith("eval_") else f"eval_{name}"
    best = getattr(getattr(trainer, "state", None), "best_metric", None)
    if best is None:
        best = float("-inf") if getattr(args, "greater_is_better", False) else float("inf")
    return {key: best}


def _ignore(*args: Any, **kwargs: Any) -> Any:
    return kwargs.get("control", args[2] if len(args) > 2 else None)


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


# -- holding should_save -----------------------------------------------------------------
# ``Trainer._maybe_log_save_evaluate`` assigns ``control.should_save = is_new_best`` when
# save_strategy is "best" and an evaluation ran in the same step, after every callback of
# that step has run. No event comes between that assignment and the save, so a commanded
# save (or an abort's "no save") is held by swapping the control object's class for a
# subclass whose ``should_save`` reads the held value. The subclass keeps the class name
# (TrainerState.stateful_callbacks is keyed by it) and is swapped back at on_save.
_HOLD_KEY = "_forgather_hold_save"
_HOLD_CLASSES: dict[type, type] = {}


def _held_class(cls: type) -> type:
    if getattr(cls, "_forgather_holder", False):
        return cls
    sub = _HOLD_CLASSES.get(cls)
    if sub is None:

        def get(self: Any) -> bool:
            held = self.__dict__.get(_HOLD_KEY)
            return bool(self.__dict__.get("should_save", False)) if held is None else held

        def set_(self: Any, value: bool) -> None:
            self.__dict__["should_save"] = value

        sub = type(cls.__name__, (cls,), {"should_save": property(get, set_), "_forgather_holder": True, "__module__": cls.__module__})
        _HOLD_CLASSES[cls] = sub
    return sub


def _hold(control: Any, value: bool) -> None:
    """Make ``control.should_save`` read ``value`` until :func:`_release`."""
    try:
        control.__dict__["should_save"] = value
        control.__dict__[_HOLD_KEY] = value
        control.__class__ = _held_class(type(control))
    except (TypeError, AttributeError):  # a control object we cannot extend: best effort
        control.should_save = value


def _release(control: Any) -> None:
    cls = type(control)
    if getattr(cls, "_forgather_holder", False):
        control.__dict__.pop(_HOLD_KEY, None)
        control.__class__ = cls.__mro__[1]
