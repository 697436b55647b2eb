"""``forgather control stacks`` shows each frame's line of code as the rank ran it: read
on the rank's host, a relative file (the launcher's bootstrap runs ``train.py`` as named)
resolved against the rank's working directory, never the CLI's; a file changed since the
rank started is said to be (issue 20). The rank is a plain process under the bootstrap, as
``forgather launch`` runs it, with a Controller; the CLI runs from another folder."""

from __future__ import annotations

import sys
from pathlib import Path

from support.env import base_env
from support.processes import Procs
from support.waiting import wait_for

from forgather_control.core import JobPaths
from forgather_control.core import stacks as st


def script(line_42: str) -> str:
    """A training script stuck at its line 42 (in ``waiting_for_data``)."""
    head = [
        "import sys, time",
        "from forgather_control.callback import Controller",
        "",
        "def waiting_for_data():",
        '    print("ready", flush=True)',
    ]
    pad = ["    # loading the next batch"] * (41 - len(head))
    tail = ["", "with Controller(job_id=sys.argv[1], signals=()) as ctl:", "    ctl.step(1)", "    waiting_for_data()", ""]
    return "\n".join([*head, *pad, line_42, *tail])


REAL = "    time.sleep(3600)  # rank 0 waits here"


def start_rank(procs: Procs, run_dir: Path, jobs_dir: Path) -> None:
    """``train.py`` run from ``run_dir`` by the bootstrap (its frames say "train.py")."""
    run_dir.mkdir()
    (run_dir / "train.py").write_text(script(REAL))
    p = procs.start([sys.executable, "-m", "forgather_control.callback.bootstrap", "train.py", "solo"], env=base_env(jobs_dir), cwd=run_dir)
    wait_for(lambda: "ready" in p.output() or p.popen.poll() is not None, timeout=60, what="the rank to get stuck")
    assert p.popen.poll() is None, p.output()
    wait_for(lambda: st.local_workers(JobPaths(jobs_dir, "solo")), what="the Controller to register its dump")


def main_frames(data: dict) -> list[dict]:
    [rank] = data["ranks"]
    [main] = [t for t in rank["threads"] if t["main"]]
    return main["frames"]


def test_stacks_prints_the_line_the_rank_runs_not_a_same_named_file_in_the_clis_folder(procs: Procs, tmp_path: Path, jobs_dir: Path, cli) -> None:
    start_rank(procs, tmp_path / "run", jobs_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "train.py").write_text(script("    impostor = 'not what rank 0 runs'"))

    res = cli("control", "stacks", "solo", cwd=elsewhere)
    assert res.code == 0, res.err
    assert '    File "train.py", line 42, in waiting_for_data\n      time.sleep(3600)  # rank 0 waits here\n' in res.out, res.out
    assert '    File "train.py", line 46, in <module>\n      waiting_for_data()\n' in res.out, res.out
    assert "impostor" not in res.out and "changed" not in res.out, res.out

    data = cli("control", "stacks", "solo", "--json", cwd=elsewhere).json()
    assert main_frames(data)[-1] == {
        "file": "train.py",
        "line": 42,
        "func": "waiting_for_data",
        "source": "time.sleep(3600)  # rank 0 waits here",
        "changed": False,
    }


def test_a_line_of_a_script_edited_since_the_rank_started_is_marked_changed(procs: Procs, tmp_path: Path, jobs_dir: Path, cli) -> None:
    start_rank(procs, tmp_path / "run", jobs_dir)
    (tmp_path / "run" / "train.py").write_text(script("    time.sleep(60)  # edited while rank 0 runs"))

    res = cli("control", "stacks", "solo", cwd=tmp_path)
    assert res.code == 0, res.err
    note = "  [file changed since the rank started; line may differ]"
    assert f'    File "train.py", line 42, in waiting_for_data\n      time.sleep(60)  # edited while rank 0 runs{note}\n' in res.out, res.out

    data = cli("control", "stacks", "solo", "--json", cwd=tmp_path).json()
    assert main_frames(data)[-1] == {
        "file": "train.py",
        "line": 42,
        "func": "waiting_for_data",
        "source": "time.sleep(60)  # edited while rank 0 runs",
        "changed": True,
    }
