"""The worker bootstrap on its own (no torchrun): it runs a script exactly as
``python SCRIPT`` would, injects the control callback into HF and Lightning trainers
once, and keeps early SIGUSR1/2 from killing the worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.env import base_env

BOOT = [sys.executable, "-m", "forgather_control.callback.bootstrap"]


def run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=tmp_path, env=base_env(tmp_path / "jobs", **env), capture_output=True, text=True, timeout=240)


def test_script_runs_as_python_would_run_it(tmp_path: Path) -> None:
    d = tmp_path / "proj"
    d.mkdir()
    (d / "helper.py").write_text("VALUE = 'found next to the script'\n")
    (d / "train.py").write_text("import sys, helper\nprint(__name__, sys.argv, helper.VALUE, sys.path[0])\nsys.exit(5)\n")
    plain = run([sys.executable, str(d / "train.py"), "a b", "--lr", "1"], tmp_path)
    booted = run([*BOOT, str(d / "train.py"), "a b", "--lr", "1"], tmp_path)
    assert booted.returncode == plain.returncode == 5, booted.stderr
    assert booted.stdout == plain.stdout
    assert "__main__" in booted.stdout and "found next to the script" in booted.stdout


def test_module_runs_as_python_m_would(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("import sys\nprint(__name__, sys.argv[0].endswith('train.py'), sys.argv[1:])\nraise ValueError('boom')\n")
    res = run([*BOOT, "-m", "mypkg.train", "x", "-y"], tmp_path)
    assert res.returncode == 1 and "__main__ True ['x', '-y']" in res.stdout and "ValueError: boom" in res.stderr


def test_early_signal_is_kept_for_the_controller(tmp_path: Path) -> None:
    """SIGUSR1 before any Controller exists (the model still loads): the worker lives,
    and the first Controller saves and stops at its first step. SIGUSR2 right after it
    is the same event delivered twice (within the repeat window), not an escalation."""
    (tmp_path / "loop.py").write_text(
        "import os, signal, time\n"
        "from forgather_control.callback import Controller\n"
        "from forgather_control.callback.bootstrap import pending_signals\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "os.kill(os.getpid(), signal.SIGUSR2)\n"
        "time.sleep(0.2)\n"
        "print('pending', pending_signals(), flush=True)\n"
        "with Controller(enable_http=False, signal_repeat_window=0) as ctl:\n"
        "    for step in range(1, 1000):\n"
        "        act = ctl.step(step)\n"
        "        if act.stop:\n"
        "            print('stopped at', step, 'abort', act.abort, flush=True)\n"
        "            break\n"
        "print('pending after', pending_signals())\n"
    )
    res = run([*BOOT, str(tmp_path / "loop.py")], tmp_path, FORGATHER_JOB_ID="early")
    assert res.returncode == 0, res.stderr
    assert "pending 1" in res.stdout and "stopped at 1 abort False" in res.stdout and "pending after 0" in res.stdout, res.stdout + res.stderr


def test_launched_zero_injects_nothing(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text(
        "import sys, signal\n"
        "print([type(f).__name__ for f in sys.meta_path if 'Trainer' in type(f).__name__],"
        " signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None))\n"
    )
    assert "['_TrainerFinder'] True" in run([*BOOT, str(tmp_path / "t.py")], tmp_path).stdout
    assert "[] True" in run([*BOOT, str(tmp_path / "t.py")], tmp_path, FORGATHER_LAUNCHED="0").stdout


#: HF's and Lightning's trainers, built under the bootstrap in one worker (one interpreter
#: and one torch import for both); each part prints its own lines, or its traceback.
TRAINERS = """
import traceback

def hf():
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from forgather_control.callback.hf import TrainerControlCallback
    m = GPT2LMHeadModel(GPT2Config(vocab_size=8, n_positions=8, n_embd=8, n_layer=1, n_head=1))
    a = TrainingArguments(output_dir='out', use_cpu=True, report_to='none')
    def count(t):
        return sum(isinstance(c, TrainerControlCallback) for c in t.callback_handler.callbacks)
    print('hf injected', count(Trainer(model=m, args=a)))
    print('hf user', count(Trainer(model=m, args=a, callbacks=[TrainerControlCallback()])))

def lightning():
    import lightning.pytorch as pl
    from forgather_control.callback.lightning import LightningControlCallback
    kw = dict(accelerator='cpu', logger=False, enable_progress_bar=False, enable_model_summary=False)
    def count(t):
        return sum(isinstance(c, LightningControlCallback) for c in t.callbacks)
    print('lightning injected', count(pl.Trainer(**kw)))
    print('lightning user', count(pl.Trainer(callbacks=[LightningControlCallback()], **kw)))

for part in (hf, lightning):
    try:
        part()
    except Exception:
        print(part.__name__, 'failed:', traceback.format_exc())
"""


@pytest.fixture(scope="module")
def trainers(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    d = tmp_path_factory.mktemp("trainers")
    (d / "trainers.py").write_text(TRAINERS)
    return run([*BOOT, str(d / "trainers.py")], d)


@pytest.mark.slow  # the child runs the real HF and Lightning Trainers
@pytest.mark.xdist_group("bootstrap-trainers")  # one worker, so one run of the fixture
def test_hf_trainer_gets_the_callback_once(trainers: subprocess.CompletedProcess) -> None:
    assert trainers.returncode == 0, trainers.stderr[-3000:]
    assert "hf injected 1" in trainers.stdout and "hf user 1" in trainers.stdout, trainers.stdout + trainers.stderr[-3000:]


@pytest.mark.slow  # the child runs the real HF and Lightning Trainers
@pytest.mark.xdist_group("bootstrap-trainers")  # one worker, so one run of the fixture
def test_lightning_trainer_gets_the_callback_once(trainers: subprocess.CompletedProcess) -> None:
    assert trainers.returncode == 0, trainers.stderr[-3000:]
    assert "lightning injected 1" in trainers.stdout and "lightning user 1" in trainers.stdout, trainers.stdout + trainers.stderr[-3000:]


@pytest.mark.slow  # the child runs pytorch_lightning's Trainer
def test_standalone_pytorch_lightning_trainer_gets_its_callback_once(tmp_path: Path) -> None:
    """``import pytorch_lightning``: its Trainer is hooked too, with a callback built on
    pytorch_lightning.Callback, and the unified ``lightning`` package is never imported."""
    (tmp_path / "ptl.py").write_text(
        "import sys\n"
        "import pytorch_lightning as pl\n"
        "from forgather_control.callback.lightning import LightningControl, control_callback_class\n"
        "kw = dict(accelerator='cpu', logger=False, enable_progress_bar=False, enable_model_summary=False)\n"
        "def mine(t):\n"
        "    return [c for c in t.callbacks if isinstance(c, LightningControl)]\n"
        "got = mine(pl.Trainer(**kw))\n"
        "print('injected', len(got), isinstance(got[0], pl.Callback))\n"
        "print('user', len(mine(pl.Trainer(callbacks=[control_callback_class('pytorch_lightning')()], **kw))))\n"
        "print('unified imported', 'lightning' in sys.modules)\n"
    )
    res = run([*BOOT, str(tmp_path / "ptl.py")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "injected 1 True" in res.stdout and "user 1" in res.stdout and "unified imported False" in res.stdout, res.stdout
