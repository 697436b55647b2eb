"""Where things are: the repository, the examples, the ``forgather`` command."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "trainer_control"
#: The launcher example for plain loops (``forgather launch`` injects nothing into it).
PLAIN_LAUNCH = REPO / "examples" / "launch" / "plain_train.py"

_EXE = Path(sys.executable).with_name("forgather")
#: The ``forgather`` command line as a user runs it: the installed console script.
FORGATHER: list[str] = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "forgather_control.cli.main"]
