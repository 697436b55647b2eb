"""The only torch.distributed code in forgather-control.

At a check every rank makes exactly one collective: an all-reduce (MAX) of a small
int64 tensor on a dedicated gloo group, so NCCL and CUDA streams are never touched.
Rank 0 fills the command and the next check step; any rank may raise the signal level.
No pickle, no ``broadcast_object_list``; the HTTP thread and signal handlers never get
here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Tensor layout; keep in one place so every rank agrees on it.
FIELDS = ("seq", "command", "arg", "signal", "next_check")


@dataclass(frozen=True)
class Proposal:
    seq: int = 0
    command: int = 0  # Command.code, 0 = none
    arg: int = 0  # rank 0's ledger sequence number of the command, for tracing
    signal: int = 0  # 0 none, 1 first signal (save and stop), 2 escalate (stop now)
    next_check: int = 0  # step of the next check, chosen by rank 0

    def as_list(self) -> list[int]:
        return [self.seq, self.command, self.arg, self.signal, self.next_check]


class Agreement:
    """One all-reduce(MAX) per check on a gloo group made once, at train begin.

    ``group`` may be given (tests); otherwise a new gloo group over all ranks is made,
    which is itself a collective: every rank must construct its Agreement at the same
    point (Controller does so at its first step).
    """

    def __init__(self, group: object | None = None) -> None:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised; cannot agree across ranks")
        self._dist = dist
        self._torch = torch
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.group = group if group is not None else dist.new_group(backend="gloo")
        self._buf = torch.zeros(len(FIELDS), dtype=torch.int64)
        #: Every exchange this rank made, as agreed; tests compare ranks with it.
        self.trace: list[tuple[int, ...]] | None = None

    def exchange(self, proposal: Proposal) -> Proposal:
        buf = self._buf
        values = proposal.as_list()
        for i, v in enumerate(values):
            buf[i] = v
        self._dist.all_reduce(buf, op=self._dist.ReduceOp.MAX, group=self.group)
        agreed = Proposal(*(int(x) for x in buf.tolist()))
        if self.trace is not None:
            self.trace.append(tuple(agreed.as_list()))
        return agreed


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else the launcher's
    environment, else a single process. Reading the environment needs no torch."""
    import os
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except Exception:  # pragma: no cover - a half-imported torch
            pass
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1
