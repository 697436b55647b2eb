"""Every local rank's stdout and stderr: to the terminal, as torchrun shows them, and into
the rank's bounded log in the job folder (``core/logs.py``).

The launcher listens on a Unix socket in a private folder of this node
(``FORGATHER_LOG_SOCKET`` names it to the workers). Each worker's bootstrap, before the
user's code runs, connects twice (stdout, then stderr), says which rank and stream it
is, and puts the connections on its file descriptors 1 and 2
(``callback/output.py``). From then on one thread here reads every connection and
writes what it reads, unchanged, to this process's own stdout or stderr (the terminal,
or SLURM's output file) and, a line at a time, to ``logs/rank-<R>.log``.

Why here: the rank writes into a kernel buffer and nothing else, so a rank killed by
SIGKILL (an OOM kill) loses nothing it wrote (its last lines stay in the socket until
read), and the training process gets no thread and no buffer of ours. The launcher
outlives its ranks, so after torchrun is reaped it reads every connection to its end
before the job's end is recorded: a reader who sees the job ended has its whole log.
Each node's launcher writes its own ranks' files into the shared job folder.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import selectors
import shutil
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from forgather_control.core.files import ensure_private_dir, open_folder
from forgather_control.core.logs import LOGS_DIR, RankLog

log = logging.getLogger(__name__)

__all__ = ["HEADER", "OutputPump"]

#: What a worker says first on each connection: ``forgather-log 1 <rank> <out|err> <pid>``.
HEADER = re.compile(rb"forgather-log 1 (\d{1,7}) (out|err) (\d{1,10})\n")
_HEADER_MAX = 64
#: A line not ended after this many bytes goes to the file as it is (a long progress line).
_PENDING_MAX = 64 << 10
_CHUNK = 64 << 10
#: Seconds close() waits for the pump's thread to read everything.
CLOSE_TIMEOUT = 30.0


class _Conn:
    """One worker stream: its socket, the rank and stream its header named, and the
    bytes of a line not ended yet (written to the file when it ends)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = b""
        self.rank: int | None = None
        self.stream = ""
        self.pending = b""


#: The launchers' socket folders under the temp folder start so (:func:`sweep_stale`).
SOCKET_PREFIX = "forgather-out-"
#: A socket folder this old whose socket nobody listens on was left by a killed launcher.
STALE_AFTER = 60.0


