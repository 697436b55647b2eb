"""``forgather control save|eval|stop|save-stop|pause|abort JOB``: send one command, maybe wait.

The library does the work (find the job, check it can take commands, send, follow the
receipt); this module parses options, asks before an abort, shows progress on a terminal
and prints the receipt.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from forgather_control.client import framework_jobs
from forgather_control.client.handle import JobHandle
from forgather_control.client.lookup import open_job
from forgather_control.core.commands import CLI_VERBS, Command, State, new_key
from forgather_control.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ControlError, OutcomeUnknown, UsageError
from forgather_control.core.knobs import parse_assignment
from forgather_control.core.records import CommandOptions, KnobChange, Receipt, encode
from forgather_control.core.states import JobState

from . import options
from .control import SEND_HELP
from .output import print_json, printable

DEFAULT_WAIT = 300.0
#: While --wait waits, the job's records are judged again this often (has it stalled?).
STALL_LOOK_EVERY = 5.0


class Interrupted(ControlError):
    """Ctrl-C while sending or during --wait: the command itself is not cancelled, and
    the user is told how to follow it."""

    exit_code = EXIT_INTERRUPTED


def _command_options(f: Callable) -> Callable:
    for deco in reversed(
        [
            click.argument("job"),
            click.option("--wait", is_flag=True, help="Wait until the command completes (or fails) and show its receipt."),
            click.option("--timeout", type=float, default=DEFAULT_WAIT, show_default=True, help="Seconds --wait waits."),
            options.as_json,
            click.option(
                "--key",
                default=None,
                metavar="K",
                help="Idempotency key (default: a fresh one, printed). Re-sending a command with its key returns its first receipt.",
            ),
            options.channel,
            options.where,
        ]
    ):
        f = deco(f)
    return f


def _verb(verb: str) -> click.Command:
    @_command_options
    def cmd(**kw: Any) -> int:
        return send_command(verb, **kw)

    return click.command(verb, help=SEND_HELP[verb])(cmd)


evaluate = _verb("eval")
stop = _verb("stop")
save_stop = _verb("save-stop")
pause = _verb("pause")


@click.command("save", help=SEND_HELP["save"])
@click.option("--no-eval", is_flag=True, help="Save without the evaluation a trainer with evaluation set up runs first.")
@_command_options
def save(no_eval: bool, **kw: Any) -> int:
    """``save``; ``--no-eval`` skips the evaluation before it."""
    return send_command("save", command_options=CommandOptions(evaluate=False) if no_eval else None, **kw)


@click.command("abort", help=SEND_HELP["abort"])
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_command_options
def abort(yes: bool, **kw: Any) -> int:
    """``abort``, after asking unless ``--yes``."""
    return send_command("abort", confirm=not yes, **kw)


@click.command("set", help=SEND_HELP["set"])
@_command_options
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
def set_knobs(assignments: tuple[str, ...], **kw: Any) -> int:
    """``set NAME=VALUE ...``: checked against the job's knobs before anything is sent
    (exit 7 for a refusal, which queues nothing)."""
    return send_command("set", changes=[parse_assignment(a) for a in assignments], **kw)


def send_command(
    verb: str,
    *,
    job: str,
    wait: bool,
    timeout: float,
    as_json: bool,
    key: str | None,
    channel: str,
    jobs_dir: str | None,
    remote: str | None,
    token: str | None,
    ray: str | None,
    confirm: bool = False,
    command_options: CommandOptions | None = None,
    changes: list[KnobChange] | None = None,
) -> int:
    """Queue one command; with ``wait`` follow its receipt to a final state. A ``set``
    carries its knob ``changes`` (checked by :meth:`JobHandle.set` first)."""
    command = CLI_VERBS[verb]
    reach = options.reach_timeout(ray)
    with open_job(job, jobs_dir=jobs_dir, channel=channel, remote=remote, token=token, ray=ray, timeout=reach) as handle:
        if handle.channel == framework_jobs.CHANNEL and key is not None:
            raise UsageError(f"job {handle.job_id} runs {framework_jobs.WHAT}, which takes no idempotency key; send it without --key")
        if wait:
            handle.check_followable(command)  # before anything is sent
        if confirm:
            handle.check_controllable()  # a dead job is not worth a question
            _confirm_abort(handle.job_id)
        key = key or new_key()
        try:
            entry = handle.set(changes or [], key=key) if command == Command.SET else handle.send(command, key=key, options=command_options)
        except OutcomeUnknown as exc:
            if as_json:
                print_json({"job_id": handle.job_id, "command": exc.command, "key": exc.key, "state": "unknown", "error": str(exc)})
            raise
        except KeyboardInterrupt:
            again = f"Send it again with --key {key} to learn its receipt (the same key never queues twice)"
            if handle.channel == framework_jobs.CHANNEL:
                again = f"It keeps no receipt: check `forgather control status {handle.job_id}` before sending it again"
            raise Interrupted(f"interrupted while sending {command.value} to job {handle.job_id}; it may have reached the job. {again}") from None
        if State.parse(entry.state) == State.REJECTED:
            _emit(entry, as_json)
            return EXIT_FAILED
        try:  # sent already: a Ctrl-C from here on says it stays, as one while waiting does
            for notice in (handle.stall_notice(command), handle.no_control_notice()):
                if notice is not None:
                    click.echo(printable(f"warning: {notice}"), err=True)
            if not wait:
                if as_json:
                    print_json(encode(entry))
                else:
                    click.echo(printable(_queued_line(handle, command, entry)))
                return EXIT_OK
            final = _wait(handle, command, entry, timeout, show_progress=not as_json)
        except KeyboardInterrupt:
            raise _left(handle, command, entry) from None
    _emit(final, as_json)
    done = State.parse(final.state) == State.COMPLETED or framework_jobs.followed_to_end(final)
    return EXIT_OK if done else EXIT_FAILED


def _queued_line(handle: JobHandle, command: Command, entry: Receipt) -> str:
    if handle.channel == framework_jobs.CHANNEL:
        return framework_jobs.acknowledged_line(entry)
    how = "dropped in its inbox" if handle.channel == "file" else "queued"
    if handle.state == JobState.STARTING:
        how = "dropped in its inbox (the job is starting; rank 0 takes it once its control plane is up)"
    elif handle.state == JobState.UNCONTROLLED:
        how = "dropped in its inbox (no control is attached to the job yet: it applies only if the script starts a Controller)"
    return (
        f"{command.value} {how} on job {handle.job_id} as {entry.id} (key {entry.key}); "
        f"follow it with `forgather control status {handle.job_id}` (or pass --wait)"
    )


def _confirm_abort(job_id: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to abort job {job_id} without confirmation (stdin is not a terminal); pass --yes")
    if not click.confirm(f"Abort job {job_id} now? It saves nothing and ends 'aborted'", default=False, err=True):
        raise click.exceptions.Exit(EXIT_FAILED)


def _wait(handle: JobHandle, command: Command, entry: Receipt, timeout: float, *, show_progress: bool) -> Receipt:
    seen: list[Receipt] = [entry]
    spinner = None
    if show_progress and sys.stderr.isatty():
        from . import render

        spinner = render.console(stderr=True).status(f"waiting for {command.value} ({entry.id}) on job {handle.job_id}")

    told = [handle.stall is not None]  # said already when it was sent
    told_no_control = [handle.state == JobState.UNCONTROLLED]
    looked = [time.monotonic()]

    def on_poll(e: Receipt | None) -> None:
        if time.monotonic() - looked[0] > STALL_LOOK_EVERY and handle.info is not None:
            looked[0] = time.monotonic()
            handle.refresh()
            if handle.stall is not None and not told[0]:
                told[0] = True
                notice = handle.stall_notice(command)
                click.echo(printable(f"warning: while waiting: {notice}"), err=True)
            if handle.state == JobState.UNCONTROLLED and not told_no_control[0]:
                told_no_control[0] = True
                click.echo(printable(f"warning: while waiting: {handle.no_control_notice()}"), err=True)
        if e is None:
            return
        seen.append(e)
        if spinner is not None:
            at = f" at step {e.step}" if e.step is not None else ""
            stalled = " (the job is stalled)" if handle.stall is not None else ""
            spinner.update(f"{command.value} ({e.id}) on job {handle.job_id}: {e.state}{at}{stalled}")

    try:
        if spinner is not None:
            spinner.start()
        return handle.wait(str(entry.id), key=entry.key, timeout=timeout, on_poll=on_poll, command=command)
    except KeyboardInterrupt:
        raise _left(handle, command, seen[-1]) from None
    finally:
        if spinner is not None:
            spinner.stop()


def _left(handle: JobHandle, command: Command, last: Receipt) -> Interrupted:
    """Ctrl-C once the command is sent: it stays with the job, in the state last seen."""
    return Interrupted(
        f"stopped waiting; {command.value} {last.id} stays {last.state} on job {handle.job_id}: follow it with `forgather control status {handle.job_id}`"
    )


def _emit(entry: Receipt, as_json: bool) -> None:
    if as_json:
        print_json(encode(entry))
        return
    from . import render

    render.print_entry(entry)
