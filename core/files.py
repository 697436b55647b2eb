"""Whole-file JSON writes and hostile-file-tolerant reads.

The jobs directory may live on shared storage that several hosts, users and crashed
processes write into. A reader must never see half a record and must never be led
outside the root by a symlink, so every write goes through a temp file + ``os.replace``
and every read refuses links, folders, huge files and anything that is not a JSON
object.
"""

from __future__ import annotations

import errno
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
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class NotOurs(PermissionError):
    """A folder or file of the jobs directory that belongs to another user. A job's folder
    and everything in it belong to the uid that launched the job (docs/design-notes.md, "A
    shared jobs directory"): what another uid made there is never used, obeyed or trusted."""


def owner_name(uid: int) -> str:
    """``uid 1002 (bob)``, or ``uid 1002`` when the uid has no name here."""
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def foreign(path: str | os.PathLike[str], uid: int, *, owner: int | None = None) -> str:
    """Why ``path``, owned by ``uid``, is not trusted: it is not ``owner``'s (default: this process's uid)."""
    expected = os.geteuid() if owner is None else owner
    whose = "you" if owner is None else "the job's owner"
    return f"{path} belongs to {owner_name(uid)}, not to {whose} ({owner_name(expected)}); not trusted"


def open_folder(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """A descriptor on the folder ``path`` itself: never a link followed, never anything but a folder."""
    try:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(f"{path} is a symlink or not a folder; refusing to use it as a jobs folder") from None
        raise


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and force mode 0700 on it, whatever the umask; refuse
    (:class:`NotOurs`, naming the owner) a folder that another user made.

    The mode is set through a descriptor opened without following links (``fchmod``),
    never by path: another user who can rename things in the parent must not be able to
    turn the chmod onto a file of ours. Parents may be shared folders owned by someone
    else: only the leaf is checked and changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = open_folder(path)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise NotOurs(f"{foreign(path, st.st_uid)}: a job's folders are made by the user who launches it")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def ensure_dir(path: Path) -> Path:
    """A folder others may share (a ``--jobs-dir``): made private when it is made here,
    left as it is when it exists (its owner chose who shares it); never a link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        made = False
    else:
        made = True
    fd = open_folder(path)
    try:
        if made and os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600) -> None:
    """Write ``data`` as JSON so that readers see the old file or the new one, never half.

    The temp file is created with ``mode`` from the start (O_EXCL, then fchmod against
    the umask), so a token never sits in a world-readable file, even briefly.
    """
    write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str).encode(), mode=mode)


def write_bytes_atomic(path: Path, payload: bytes, *, mode: int = 0o600) -> None:
    """Write ``payload`` to ``path`` as :func:`write_json_atomic` writes a record: readers
    see the old file or the new one, created with ``mode``, never through a link."""
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


def read_secret_file(path: str | os.PathLike[str], *, what: str, max_bytes: int, holds: str, secret: str, mine: str, then: str) -> str:
    """The text of a file the user keeps a secret in, so that it is in no process's argv
    (``--notify-file``, ``--token-file``). Refused (ValueError saying what to do, never a
    byte of the file) unless it is a regular file of this user's that no one else may
    read or write (mode 0600 or 0400, as ssh keeps a key: read, it leaks the secret;
    written, it redirects what it names), at most ``max_bytes``, UTF-8.

    The message names the file as ``the {what} PATH``; ``holds`` says what it is (a size
    refusal), ``secret`` why others must not read it, ``mine`` why it must be the
    user's own, ``then`` what to run once it is ``chmod 600``."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {name} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"the {what} {name} is not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(f"the {what} {name} is not yours (owner uid {st.st_uid}): {mine}; use a file of your own")
        if st.st_mode & 0o077:
            raise ValueError(
                f"the {what} {name} may be read or changed by other users (mode {stat.S_IMODE(st.st_mode):04o}); {secret}: `chmod 600 {name}`, then {then}"
            )
        raw = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise ValueError(f"the {what} {name} is larger than {max_bytes // 1024} KiB; {holds}")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"the {what} {name} is not UTF-8 text") from None


class RecordError(ValueError):
    """A record file that is there but is not a record: a link, a folder, too large, not
    JSON, not an object, or (``records``) a field of the wrong type. The message names
    the file (or field) and the problem."""


def read_json(path: str | os.PathLike[str], *, max_bytes: int = MAX_RECORD_BYTES, quiet: bool = False, owner: int | None = None) -> dict[str, Any] | None:
    """Read one JSON object, or return None (with a warning) for anything else.

    Missing files are normal (a job started by hand has no job.json) and are not
    warned about. Symlinks, folders, devices, oversized and malformed files are skipped
    with a warning, never followed and never raised.
    """
    try:
        return read_record(path, max_bytes=max_bytes, owner=owner)
    except RecordError as exc:
        _warn(quiet, "skipping %s", exc)
        return None


def read_record(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_RECORD_BYTES, owner: int | None = None, dir_fd: int | None = None
) -> dict[str, Any] | None:
    """One JSON object; None when the file does not exist; RecordError for a file that
    is there but is not a record (never followed when it is a link), or, with ``owner``
    (a uid), that another user wrote: it is not trusted, whatever it says. ``dir_fd``:
    ``path`` is relative to that open folder (a reader holding one never re-walks a path
    someone could swap)."""
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):  # no record here (no folder for one)
        return None
    except OSError as exc:
        raise RecordError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RecordError(f"{path}: not a regular file (symlinks and folders are never followed)")
    if st.st_size > max_bytes:
        raise RecordError(f"{path}: {st.st_size} bytes is larger than a record can be ({max_bytes})")
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordError(f"{path}: {exc.strerror or exc}") from None
    try:
        uid = os.fstat(fd).st_uid
        if owner is not None and uid != owner:
            raise RecordError(foreign(path, uid, owner=owner))
    except BaseException:
        os.close(fd)
        raise
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
