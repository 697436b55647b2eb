"""Importing the integrations costs nothing a job does not use: forgather.callback and
forgather.callback.hf import neither torch, transformers, lightning nor fastapi (the
launcher injects the callbacks into every job), and the HF callback duck-types the
TrainerCallback protocol so a Trainer accepts it."""

from __future__ import annotations

import subprocess
import sys

from conftest import base_env

CODE = """
import sys
import forgather.callback, forgather.callback.hf
from forgather.callback import TrainerControlCallback
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


def test_lightning_callback_is_a_lightning_callback() -> None:
    import lightning.pytorch as pl

    from forgather.callback import LightningControlCallback

    assert issubclass(LightningControlCallback, pl.Callback)
