"""A worker's stdout and stderr, handed to its launcher (``launcher/output.py``).

Called by the bootstrap before anything else: when the launcher names its socket
(``FORGATHER_LOG_SOCKET``), the worker connects twice, says its global rank and which
stream each connection carries, and puts the connections on its descriptors 1 and 2,
which its children inherit as they would the terminal. The launcher shows the bytes on
its own terminal as torchrun would, and keeps them in the rank's log in the job folder.

Nothing of ours runs in the worker afterwards: no thread, no buffer. A write lands in
the kernel's socket buffer, where it outlives the worker (SIGKILL included) until the
launcher has read it. Python's stdout is made line-buffered, as it is on a terminal, so
a rank killed mid-run has handed over every line it printed. When the socket cannot be
reached, the worker keeps the terminal it was given and says so once.
"""

from __future__ import annotations

import os
import socket
import sys

from forgather_control.core.env import ENV_LOG_SOCKET, ENV_RANK

__all__ = ["capture_output"]

#: Seconds a connection may take (the launcher accepts at once; a full backlog waits).
CONNECT_TIMEOUT = 10.0


def capture_output(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Hand stdout and stderr to the launcher named in ``environ`` (the variable is
    removed: the user's own subprocesses inherit the descriptors, not the socket's
    name); True when they are its from now on."""
    address = environ.pop(ENV_LOG_SOCKET, None)
    if not address:
        return False
    rank = environ.get(ENV_RANK, "0")
    rank = rank if rank.isdigit() else "0"
    try:
        out = _connect(address, rank, "out")
        try:
            err = _connect(address, rank, "err")
        except OSError:
            os.close(out)
            raise
    except OSError as exc:
        sys.stderr.write(f"forgather: rank {rank}'s output is not kept in the job folder ({exc.strerror or exc}); it goes to the terminal only\n")
        return False
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(line_buffering=True)
        except (OSError, ValueError):
            pass
    return True


def _connect(address: str, rank: str, stream: str) -> int:
    """A connected stream socket's descriptor, blocking (as a terminal is), its header sent."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(address)
        sock.sendall(f"forgather-log 1 {rank} {stream} {os.getpid()}\n".encode())
        sock.shutdown(socket.SHUT_RD)
        sock.settimeout(None)  # blocking again: a descriptor left non-blocking fails a print on a full buffer
    except BaseException:
        sock.close()
        raise
    return sock.detach()
