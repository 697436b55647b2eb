"""A stand-in for the Forgather framework's own control callback (``TrainerControlCallback``),
for quick tests of how ``forgather control`` lists and commands its jobs.

It writes the callback's ``endpoint.json`` format ({job_id, host, port, pid, started_at}: no
token, nothing else in the folder) and serves the two routes of its HTTP API, in this test
process: ``GET /jobs/ID/status`` (job_id, status, timestamp, the last logs, global_step,
epoch, max_steps) and ``POST /jobs/ID/control`` ({"status": "acknowledged", ...}; 400 for an
unknown command). Each answer can be replaced to lie; every request is recorded. The real
callback is driven in tests/client/test_framework_jobs.py's slow test.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: The callback's command names (its COMMAND_CODES).
VALID = ("graceful_stop", "save_checkpoint", "save_and_stop", "status", "abort")


def job_id_for(pid: int | None = None) -> str:
    """A job id of the callback's form: ``job_<unix>_<hostname>_<pid>``."""
    return f"job_{int(time.time())}_{socket.gethostname()}_{pid or os.getpid()}"


def write_endpoint(jobs_dir: Path, job_id: str, /, **fields: Any) -> Path:
    """The callback's endpoint.json (written as it writes it: in place, indent 2), for a
    process of this host (this test's own pid, started before now) unless ``fields`` say
    otherwise; a field given as ``None`` is left out."""
    folder = jobs_dir / job_id
    folder.mkdir(parents=True, exist_ok=True)
    record = {"job_id": job_id, "host": socket.gethostname(), "port": 9, "pid": os.getpid(), "started_at": time.time(), **fields}
    path = folder / "endpoint.json"
    path.write_text(json.dumps({k: v for k, v in record.items() if v is not None}, indent=2))
    return path


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class StandIn:
    """One job of the callback: its folder and its server. ``status`` is the status answer
    (a dict, or raw bytes to lie with), ``on_command`` may replace the control answer
    (return ``(code, body)``) or act on a command (remove the endpoint, as the callback does
    at train end)."""

    jobs_dir: Path
    job_id: str = field(default_factory=job_id_for)
    step: int = 42
    status: dict[str, Any] | bytes | None = None
    on_command: Callable[[str], tuple[int, Any] | None] | None = None
    hang: threading.Event | None = None
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def endpoint(self) -> Path:
        return self.jobs_dir / self.job_id / "endpoint.json"

    def start(self, **endpoint: Any) -> StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: Any) -> None:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _record(self, body: Any) -> None:
                standin.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if standin.hang is not None:
                    standin.hang.wait(30)

            def do_GET(self) -> None:
                self._record(None)
                if self.path != f"/jobs/{standin.job_id}/status":
                    return self._answer(404, {"error": "404: Not Found"})
                if standin.status is not None:
                    return self._answer(200, standin.status)
                self._answer(
                    200,
                    {
                        "job_id": standin.job_id,
                        "status": "running",
                        "timestamp": time.time(),
                        "epoch": 0.25,
                        "loss": 1.5,
                        "grad_norm": 0.75,
                        "learning_rate": 5e-05,
                        "global_step": standin.step,
                        "max_steps": 1000,
                    },
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    body = None
                self._record(body)
                if self.path != f"/jobs/{standin.job_id}/control":
                    return self._answer(404, {"error": "404: Not Found"})
                command = body.get("command") if isinstance(body, dict) else None
                replaced = standin.on_command(command) if standin.on_command is not None else None
                if replaced is not None:
                    return self._answer(*replaced)
                if command not in VALID:
                    return self._answer(400, {"error": f"Unknown command: {command}", "valid_commands": list(VALID)})
                self._answer(
                    200, {"status": "acknowledged", "command": command, "timestamp": time.time(), "message": f"Command {command} queued for execution"}
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()  # shutdown() waits a poll
        write_endpoint(self.jobs_dir, self.job_id, port=self.port, **endpoint)
        return self

    def commands(self) -> list[Any]:
        """The bodies of every command posted to it."""
        return [s.body for s in self.seen if s.method == "POST"]

    def stop(self) -> None:
        if self.hang is not None:
            self.hang.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def main(argv: list[str]) -> int:
    """``python tests/support/framework_callback.py JOBS_DIR``: one stand-in job served by this
    process until it is killed (a job whose process can die); prints its job id."""
    job = StandIn(Path(argv[0])).start()
    print(job.job_id, flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
