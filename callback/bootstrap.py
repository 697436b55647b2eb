"""What every worker runs: ``python -m forgather_control.callback.bootstrap SCRIPT ARGS...``
(or ``... -m MODULE ARGS...``). ``forgather launch`` puts it behind torchrun.

In order, before the user's code runs:

0. stdout and stderr handed to the launcher, which shows them on its terminal and keeps
   them in the rank's log in the job folder (``callback/output.py``);
1. handlers for SIGUSR1/SIGUSR2, so those never kill a worker by default action; a
   signal that arrives before any Controller exists is remembered and handed to the
   first Controller that starts (SLURM may signal while the model still loads);
2. import hooks (a ``sys.meta_path`` finder) that patch ``transformers.Trainer``,
   ``lightning.pytorch.Trainer``, ``pytorch_lightning.Trainer`` and the Forgather
   framework's ``BaseTrainer`` (so its ``Trainer``, ``AccelTrainer`` and
   ``PipelineTrainer``) the moment their modules are imported: each new trainer gets
   the control callback unless one is already in its callbacks (then that one is told
   its trainer); ``train()`` / ``fit()`` resume from ``$FORGATHER_RESUME_FROM`` (set by
   the launcher when a relaunched run has a checkpoint) through the trainer's own
   mechanism unless the script names its own checkpoint; when the job was aborted,
   ``train()`` / ``fit()`` does not return into the script (its code after training,
   an export or an upload, must not run on an aborted model): the worker ends there,
   unless ``FORGATHER_ABORT_RETURNS=1``;
3. the user's script runs as ``__main__`` with its own ``sys.argv`` and ``sys.path``,
   exactly as ``python SCRIPT ARGS`` would run it (``runpy``); an exception it raises
   is recorded in the job folder (``failures/``) before it ends the process, so the
   job's status can name the rank that failed first and why.

Plain loops need nothing from here: ``from forgather_control.callback import
Controller, resume_from`` (the Controller reads the launcher's environment itself).
Set ``FORGATHER_LAUNCHED=0`` to run the script without any injection.

The package's ``__init__`` must not import this module: ``python -m`` would find it
imported already and run a second copy of it (with a RuntimeWarning in every worker).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import os
import runpy
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from forgather_control.core.env import ENV_ABORT_RETURNS, ENV_JOB_ID, ENV_JOBS_DIR, ENV_LAUNCHED, ENV_RANK, ENV_RESTARTS
from forgather_control.core.outcome import EXIT_ABORTED

from .resume import resume_from

log = logging.getLogger(__name__)

__all__ = ["install", "main", "pending_signals"]

EARLY_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2)

_installed = False


# -- early signals ------------------------------------------------------------------------
def pending_signals() -> int:
    """Stop signals that arrived before a Controller started (handed to the next one)."""
    from .signals import pending_early_signals

    return pending_early_signals()


def _install_signals() -> None:
    from .signals import install_early_handlers

    install_early_handlers(EARLY_SIGNALS)


# -- trainer patches --------------------------------------------------------------------
#: ``resume(trainer, args, kwargs, path)``: hand ``path`` to the trainer's own resume
#: mechanism for this call unless the script named a checkpoint; says whether it did
Resume = Callable[[Any, tuple, dict, str], bool]


def _resume_kwarg(name: str, fits: Callable[[tuple, str], bool]) -> Resume:
    """Resume through a keyword of the run method (HF's ``resume_from_checkpoint``,
    Lightning's ``ckpt_path``) when the script passes none and ``fits(args, path)``."""

    def resume(trainer: Any, args: tuple, kwargs: dict, path: str) -> bool:
        if kwargs.get(name) is None and fits(args, path):
            kwargs[name] = path
            return True
        return False

    return resume


def _resume_forgather(trainer: Any, args: tuple, kwargs: dict, path: str) -> bool:
    from .forgather import resume_through_args

    return resume_through_args(trainer, path)


def _patch_trainer(
    module: Any,
    *,
    add_callback: Callable[[Any], bool],
    find_callback: Callable[[Any], Any],
    method: str,
    resume: Resume,
    cls_name: str = "Trainer",
) -> None:
    """Patch ``module.<cls_name>`` once: each new trainer gets the control callback
    (``add_callback(trainer)`` adds it unless the user did, and says whether it did), and
    ``<method>`` resumes from ``resume_from()`` through ``resume`` when the script names
    no checkpoint of its own; after an abort (``find_callback(trainer).aborted``) it ends
    the worker instead of returning."""
    trainer_cls = getattr(module, cls_name, None)
    if trainer_cls is None or getattr(trainer_cls, "_forgather_patched", False):
        return
    orig_init, orig_run = trainer_cls.__init__, getattr(trainer_cls, method)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        try:
            if add_callback(self):
                log.info("forgather: control callback added to %s", type(self).__name__)
        except Exception:
            log.exception("forgather: could not add the control callback; training goes on without control")

    def run(self, *args: Any, **kwargs: Any):
        point = resume_from()
        if point and resume(self, args, kwargs, point):
            log.warning("forgather: resuming from %s (restarted run)", point)
        result = orig_run(self, *args, **kwargs)
        callback = find_callback(self)
        if callback is not None and callback.aborted and os.environ.get(ENV_ABORT_RETURNS) != "1":
            _end_aborted(f"{type(self).__name__}.{method}()")
        return result

    trainer_cls.__init__ = __init__
    setattr(trainer_cls, method, run)
    trainer_cls._forgather_patched = True


def _end_aborted(where: str) -> None:
    """The job was aborted: end the worker where training returned, so the script's
    code after it never runs. Under the launcher the worker exits 0 (torchrun would
    report any other code as a crash) and the launcher's own exit code says aborted."""
    log.warning(
        "forgather: the job was aborted; %s does not return into the script (set %s=1 to let it)",
        where,
        ENV_ABORT_RETURNS,
    )
    raise _Aborted(0 if os.environ.get(ENV_LAUNCHED) == "1" else EXIT_ABORTED)


class _Aborted(SystemExit):
    """The end of a worker whose job was aborted: an outcome, not a failure to record."""


def _find_hf_callback(trainer: Any) -> Any:
    """Our callback among an HF-style trainer's: HF keeps them in its callback handler,
    the Forgather framework in ``trainer.callbacks``."""
    from .hf import TrainerControlCallback

    handler = getattr(trainer, "callback_handler", None)
    callbacks = getattr(handler, "callbacks", None) if handler is not None else getattr(trainer, "callbacks", None)
    return next((cb for cb in callbacks or () if isinstance(cb, TrainerControlCallback)), None)


def _add_hf_callback(trainer: Any) -> bool:
    from .hf import TrainerControlCallback

    mine = _find_hf_callback(trainer)
    if mine is not None:
        if mine.trainer is None:
            mine.bind(trainer)  # added by the script, before the trainer existed
        return False
    trainer.add_callback(TrainerControlCallback(trainer=trainer))
    return True


def _find_lightning_callback(trainer: Any) -> Any:
    from .lightning import LightningControl

    return next((cb for cb in getattr(trainer, "callbacks", ()) or () if isinstance(cb, LightningControl)), None)


def _add_lightning_callback(trainer: Any, *, package: str) -> bool:
    from .lightning import control_callback_class

    if _find_lightning_callback(trainer) is not None:
        return False
    trainer.callbacks.append(control_callback_class(package)())
    return True


def _patch_lightning(package: str) -> Callable[[Any], None]:
    """Two packages, two Trainer classes, two Callback types: each gets its own."""
    return functools.partial(
        _patch_trainer,
        add_callback=functools.partial(_add_lightning_callback, package=package),
        find_callback=_find_lightning_callback,
        method="fit",
        resume=_resume_kwarg("ckpt_path", lambda args, path: len(args) < 5 and os.path.isfile(path)),  # ckpt_path is fit's 5th
    )


#: modules whose import triggers a patch -> the patch
_PATCHES: dict[str, Callable[[Any], None]] = {
    "transformers.trainer": functools.partial(
        _patch_trainer,
        add_callback=_add_hf_callback,
        find_callback=_find_hf_callback,
        method="train",
        resume=_resume_kwarg("resume_from_checkpoint", lambda args, path: not args and os.path.isdir(path)),
    ),
    "lightning.pytorch.trainer.trainer": _patch_lightning("lightning.pytorch"),
    "pytorch_lightning.trainer.trainer": _patch_lightning("pytorch_lightning"),
    # The Forgather framework: every trainer it ships is a BaseTrainer, whose __init__ and
    # train() its subclasses reach through super() or inherit.
    "forgather.ml.trainer.base_trainer": functools.partial(
        _patch_trainer,
        cls_name="BaseTrainer",
        add_callback=_add_hf_callback,
        find_callback=_find_hf_callback,
        method="train",
        resume=_resume_forgather,
    ),
}


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the patch, for one module."""

    def __init__(self, loader: importlib.abc.Loader, patch: Callable[[Any], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec):
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        try:
            self._patch(module)
        except Exception:
            log.exception("forgather: could not patch %s; training goes on without control", module.__name__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _TrainerFinder(importlib.abc.MetaPathFinder):
    """A meta path finder that only wraps the loaders of the trainer modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None):
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def install() -> None:
    """Install the early signal handlers and the import hooks.
    Idempotent. Trainer modules imported already are patched at once."""
    global _installed
    if _installed:
        return
    _installed = True
    _install_signals()
    sys.meta_path.insert(0, _TrainerFinder())
    for name, patch in _PATCHES.items():
        mod = sys.modules.get(name)
        if mod is not None:
            patch(mod)


