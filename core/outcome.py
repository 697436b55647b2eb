"""How a launched job ended, as ``forgather launch``'s exit code.

A script chained after the launcher (``forgather launch train.py && export.py``) must
be able to tell a job that ran to its end from one that was stopped, preempted,
aborted or failed: only ``finished`` is 0. The numbers sit above the small codes a
script's own failure usually has and below the 128+N of a signal; 75 is sysexits'
EX_TEMPFAIL, "try again later", which is what a preempted job asks for.
"""

from __future__ import annotations

from forgather_control.core.states import JobState

#: training ran to its end
EXIT_FINISHED = 0
#: stopped on a signal (preemption, a time limit), saved or with nothing to save yet
#: (before its first step): relaunching resumes
EXIT_PREEMPTED = 75
#: stopped by a command (stop, save-stop, pause: a paused job is not finished either)
EXIT_STOPPED = 76
#: aborted (the abort command, or a second signal): nothing saved at the end
EXIT_ABORTED = 77


def launch_exit_code(state: JobState, *, by_signal: bool, worker_code: int, passed_on: int | None = None) -> int:
    """The launcher's exit code for a job that ended in ``state``; ``by_signal``: the
    stop came from a signal (the scheduler's, or one sent to the launcher);
    ``worker_code``: torchrun's own exit code (a failure keeps it); ``passed_on``: the
    stop signal the launcher sent straight to the workers because no control was
    attached. That failure is 128+N, a shell's "ended by signal N": torchrun itself
    exits 1 on a signal, which would read as the script's own error, and 75 would say
    "relaunch to resume" of a run that saved nothing."""
    if state == JobState.FAILED and passed_on is not None:
        return 128 + passed_on
    if state == JobState.FINISHED:
        return EXIT_FINISHED
    if state in (JobState.STOPPED, JobState.REQUEUED):
        return EXIT_PREEMPTED if by_signal or state == JobState.REQUEUED else EXIT_STOPPED
    if state == JobState.PAUSED:
        return EXIT_STOPPED
    if state == JobState.ABORTED:
        return EXIT_ABORTED
    return worker_code if worker_code not in (0, EXIT_PREEMPTED, EXIT_STOPPED, EXIT_ABORTED) else 1
