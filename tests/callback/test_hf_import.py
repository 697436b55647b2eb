"""Importing the integrations costs nothing a job does not use: forgather_control.callback and
forgather_control.callback.hf import neither torch, transformers, lightning nor fastapi (the
launcher injects the callbacks into every job), and the HF callback duck-types the
TrainerCallback protocol so a Trainer accepts it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.env import base_env

CODE = """
import sys
import forgather_control.callback, forgather_control.callback.hf
from forgather_control.callback import TrainerControlCallback
heavy = [m for m in ("torch", "transformers", "lightning", "pytorch_lightning", "fastapi", "uvicorn") if m in sys.modules]
assert not heavy, heavy
cb = TrainerControlCallback(job_id="imp", signals=())
for event in ("on_init_end", "on_train_begin", "on_step_end", "on_log", "on_evaluate", "on_save", "on_train_end", "on_substep_end", "on_some_future_event"):
    assert callable(getattr(cb, event)), event
assert cb.aborted is False and cb.controller.job_id == "imp"
print("ok")
"""


def test_importing_the_callbacks_imports_no_heavy_package(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-c", CODE], env=base_env(tmp_path / "jobs"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


#: The two tests that import Lightning into the test process run on the worker that already
#: has it (test_lightning_single's group): one import of a few seconds, not one per worker.
IN_PROCESS_LIGHTNING = pytest.mark.xdist_group("trainers-in-process")


@pytest.mark.slow  # a trainer framework in the test process (support.tiers)
@IN_PROCESS_LIGHTNING
def test_lightning_callback_is_a_lightning_callback() -> None:
    import lightning.pytorch as pl

    from forgather_control.callback import LightningControlCallback

    assert issubclass(LightningControlCallback, pl.Callback)


@pytest.mark.slow  # a trainer framework in the test process (support.tiers)
@IN_PROCESS_LIGHTNING
def test_standalone_pytorch_lightning_gets_its_own_class() -> None:
    """Both packages installed: each Trainer needs a callback of its own package's type."""
    import lightning.pytorch as lp
    import pytorch_lightning as pl

    from forgather_control.callback.lightning import LightningControl, control_callback_class

    standalone = control_callback_class("pytorch_lightning")
    unified = control_callback_class("lightning.pytorch")
    assert issubclass(standalone, pl.Callback) and not issubclass(standalone, lp.Callback)
    assert issubclass(unified, lp.Callback) and not issubclass(unified, pl.Callback)
    assert issubclass(standalone, LightningControl) and issubclass(unified, LightningControl)
    assert control_callback_class("pytorch_lightning") is standalone  # made once
    with pytest.raises(ValueError, match="pytorch_lightning"):
        control_callback_class("lightning")


@pytest.mark.slow  # its child loads pytorch_lightning
def test_importing_the_lightning_module_imports_no_lightning(tmp_path) -> None:
    code = (
        "import sys\n"
        "import forgather_control.callback.lightning as m\n"
        "assert not any(k.split('.')[0] in ('lightning', 'pytorch_lightning') for k in sys.modules), 'lightning imported'\n"
        "m.control_callback_class('pytorch_lightning')\n"
        "assert 'lightning' not in sys.modules, 'the standalone class pulled in the unified package'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=base_env(tmp_path / "jobs"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
