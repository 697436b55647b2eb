"""Whole-file JSON writes and hostile-file-tolerant reads.

The jobs directory may live on shared storage that several hosts, users and crashed
processes write into. A reader must never see half a record and must never be led
outside the root by a symlink, so every write goes through a temp file + ``os.replace``
and every read refuses links, folders, huge files and anything that is not a JSON
object.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Temp files start with this prefix; listings never read them.
TEMP_PREFIX = ".tmp-"
#: Records are small; anything larger is garbage or hostile.
MAX_RECORD_BYTES = 1 << 20
_READ_HEADROOM = 64 * 1024


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and force mode 0700 on it, whatever the umask.

    ``mkdir(mode=...)`` is filtered by the umask, so the mode is set again explicitly.
    Only the leaf is chmod-ed: parents may be shared folders owned by someone else.
    """
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(f"{path} is a symlink; refusing to use it as a jobs folder")
    if stat.S_IMODE(st.st_mode) != 0o700 and st.st_uid == os.geteuid():
        os.chmod(path, 0o700)
    return path


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600) -> None:
    """Write ``data`` as JSON so that readers see the old file or the new one, never half.

    The temp file is created with ``mode`` from the start (O_EXCL, then fchmod against
    the umask), so a token never sits in a world-readable file, even briefly.
    """
    payload = json.dumps(data, indent=1, sort_keys=True, default=str).encode()
    tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class RecordError(ValueError):
    """A record file that is there but is not a record: a link, a folder, too large, not
    JSON, not an object, or (``records``) a field of the wrong type. The message names
    the file (or field) and the problem."""


def read_json(path: str | os.PathLike[str], *, max_bytes: int = MAX_RECORD_BYTES, quiet: bool = False) -> dict[str, Any] | None:
    """Read one JSON object, or return None (with a warning) for anything else.

    Missing files are normal (a job started by hand has no job.json) and are not
    warned about. Symlinks, folders, devices, oversized and malformed files are skipped
    with a warning, never followed and never raised.
    """
    try:
        return read_record(path, max_bytes=max_bytes)
    except RecordError as exc:
        _warn(quiet, "skipping %s", exc)
        return None


def read_record(path: str | os.PathLike[str], *, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any] | None:
    """One JSON object; None when the file does not exist; RecordError for a file that
    is there but is not a record (never followed when it is a link)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # no record here (no folder for one)
        return None
    except OSError as exc:
        raise RecordError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RecordError(f"{path}: not a regular file (symlinks and folders are never followed)")
    if st.st_size > max_bytes:
        raise RecordError(f"{path}: {st.st_size} bytes is larger than a record can be ({max_bytes})")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordError(f"{path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "rb") as fh:
            # Ask for what lstat saw (plus a little: records are replaced whole, so the
            # file opened a moment later may be a newer, slightly larger version), not
            # for max_bytes: a 1 MiB read allocates 1 MiB, per file, in every listing.
            raw = fh.read(min(max_bytes, st.st_size + _READ_HEADROOM) + 1)
            if len(raw) > st.st_size + _READ_HEADROOM and len(raw) <= max_bytes:
                raw += fh.read(max_bytes + 1 - len(raw))
    except OSError as exc:
        raise RecordError(f"{path}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise RecordError(f"{path}: larger than a record can be")
    try:
        data = json.loads(raw.decode("utf-8"))  # JSON is UTF-8 (RFC 8259): no guessing UTF-16 from a BOM
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RecordError(f"{path}: not valid JSON ({str(exc)[:80]}); it may be half-written by an old tool") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def remove_quietly(path: Path) -> None:
    """Unlink a file we own; a file already gone is the outcome we wanted."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _warn(quiet: bool, msg: str, *args: Any) -> None:
    if quiet:
        log.debug(msg, *args)
    else:
        log.warning(msg, *args)
