"""One family of errors, each carrying the exit code the command line returns for it.

The CLI's single error boundary turns any :class:`ControlError` into one ``error: ...``
line and ``exc.exit_code``; a Python caller catches the same classes. A message says
what happened and what to do, and never holds a token.
"""

from __future__ import annotations

#: Exit codes, documented in the README; every error class below names one of them.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNREACHABLE = 4
EXIT_ENDED = 5
EXIT_UNKNOWN = 6
EXIT_BAD_KNOB = 7
EXIT_NOT_RESUMABLE = 8
EXIT_INTERRUPTED = 130

#: What each exit code means: the CLI's help and the README's table are this table.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_FAILED: "the command failed (refused, failed, dropped, or --wait timed out)",
    EXIT_USAGE: "usage error (bad option, bad or ambiguous job id, missing extra)",
    EXIT_NOT_FOUND: "job not found",
    EXIT_UNREACHABLE: "job unreachable: nothing was sent",
    EXIT_ENDED: "the job has ended (or died): there is nothing left to command",
    EXIT_UNKNOWN: "sent, but no answer came back: the command may still apply",
    EXIT_BAD_KNOB: "a knob change refused (no such knob, wrong type, out of range): nothing was queued",
    EXIT_NOT_RESUMABLE: "resume refused (the job runs, is not yours, has no relaunch record, its checkpoint is gone; no sbatch here): nothing was started",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): a command already sent stays queued",
}


def exit_codes_help() -> str:
    """:data:`EXIT_CODES` as one paragraph of ``--help``."""
    return "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()) + "."


class ControlError(Exception):
    """Something a user must be told about, with an exit code."""

    exit_code = EXIT_FAILED


class UsageError(ControlError):
    """Bad options or arguments: nothing was sent."""

    exit_code = EXIT_USAGE


class InvalidJobId(UsageError, ValueError):
    """A job id that could escape the jobs directory or is otherwise unusable."""


class AmbiguousJob(UsageError, LookupError):
    """A prefix that matches more than one job."""


class JobNotFound(ControlError, LookupError):
    """No job by that id (or prefix) where we looked."""

    exit_code = EXIT_NOT_FOUND


class Unreachable(ControlError):
    """The job exists but cannot be reached (no endpoint, no answer, wrong host)."""

    exit_code = EXIT_UNREACHABLE


class PrivateJob(Unreachable):
    """Another user's job whose folder is private to its owner: its records cannot be read,
    so nothing about it is known and nothing can be sent to it."""


class JobEnded(ControlError):
    """The job has ended (or died): no command can reach it any more."""

    exit_code = EXIT_ENDED


class OutcomeUnknown(ControlError):
    """A command was sent but no answer came back (a timeout, a connection reset after
    sending): it may still apply. Re-sending it with the same ``key`` is safe: the job
    answers with the original receipt instead of queueing it twice."""

    exit_code = EXIT_UNKNOWN

    def __init__(self, message: str, *, key: str, command: str) -> None:
        super().__init__(message)
        self.key = key
        self.command = command


class CommandRefused(ControlError):
    """The job answered and said no (409, 429, another 4xx)."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class BadKnob(ControlError, ValueError):
    """A ``set`` refused before anything was queued: a knob the job does not have, a value
    of the wrong type or out of its range (checked by the client, and again by rank 0)."""

    exit_code = EXIT_BAD_KNOB


class NotResumable(ControlError):
    """``resume`` refused before anything started: the job still runs (or may), is another
    user's, has no relaunch record, the checkpoint named is gone or not the job's, or it
    ran under SLURM and this host has no ``sbatch``."""

    exit_code = EXIT_NOT_RESUMABLE


class CommandFailed(ControlError):
    """A command reached a final state other than completed, or could not reach one."""


class WaitTimeout(ControlError):
    """``wait`` gave up before the command reached a final state; it stays queued."""
