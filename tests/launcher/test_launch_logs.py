"""Issue 23: every rank's stdout and stderr in the job folder, while the terminal still
shows them; ``forgather control logs`` on a real two-rank ``forgather launch``.

The script prints known lines (one hostile) on both ranks, says it is ready in a file,
and waits for a file the test makes after ``logs -f`` has printed the tails; then each
rank prints one more line and rank 1 kills itself with SIGKILL. Python's own buffering
is left as a user has it (no PYTHONUNBUFFERED): the bootstrap makes stdout line-buffered.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
from support.env import base_env
from support.launcher import START_TIMEOUT, launch
from support.paths import FORGATHER, REPO
from support.processes import Procs
from support.waiting import wait_for

from forgather_control.client.logs import log_ranks, read_rank

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # forgather launch, torchrun

SCRIPT = r"""
import os, signal, sys, time
from pathlib import Path
rank = int(os.environ["RANK"])
sync = Path(sys.argv[1])
for i in range(5):
    print(f"rank {rank} line {i}")
print(f"rank {rank} on stderr", file=sys.stderr)
if rank == 1:
    print("\x1b[2J\x1b]0;pwned\x07 hostile")
(sync / f"ready-{rank}").touch()
while not (sync / "go").exists():
    time.sleep(0.05)
print(f"rank {rank} after go")
if rank == 1:
    print("rank 1 last words")
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(600)  # until torchrun ends it: its other rank failed
"""

CLEAN = "[rank1]: \\x1b[2J\\x1b]0;pwned\\x07 hostile"


def test_logs_of_a_two_rank_job(procs: Procs, jobs_dir: Path, tmp_path: Path, cli) -> None:
    script, sync = tmp_path / "talk.py", tmp_path / "sync"
    script.write_text(SCRIPT)
    sync.mkdir()
    job = launch(procs, jobs_dir, "talk", script, str(sync), opts=("--nproc-per-node", "2"), PYTHONUNBUFFERED="")

    def written(rank: int, *lines: str) -> bool:
        return rank in log_ranks(jobs_dir, "talk") and set(lines) <= set(read_rank(jobs_dir, "talk", rank, lines=20).lines)

    wait_for(
        lambda: written(0, "rank 0 line 4", "rank 0 on stderr") and written(1, "rank 1 line 4", "rank 1 on stderr", CLEAN[len("[rank1]: ") :]),
        timeout=START_TIMEOUT,
        interval=0.2,
        what="both ranks' lines in their logs",
    )

    res = cli("control", "logs", "talk")
    assert res.code == 0, res.err
    # each stream in its order; a stderr line among stdout lines where the launcher read it
    lines = res.out.splitlines()
    err = {"[rank0]: rank 0 on stderr", "[rank1]: rank 1 on stderr"}
    assert [ln for ln in lines if ln.startswith("[rank0]: ") and ln not in err] == [f"[rank0]: rank 0 line {i}" for i in range(5)]
    assert [ln for ln in lines if ln.startswith("[rank1]: ") and ln not in err] == [*(f"[rank1]: rank 1 line {i}" for i in range(5)), CLEAN]
    assert err <= set(lines) and len(lines) == 13 and "\x1b" not in res.out
    res = cli("control", "logs", "talk", "--rank", "1", "--tail", "3")
    assert (res.code, res.out.splitlines()) == (0, lines[-3:])  # rank 1's last three

    # -f: the tails, then what the ranks print after it started, until the job ends
    follow = subprocess.Popen(
        [*FORGATHER, "control", "logs", "talk", "-f", "--tail", "1"],
        env=base_env(jobs_dir),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follow.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(seen) >= 2, timeout=60, what="logs -f printing the tails")
        (sync / "go").touch()
        code = follow.wait(START_TIMEOUT)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    reader.join(10)
    assert code == 0, follow.stderr.read() if follow.stderr else ""
    out = [s.rstrip("\n") for s in seen]
    assert out[:2] == [lines[5], lines[-1]]  # the tails: one line each
    assert sorted(out[2:]) == ["[rank0]: rank 0 after go", "[rank1]: rank 1 after go", "[rank1]: rank 1 last words"]
    assert out.index("[rank1]: rank 1 after go") < out.index("[rank1]: rank 1 last words")

    assert job.wait(120) != 0  # rank 1 was killed: the job failed
    # the SIGKILLed rank's last line is in its file; the terminal showed every rank's output
    log1 = (jobs_dir / "talk" / "logs" / "rank-1.log").read_text()
    assert log1.endswith("rank 1 after go\nrank 1 last words\n")
    assert oct(os.stat(jobs_dir / "talk" / "logs" / "rank-1.log").st_mode & 0o777) == "0o600"
    terminal = job.output()
    for line in ("rank 0 line 0", "rank 1 line 4", "rank 0 on stderr", "rank 1 on stderr", "rank 1 last words", "\x1b]0;pwned\x07 hostile"):
        assert line in terminal
