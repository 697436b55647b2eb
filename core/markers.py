"""Run markers and the settled form: jobs that have ended, written down once, so ``list`` never opens them again.

A jobs directory on shared storage collects every run anyone launched. ``list`` shows
what may be live; it must not pay for the history. Two flat folders beside the jobs
say which folders it may pass by::

    <root>/.runs/<job id>@<nonce>   a run marker: a process of the job started here
                                     (the launcher on each node, rank 0), and who it is
    <root>/.settled/<uid>/<job id>  a settled entry: the job has provably ended, said by
                                     the job's own user

``list`` reads the two folders' *names* (two directory listings, however long the
history) and opens only the folders that have a run marker or no settled entry. A
marker always wins: a settled job that is relaunched (its launcher and rank 0 each write
a marker before anything of the run, in :meth:`~forgather_control.core.jobs.JobPaths.create`) is read again at once.

Rules that keep it right with many writers on NFS-style storage (atomic rename, no
reliable locks, clocks that disagree):

- every file is one writer's own, written whole (temp file, then rename); nothing is
  ever rewritten in place by two writers;
- a job is settled when it has provably ended: its own final word (with every
  launcher of it on another host recorded as ended: judging that by a heartbeat's age
  would trust this host's clock); or a pid check on this host or SLURM says it died
  *and* it has been silent for :data:`SILENT_FOR` (a job that died is shown by ``list``
  for that long, so whoever launched it sees it); or nothing proves anything but it has
  been silent that long. Silence is judged by the job's records' times against this
  host's clock *and* by the storage's own clock (its folder's mtime against a file
  created now);
- a settled entry is written only when every marker of the job is proven gone: its
  process ran on this host and no longer runs, or it recorded its own end after it made
  the marker (its clock against its own clock), or SLURM no longer knows its job, or
  the marker and the job are both silent as above;
- a marker is removed only once proven gone, and only by its exact name: a marker
  written meanwhile by a relaunch on another host is never touched;
- a job judged possibly running when read again (``list --all``) loses its entry;
- a missing, unreadable or foreign-shaped index hides nothing: a name that is not a job
  id, or an entry that is not a regular file, is passed by; an unreadable ``.runs``
  makes ``list`` read every folder, as before this form existed;
- a jobs directory may be shared by many users: an entry hides a job only from the
  folder of the uid that owns the job's folder, and that folder (``.settled/<uid>``)
  counts only when that uid owns it and nobody else may write it; each user makes and
  writes only their own. A marker needs no such check: it only makes a job be read.
  The shared folders ``.runs`` and ``.settled`` are made under a temporary name, given
  the root's mode (sticky when others may write) through their descriptor, then renamed
  into place: nothing is chmod-ed by a path another user could swap.

Entry and marker contents are records like any other, checked where read.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from msgspec import structs

from forgather_control.core.files import TEMP_PREFIX, NotOurs, RecordError, foreign, open_folder
from forgather_control.core.ids import is_valid_job_id
from forgather_control.core.liveness import process_identity
from forgather_control.core.records import Identity, Marker, Record, SettledEntry, decode, encode

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)

__all__ = [
    "FORMAT",
    "RUNS_DIR",
    "SETTLED_DIR",
    "SILENT_FOR",
    "VERDICTS",
    "Index",
    "keep_marked",
    "mark_run",
    "open_dir",
    "open_own",
    "read_at",
    "read_entry",
    "read_index",
    "read_marker",
    "unlink",
    "unsettle",
    "write_record",
]

SETTLED_DIR = ".settled"
RUNS_DIR = ".runs"
#: A job whose records and markers have all been silent this long, on this host's clock
#: and on the storage's, is settled as ``stale`` though nothing proves it ended (its
#: host went away). Heartbeats come every few seconds; a day of silence is not a run.
SILENT_FOR = 24 * 3600.0
FORMAT = 1
_SEP = "@"
_MAX_BYTES = 64 * 1024
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

VERDICTS = ("finished", "dead", "stale")


# -- reading the index ------------------------------------------------------------
@dataclass(frozen=True)
class Index:
    """The names in ``.settled`` and ``.runs``: which folders ``list`` may pass by."""

    #: job id -> the uids whose own folder of ``.settled`` says it has ended
    settled: Mapping[str, frozenset[int]] = field(default_factory=dict)
    #: job id -> its run markers' names
    runs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: False when ``.runs`` could not be read: a relaunch would not show, so nothing is skipped
    usable: bool = True
    root: str = ""

    def skips(self, job_id: str) -> bool:
        """True when ``list`` need not open this job: settled by the user whose folder it
        is, and no run since. This user's own entries name folders of its own (its
        settler writes no other), so they cost nothing; another user's cost one lstat,
        which says whose the folder is."""
        uids = self.settled.get(job_id)
        if not self.usable or not uids or job_id in self.runs:
            return False
        if os.geteuid() in uids:
            return True
        try:
            st = os.lstat(os.path.join(self.root, job_id))
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and st.st_uid in uids

    def own(self, uid: int | None = None) -> frozenset[str]:
        """The jobs settled by ``uid`` (default: this process's): the entries it may remove."""
        me = os.geteuid() if uid is None else uid
        return frozenset(job_id for job_id, uids in self.settled.items() if me in uids)

    def settled_by(self, job_id: str, uid: int | None = None) -> bool:
        return (os.geteuid() if uid is None else uid) in self.settled.get(job_id, ())


def read_index(root: str | os.PathLike[str]) -> Index:
    """Directory listings, names only (no file is opened, nothing is stat'ed but the
    folders of ``.settled``): ``.runs``, ``.settled`` and each user's folder in it.
    ``.runs`` is read first: a marker seen there keeps its job in the listing whatever
    ``.settled`` says a moment later."""
    marks = _names(root, RUNS_DIR)
    if marks is None:
        return Index(usable=False)
    runs: dict[str, list[str]] = {}
    for name, _regular in marks:
        job_id, sep, nonce = name.partition(_SEP)
        # Any shape counts (a folder, a link): a marker can only make a job be read.
        if sep and nonce and is_valid_job_id(job_id):
            runs.setdefault(job_id, []).append(name)
    settled: dict[str, set[int]] = {}
    for uid, names in _settled_by_user(root):
        for name, regular in names:
            if regular and is_valid_job_id(name):
                settled.setdefault(name, set()).add(uid)
    return Index({k: frozenset(v) for k, v in settled.items()}, {k: tuple(v) for k, v in runs.items()}, root=os.fspath(root))


def _settled_by_user(root: str | os.PathLike[str]) -> list[tuple[int, list[tuple[str, bool]]]]:
    """(uid, its entries' names) for each folder ``.settled/<uid>`` that ``uid`` owns and
    nobody else may write: anything else there (a name made by another user, a link, an
    entry of the old flat form) is passed by, and so hides nothing."""
    try:
        top = open_folder(os.path.join(root, SETTLED_DIR))
    except OSError:
        return []
    out = []
    try:
        with os.scandir(top) as it:
            subs = [e.name for e in it if e.name.isdigit() and e.is_dir(follow_symlinks=False)]
        for sub in subs:
            try:
                fd = open_folder(sub, dir_fd=top)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if st.st_uid != int(sub) or st.st_mode & 0o022:
                    log.debug("passing by %s/%s/%s: %s", root, SETTLED_DIR, sub, "not its owner's own folder")
                    continue
                with os.scandir(fd) as it:
                    out.append((int(sub), [(e.name, e.is_file(follow_symlinks=False)) for e in it if not e.name.startswith(TEMP_PREFIX)]))
            finally:
                os.close(fd)
    except OSError as exc:
        log.debug("cannot read %s/%s: %s", root, SETTLED_DIR, exc)
    finally:
        os.close(top)
    return out


def _names(root: str | os.PathLike[str], sub: str) -> list[tuple[str, bool]] | None:
    """(name, is a regular file) for each entry of ``root/sub``; [] when it does not
    exist; None when it cannot be read (or is not a real folder: never followed)."""
    try:
        fd = os.open(os.path.join(root, sub), os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.debug("cannot read %s/%s: %s", root, sub, exc)
        return None
    try:
        with os.scandir(fd) as it:
            # d_type from the listing itself: no stat per entry
            return [(e.name, e.is_file(follow_symlinks=False)) for e in it if not e.name.startswith(TEMP_PREFIX)]
    except OSError as exc:
        log.debug("cannot read %s/%s: %s", root, sub, exc)
        return None
    finally:
        os.close(fd)


def read_entry(root: str | os.PathLike[str], job_id: str) -> SettledEntry | None:
    """A job's settled entry in this user's own folder, checked; None when there is none
    or it is not one."""
    try:
        fd = open_own(root, SETTLED_DIR, create=False)
    except OSError:
        return None
    if fd is None:
        return None
    try:
        rec, _ = read_at(fd, job_id, SettledEntry)
    finally:
        os.close(fd)
    if rec is None or rec.job_id != job_id or rec.verdict not in VERDICTS:
        return None
    return rec


# -- run markers (the writers' side) ------------------------------------------------
def mark_run(root: str | os.PathLike[str], job_id: str, identity: Identity | None = None) -> str | None:
    """Record that a process of ``job_id`` starts a run (``identity``: this process),
    and take the job out of the settled form. Returns the marker's name; never raises
    (a job runs without it: its entry, the only one that can hide it, is removed all
    the same, so it is not hidden)."""
    record = Marker(job_id=job_id, **structs.asdict(identity or process_identity()), created_at=time.time(), format=FORMAT)
    name = f"{job_id}{_SEP}{secrets.token_hex(8)}"
    written = None
    try:
        fd = open_dir(root, RUNS_DIR, create=True)
        if fd is not None:
            try:
                write_record(fd, name, record, sync=True)
                written = name
            finally:
                os.close(fd)
    except OSError as exc:
        log.warning("could not write the run marker of job %s in %s/%s (%s); list reads its folder anyway", job_id, root, RUNS_DIR, exc)
    unsettle(root, job_id)
    return written


def unsettle(root: str | os.PathLike[str], job_id: str) -> None:
    """Remove this user's settled entry of ``job_id``, if there is one (the only one that
    can hide a job of this user's)."""
    try:
        fd = open_own(root, SETTLED_DIR, create=False)
    except OSError as exc:
        log.debug("cannot open %s/%s: %s", root, SETTLED_DIR, exc)
        return
    if fd is None:
        return
    try:
        os.unlink(job_id, dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not take job %s out of the settled form (%s/%s/%d): %s", job_id, root, SETTLED_DIR, os.geteuid(), exc)
    finally:
        os.close(fd)


def keep_marked(root: str | os.PathLike[str], job_id: str, name: str | None) -> str | None:
    """A running process's marker is still there (one stat); if someone removed it (a
    reader whose clock is far off), mark again. Returns the marker's name now."""
    if name is not None:
        try:
            os.lstat(os.path.join(root, RUNS_DIR, name))
            return name
        except FileNotFoundError:
            log.warning("the run marker of job %s was removed while it runs; marking it again", job_id)
        except OSError:
            return name
    return mark_run(root, job_id)


# -- small file operations, relative to a folder opened without following links ----
def open_dir(root: str | os.PathLike[str], sub: str, *, create: bool) -> int | None:
    """A descriptor on the shared index folder ``root/sub`` (never a link followed); with
    ``create``, made when missing (:func:`_make_shared`)."""
    path = os.path.join(root, sub)
    try:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            return None
    except OSError as exc:
        if create:
            raise
        log.debug("cannot open %s: %s", path, exc)
        return None
    _make_shared(root, sub)
    return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW)


def open_own(root: str | os.PathLike[str], sub: str, *, create: bool) -> int | None:
    """A descriptor on this user's own folder of a shared index, ``root/sub/<uid>``: made
    by its owner, 0755 (anyone reads the names, nobody else writes). None when it is not
    there; :class:`~.files.NotOurs` when it is, but another user made it or may write it."""
    top = open_dir(root, sub, create=create)
    if top is None:
        return None
    name = str(os.geteuid())
    try:
        try:
            fd = open_folder(name, dir_fd=top)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(name, 0o700, dir_fd=top)
            except FileExistsError:
                pass  # made by another process of ours meanwhile
            fd = open_folder(name, dir_fd=top)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise NotOurs(foreign(os.path.join(root, sub, name), st.st_uid))
            if stat.S_IMODE(st.st_mode) != 0o755:
                os.fchmod(fd, 0o755)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(top)


def _make_shared(root: str | os.PathLike[str], sub: str) -> None:
    """Make the index folder ``root/sub`` with the root's permissions (sticky when others
    may write: users who may add jobs add markers and folders of their own, and none
    removes another's); a private root's stays private. Made under a temporary name,
    checked (ours, empty) and given its mode through its descriptor, then renamed into
    place: another user who swaps a link or a folder of theirs in meanwhile turns no
    chmod onto anything else. Another writer's made meanwhile wins."""
    rootfd = open_folder(root)
    tmp = f"{TEMP_PREFIX}{sub.lstrip('.')}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        os.mkdir(tmp, 0o700, dir_fd=rootfd)
        try:
            fd = open_folder(tmp, dir_fd=rootfd)
            try:
                st = os.fstat(fd)
                if st.st_uid != os.geteuid() or os.listdir(fd):
                    raise NotOurs(f"{root}/{tmp} was swapped for another folder while it was made")
                mode = stat.S_IMODE(os.fstat(rootfd).st_mode)
                if mode & 0o022:
                    mode |= stat.S_ISVTX
                if mode != 0o700:
                    os.fchmod(fd, mode)
            finally:
                os.close(fd)
            if not os.path.lexists(os.path.join(root, sub)):
                try:
                    os.rename(tmp, sub, src_dir_fd=rootfd, dst_dir_fd=rootfd)
                except OSError as exc:
                    log.debug("%s/%s was made meanwhile: %s", root, sub, exc)
        finally:
            try:
                os.rmdir(tmp, dir_fd=rootfd)
            except OSError:
                pass  # renamed into place
    finally:
        os.close(rootfd)


def write_record(dir_fd: int, name: str, record: Record, *, sync: bool) -> None:
    """Write ``name`` whole: a temp file, then a rename, both inside ``dir_fd``."""
    payload = json.dumps(encode(record), sort_keys=True).encode()
    tmp = f"{TEMP_PREFIX}{name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    try:
        try:
            os.write(fd, payload)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def read_marker(root: str | os.PathLike[str], name: str) -> tuple[Marker | None, float | None]:
    """Marker ``name``, checked, and its mtime, as :func:`_read` gives them."""
    fd = open_dir(root, RUNS_DIR, create=False)
    if fd is None:
        return None, None
    try:
        return read_at(fd, name, Marker)
    finally:
        os.close(fd)


def read_at(dir_fd: int, name: str, cls: type[R]) -> tuple[R | None, float | None]:
    """The checked record ``name`` and its mtime; (None, mtime) when it is there but not
    a record of this shape, (None, None) when it is not there (or not a regular file)."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except OSError:
        return None, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None
        raw = os.read(fd, _MAX_BYTES + 1)
    except OSError:
        return None, None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8")) if len(raw) <= _MAX_BYTES else None
        if not isinstance(data, dict):
            return None, st.st_mtime
        return decode(data, cls, name=name), st.st_mtime
    except (ValueError, UnicodeDecodeError, RecursionError, RecordError):
        return None, st.st_mtime


def unlink(root: str | os.PathLike[str], sub: str, name: str) -> None:
    """Remove ``root/sub/name`` if it is there; ``sub`` is never followed if a link."""
    fd = open_dir(root, sub, create=False)
    if fd is None:
        return
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("could not remove %s/%s/%s: %s", root, sub, name, exc)
    finally:
        os.close(fd)