# -- running the user's code --------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    """``bootstrap SCRIPT ARGS...`` or ``bootstrap -m MODULE ARGS...``."""
    from .output import capture_output

    capture_output()  # first: everything the rank says from here on is in its log too
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m forgather_control.callback.bootstrap (SCRIPT | -m MODULE) [ARGS...]", file=sys.stderr)
        raise SystemExit(2 if not args else 0)
    if os.environ.get(ENV_LAUNCHED, "1") != "0":
        install()
    else:
        _install_signals()
    from .watchdog import watch_launcher

    run = os.environ.get(ENV_RESTARTS, "0")
    watch_launcher(_rank(), int(run) if run.isdigit() else 0)
    _enable_stack_dumps(int(run) if run.isdigit() else 0)
    if args[0] == "-m" and len(args) < 2:
        print("bootstrap: -m needs a module name", file=sys.stderr)
        raise SystemExit(2)
    try:
        _run_user_code(args)
    except SystemExit as exc:
        from .signals import StoppedEarly

        if exc.code not in (None, 0) and not isinstance(exc, (_Aborted, StoppedEarly)):  # outcomes, not failures
            _record(exc)
        raise
    except BaseException as exc:
        _record(exc)
        raise


def _run_user_code(args: list[str]) -> None:
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        sys.argv = [module, *rest]  # runpy replaces argv[0] with the module's file
        sys.path[0] = os.getcwd()  # what `python -m` puts first
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, rest = args[0], args[1:]
        sys.argv = [script, *rest]
        sys.path[0] = os.path.dirname(os.path.abspath(script))  # what `python SCRIPT` puts first
        runpy.run_path(script, run_name="__main__")


