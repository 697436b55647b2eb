"""The only torch.distributed code in forgather-control.

At a check every rank makes exactly one collective: an all-reduce (MAX) of a small
int64 tensor on a dedicated gloo group, so NCCL and CUDA streams are never touched. Two
slots per rank carry each rank's own time per step and its node to rank 0 (stragglers).
Rank 0 fills the command and the next check step; any rank may raise the signal level
or vote that its loss is not finite (the ``nan`` guard: callback/guarding.py).
MAX is the one reduction that lets rank 0's fields through (the others send zeros) and
lets any rank raise a flag, so one collective carries everything. No pickle, no
``broadcast_object_list``; the HTTP thread and signal handlers never get here.

Sync, not async (measured by ``benchmarks/bench_agreement.py`` on 2 busy cores): a
synchronous int64[5] all-reduce costs 300-1200 us, an async one issued at a check and
waited for a step later 50-110 us. At about one check per second both stay well under 1%
of a 10 ms step, while async would apply every command one check later and keep a
buffer in flight across training steps; the simpler synchronous call is used.

Tracing: every exchange, as agreed, is appended to ``Agreement.trace`` (a check is
about once a second, so this is cheap); with ``FORGATHER_TRACE_AGREEMENT=<dir>`` each
rank writes its trace to ``<dir>/rank-<global rank>.json`` when the Controller
closes, so a test can assert that every rank made the same sequence of collectives.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from forgather_control.core.env import ENV_RANK, ENV_TRACE_AGREEMENT, ENV_WORLD_SIZE
from forgather_control.core.records import AgreementTrace, encode

log = logging.getLogger(__name__)

#: Tensor layout; keep in one place so every rank agrees on it.
FIELDS = ("seq", "command", "arg", "signal", "next_check", "flags", "guard")
#: A trace longer than this keeps its first entries only (days of checks).
TRACE_LIMIT = 1_000_000


@dataclass(frozen=True)
class Proposal:
    seq: int = 0
    command: int = 0  # Command.code, 0 = none
    arg: int = 0  # rank 0's ledger sequence number of the command, for tracing
    signal: int = 0  # 0 none, 1 first signal (save and stop), 2 escalate (stop now)
    next_check: int = 0  # step of the next check, chosen by rank 0
    flags: int = 0  # the command's options, as bits (actions.FLAG_*)
    guard: int = 0  # any rank's nan vote: (rank + 1) * 4 + what it saw (guarding.decode_vote)

    def as_list(self) -> list[int]:
        return [self.seq, self.command, self.arg, self.signal, self.next_check, self.flags, self.guard]


class Agreement:
    """One all-reduce(MAX) per check on a gloo group made once, at train begin.

    ``group`` may be given (tests); otherwise a new gloo group over all ranks is made,
    which is itself a collective: every rank must construct its Agreement at the same
    point (the integrations do it at train begin, the Controller at its first step
    otherwise).
    """

    def __init__(self, group: object | None = None, *, node: int = 0) -> None:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised; cannot agree across ranks")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if group is None:
            # Dedicated, even when the default group is gloo: the user's own async
            # collectives on the default group can then never interleave with ours.
            group = dist.new_group(backend="gloo")
        self.group = group
        # The fields, then two slots per rank (its own time per step in microseconds, its
        # node + 1), each rank filling its own: MAX hands rank 0 every rank's (straggle.py).
        self._buf = torch.zeros(len(FIELDS) + 2 * self.world_size, dtype=torch.int64)
        self._mine = len(FIELDS) + 2 * self.rank
        self._node = node + 1
        #: after an exchange: (own microseconds per step, node) of every rank
        self.per_rank: list[tuple[int, int]] = []
        self._op = dist.ReduceOp.MAX
        #: Every exchange this rank made, as agreed (seq, command, arg, signal, next_check).
        self.trace: list[tuple[int, ...]] = []

    def exchange(self, proposal: Proposal, *, own_us: int = 0) -> Proposal:
        buf = self._buf
        buf.zero_()
        for i, v in enumerate(proposal.as_list()):
            buf[i] = v
        buf[self._mine] = max(0, own_us)
        buf[self._mine + 1] = self._node
        self._dist.all_reduce(buf, op=self._op, group=self.group)
        values = buf.tolist()
        agreed = tuple(values[: len(FIELDS)])
        if self.rank == 0:
            slots = values[len(FIELDS) :]
            self.per_rank = [(slots[i], slots[i + 1] - 1) for i in range(0, len(slots), 2)]
        if len(self.trace) < TRACE_LIMIT:
            self.trace.append(agreed)
        return Proposal(*agreed)

    def close(self) -> None:
        """Shut the dedicated group down (a local operation): its gloo threads must not
        outlive the training, or a process exiting while a peer still works (rank 0
        finishing a save) can abort in the group's destructor."""
        group, self.group = self.group, None
        if group is None:
            return
        try:
            if self._dist.is_initialized():
                self._dist.destroy_process_group(group)
        except Exception as exc:  # noqa: BLE001 - never fail a job's exit over this
            log.debug("could not destroy the agreement group: %s", exc)

    def dump_trace(self, directory: str | os.PathLike[str] | None = None, *, ended: AgreementTrace | None = None) -> Path | None:
        """Write this rank's trace to ``directory`` (default ``$FORGATHER_TRACE_AGREEMENT``);
        ``ended`` adds how the run ended (its trace and fields are this rank's)."""
        directory = directory or os.environ.get(ENV_TRACE_AGREEMENT)
        if not directory:
            return None
        return dump_trace(directory, self.rank, self.trace, ended=ended)


def dump_trace(directory: str | os.PathLike[str], rank: int, trace: list[tuple[int, ...]], *, ended: AgreementTrace | None = None) -> Path:
    record = msgspec.structs.replace(ended or AgreementTrace(rank=rank, fields=[], trace=[]), rank=rank, fields=list(FIELDS), trace=[list(t) for t in trace])
    path = Path(directory) / f"rank-{int(rank)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(encode(record)))
    os.replace(tmp, path)
    return path


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else the launcher's
    environment, else a single process. Reading the environment needs no torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except Exception:  # noqa: BLE001 - a half-imported torch  # pragma: no cover
            pass
    try:
        return int(os.environ.get(ENV_RANK, "0")), int(os.environ.get(ENV_WORLD_SIZE, "1"))
    except ValueError:
        return 0, 1


def distributed_ready() -> bool:
    """True when torch.distributed is imported and initialised (no import forced)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return False
    try:
        return bool(dist.is_available() and dist.is_initialized())
    except Exception:  # noqa: BLE001 - a half-imported torch  # pragma: no cover
        return False