class OutputPump:
    """The launcher's side: listens, and copies every rank's output to the terminal and to
    its log. :meth:`start` returns the socket's path for the workers' environment;
    :meth:`close` (after the workers are gone) reads what is left, and removes the socket.
    ``terminal_bytes``: at most this much of the ranks' output goes to the terminal (a
    detached launcher's log file), then a line saying where the rest is."""

    def __init__(
        self,
        job_dir: Path,
        *,
        max_bytes: int,
        host: str | None = None,
        node: int | None = None,
        run: int | None = None,
        stdout_fd: int = 1,
        stderr_fd: int = 2,
        terminal_bytes: int | None = None,
    ) -> None:
        self.job_dir = job_dir
        self.max_bytes = max_bytes
        self.host, self.node, self.run = host, node, run
        self.terminal = {"out": stdout_fd, "err": stderr_fd}
        #: how much more of the ranks' output the terminal takes (None: all of it); a
        #: detached launcher's terminal is a log file, which must stay bounded
        self.terminal_room = terminal_bytes
        self.logs: dict[int, RankLog] = {}
        self.refused: set[int] = set()
        self.dir_fd = -1
        self.address = ""
        self._tmp: str | None = None
        self._listener: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the launcher's calls -----------------------------------------------------------
    def start(self) -> str:
        """Make the logs folder and the socket, start the thread; the socket's path."""
        logs = ensure_private_dir(self.job_dir / LOGS_DIR)
        self.dir_fd = open_folder(logs)
        sweep_stale(_short_tmp())  # what launchers killed with SIGKILL left
        self._tmp = tempfile.mkdtemp(prefix=SOCKET_PREFIX, dir=_short_tmp())
        self.address = os.path.join(self._tmp, "s")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.address)
        listener.listen(256)
        listener.setblocking(False)
        self._listener = listener
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        for stream in (sys.stdout, sys.stderr):  # what the launcher said comes first
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        self._thread = threading.Thread(target=self._loop, name="forgather-output", daemon=True)
        self._thread.start()
        return self.address

    def close(self) -> None:
        """Read every connection to its end (the workers are gone: what they wrote is all
        there), write it, close the logs and remove the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(CLOSE_TIMEOUT)
            if self._thread.is_alive():
                log.warning("the ranks' output was still being read after %gs; their logs may miss their last lines", CLOSE_TIMEOUT)
                return
        self._release()

    # -- the thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        assert self._sel is not None
        said = False
        while True:
            for key, _ in self._sel.select():
                try:
                    if key.data == "wake":
                        self._drain()
                        return
                    if key.data == "listen":
                        self._accept()
                    else:
                        self._read(key.data)
                except Exception:  # a rank blocks on output nobody reads: say it once, read on
                    if not said:
                        said = True
                        log.exception("copying the ranks' output failed")

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("a rank's output connection failed: %s", exc)
                return
            if not _ours(sock):
                sock.close()
                continue
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ, _Conn(sock))

    def _read(self, conn: _Conn) -> bool:
        """Read what ``conn`` has now; False when it has ended (closed and unregistered)."""
        try:
            data = conn.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self._end(conn)
            return False
        if conn.rank is None:
            conn.head += data
            if b"\n" not in conn.head:
                if len(conn.head) > _HEADER_MAX:
                    self._end(conn)
                    return False
                return True
            line, _, data = conn.head.partition(b"\n")
            match = HEADER.fullmatch(line + b"\n")
            if match is None or int(match.group(1)) > 1 << 20:
                log.warning("a connection to the ranks' output socket did not say which rank it is; closed")
                self._end(conn)
                return False
            conn.rank, conn.stream = int(match.group(1)), match.group(2).decode()
            if not data:
                return True
        self._to_terminal(conn.stream, data)
        self._to_file(conn, data)
        return True

    def _drain(self) -> None:
        """Accept what is waiting, then read every connection until it ends or has nothing more."""
        assert self._sel is not None
        self._accept()
        for key in list(self._sel.get_map().values()):
            if isinstance(key.data, _Conn):
                while self._read(key.data):
                    if not _readable(key.data.sock):
                        self._end(key.data)
                        break

    def _end(self, conn: _Conn) -> None:
        if conn.pending and conn.rank is not None:
            self._file_write(conn.rank, conn.pending)
            conn.pending = b""
        assert self._sel is not None
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    # -- writing ------------------------------------------------------------------------
    def _to_terminal(self, stream: str, data: bytes) -> None:
        fd = self.terminal.get(stream, -1)
        if fd < 0:
            return
        if self.terminal_room is not None:
            if self.terminal_room <= 0:
                return
            if len(data) > self.terminal_room:
                data = data[: self.terminal_room]
                tail = f"\n----- forgather: this log stops here; every rank's output goes on in its log: forgather control logs {self.job_dir.name} -----\n"
                data += tail.encode()
            self.terminal_room -= len(data)
        if not _write_all(fd, data):
            self.terminal[stream] = -1  # closed (a reader that left): the files still get it

    def _to_file(self, conn: _Conn, data: bytes) -> None:
        """Whole lines (a line of stdout and one of stderr do not splice), or what has
        waited for its end too long."""
        assert conn.rank is not None
        buf = conn.pending + data
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r")) + 1
        if cut == 0 and len(buf) >= _PENDING_MAX:
            cut = len(buf)
        if cut:
            self._file_write(conn.rank, buf[:cut])
        conn.pending = buf[cut:]

    def _file_write(self, rank: int, data: bytes) -> None:
        writer = self.logs.get(rank)
        if writer is None:
            if rank in self.refused:
                return
            try:
                writer = RankLog(self.dir_fd, rank, max_bytes=self.max_bytes, host=self.host, node=self.node, run=self.run)
            except OSError as exc:
                self.refused.add(rank)
                log.warning("rank %d's log cannot be written in %s (%s); its output still reaches the terminal", rank, self.job_dir / LOGS_DIR, exc)
                return
            self.logs[rank] = writer
        writer.write(data)

    def _release(self) -> None:
        for writer in self.logs.values():
            writer.close()
        if self._sel is not None:
            for key in list(self._sel.get_map().values()):
                if isinstance(key.data, _Conn):
                    key.data.sock.close()
            self._sel.close()
        if self._listener is not None:
            self._listener.close()
        for fd in (self._wake_r, self._wake_w, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = self.dir_fd = -1
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _ours(sock: socket.socket) -> bool:
    """The peer runs as this user (the folder is 0700 already: belt and braces)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_PEERCRED", 17), struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.geteuid()


def _readable(sock: socket.socket) -> bool:
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


def _write_all(fd: int, data: bytes) -> bool:
    """All of ``data`` to ``fd`` (waiting while it is full); False when it is closed."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF, errno.EINVAL, errno.EIO):
                return False
            raise
        view = view[n:]
    return True


def sweep_stale(root: str, *, older_than: float = STALE_AFTER) -> list[str]:
    """Remove the socket folders under ``root`` that launchers killed with SIGKILL left:
    ours (never through a link), older than ``older_than`` seconds, and whose socket
    nobody listens on (a live launcher's, here or in another namespace, answers; when it
    cannot be told, the folder stays). Returns what was removed."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    removed = []
    now = time.time()
    for name in names:
        if not name.startswith(SOCKET_PREFIX):
            continue
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or now - st.st_mtime < older_than:
            continue
        if _listened(os.path.join(path, "s")):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _listened(address: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(address)  # a live pump takes it and drops it: no header, no rank
        return True
    except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # cannot tell (a full backlog, a timeout): it stays
        return True
    finally:
        sock.close()


def _short_tmp() -> str:
    """The temp folder, when a socket's path fits under it (108 bytes on Linux), else /tmp."""
    tmp = tempfile.gettempdir()
    return tmp if len(tmp) < 60 else "/tmp"