def _record(exc: BaseException) -> None:
    """This rank's failure into the job folder, when the job has one (launched)."""
    job_id, jobs_dir = os.environ.get(ENV_JOB_ID), os.environ.get(ENV_JOBS_DIR)
    if not job_id or not jobs_dir:
        return
    from forgather_control.core.failures import record_failure
    from forgather_control.core.jobs import JobPaths, is_valid_job_id

    if not is_valid_job_id(job_id):
        return
    run = os.environ.get(ENV_RESTARTS, "0")
    record_failure(JobPaths(Path(jobs_dir), job_id), rank=_rank(), run=int(run) if run.isdigit() else 0, exc=exc)


def _enable_stack_dumps(run: int) -> None:
    """``forgather control stacks`` can reach this worker from now on, before the user's
    code runs (a hang while the model loads is a hang too)."""
    job_id, jobs_dir = os.environ.get(ENV_JOB_ID), os.environ.get(ENV_JOBS_DIR)
    from forgather_control.core.jobs import JobPaths, is_valid_job_id

    if job_id and jobs_dir and is_valid_job_id(job_id):
        from .stackdump import enable_stack_dumps

        enable_stack_dumps(JobPaths(Path(jobs_dir), job_id), _rank(), run=run)


def _rank() -> int:
    rank = os.environ.get(ENV_RANK, "0")
    return int(rank) if rank.isdigit() else 0


if __name__ == "__main__":
    # Run the copy that `import forgather_control.callback.bootstrap` returns, not this __main__
    # one, so the user's script and the hooks share one module state (pending signals).
    from forgather_control.callback import bootstrap as _bootstrap

    _bootstrap.main()
