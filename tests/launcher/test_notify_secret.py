"""A notify URL given the documented way (``--notify-file``) is in no process's argv:
not the launcher's, torchrun's or a worker's (``/proc/<pid>/cmdline``, readable by every
user on the node for the job's whole life), not in the job's records nor the launcher's
output; it is in the job's 0600 notify.json only, and the alert reaches it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import psutil
import pytest
from support.launcher import launch, wait_running
from support.paths import EXAMPLES
from support.processes import Procs
from support.webhook import Webhook

from forgather_control.core.outcome import EXIT_STOPPED

PLAIN = EXAMPLES / "plain_loop.py"
TIMEOUT = 240.0
SECRET = "s3cr3t-T0K3N-in-the-path"


def _cmdlines(pids: list[int]) -> dict[int, bytes]:
    out = {}
    for pid in pids:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            pass
    return out


def _files_holding(folder: Path, secret: bytes, *, but: tuple[str, ...]) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in but and secret in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_notify_file_keeps_the_url_out_of_every_argv_record_and_output(jobs_dir: Path, procs: Procs, cli, tmp_path: Path) -> None:
    with Webhook() as hook:
        url = hook.url(f"hook/{SECRET}")
        sinks = tmp_path / "sinks"
        sinks.write_text(f"# where job told's alerts go\n{url}\n")
        sinks.chmod(0o600)
        job = launch(procs, jobs_dir, "told", PLAIN, "--step-time", "0.02", "--output-dir", str(tmp_path / "out"), opts=("--notify-file", str(sinks)))
        wait_running(jobs_dir, "told", job)

        everyone = [job.pid, *(p.pid for p in job.tree.track() if p.pid != job.pid)]  # the launcher, torchrun, the worker
        cmdlines = _cmdlines(everyone)
        assert len(cmdlines) >= 3 and job.pid in cmdlines, cmdlines
        assert not [pid for pid, argv in cmdlines.items() if SECRET.encode() in argv], cmdlines
        notify = jobs_dir / "told" / "notify.json"
        assert stat.S_IMODE(os.lstat(notify).st_mode) == 0o600 and json.loads(notify.read_text())["urls"] == [url]

        res = cli("control", "stop", "told", "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT)
        assert res.code == 0, res.out + res.err
        assert job.wait(TIMEOUT) == EXIT_STOPPED, job.output()[-3000:]
        [alert] = hook.wait(1)
        assert hook.paths == [f"/hook/{SECRET}"]
    assert alert["event"] == "stopped"
    assert SECRET not in job.output()
    assert _files_holding(jobs_dir, SECRET.encode(), but=("notify.json",)) == []
    assert psutil.pid_exists(job.pid) is False or psutil.Process(job.pid).status() == psutil.STATUS_ZOMBIE
