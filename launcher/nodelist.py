"""SLURM's compressed host lists (``node[01-04,07],gpu-a[1-2]``), expanded in pure Python.

Why not ``scontrol show hostnames``: it needs SLURM's client tools and a reachable
controller on the compute node, and it forks a process on every launch; the format is
small and documented, so the launcher expands it itself and the tests pin it.

Rules (those of SLURM's hostlist): items are separated by commas outside brackets; a
bracket holds comma-separated numbers or ``lo-hi`` ranges; the width of ``lo`` sets the
zero padding (``[08-10]`` -> 08 09 10, ``[8-10]`` -> 8 9 10); several bracket groups in
one item multiply (``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1 r2n2); order is kept, as SLURM
keeps it, and so is any suffix after a bracket.
"""

from __future__ import annotations

import re

__all__ = ["NodeListError", "expand_nodelist", "first_node"]

#: A generous bound: a typo like ``[1-99999999]`` must not eat the machine's memory.
MAX_NODES = 1_000_000

_RANGE = re.compile(r"\A(\d+)(?:-(\d+))?\Z")


class NodeListError(ValueError):
    """A node list SLURM would not have produced; the message quotes it."""


def expand_nodelist(text: str) -> list[str]:
    """Every host name in a SLURM node list, in order, duplicates kept."""
    if not isinstance(text, str) or not text.strip():
        raise NodeListError(f"empty SLURM node list {text!r}")
    hosts: list[str] = []
    for item in _split_top(text.strip(), text):
        hosts.extend(_expand_item(item, text))
        if len(hosts) > MAX_NODES:
            raise NodeListError(f"SLURM node list {text!r} expands to more than {MAX_NODES} names")
    return hosts


def first_node(text: str) -> str:
    """The first host of a node list: the conventional rendezvous host (node rank 0)."""
    return expand_nodelist(text)[0]


def _split_top(text: str, whole: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise NodeListError(f"nested '[' in SLURM node list {whole!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise NodeListError(f"unbalanced ']' in SLURM node list {whole!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise NodeListError(f"unclosed '[' in SLURM node list {whole!r}")
    items.append(text[start:])
    for item in items:
        if not item.strip():
            raise NodeListError(f"empty item in SLURM node list {whole!r}")
    return [item.strip() for item in items]


def _expand_item(item: str, whole: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        if "]" in item:
            raise NodeListError(f"unbalanced ']' in SLURM node list {whole!r}")
        return [item]
    close_at = item.index("]", open_at)
    prefix, body, rest = item[:open_at], item[open_at + 1 : close_at], item[close_at + 1 :]
    tails = _expand_item(rest, whole) if rest else [""]
    out = []
    for number in _expand_ranges(body, whole):
        out.extend(prefix + number + tail for tail in tails)
    return out


def _expand_ranges(body: str, whole: str) -> list[str]:
    numbers: list[str] = []
    for part in body.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise NodeListError(f"bad range {part!r} in SLURM node list {whole!r}; expected N or LO-HI")
        lo_text, hi_text = m.group(1), m.group(2)
        if hi_text is None:
            numbers.append(lo_text)
            continue
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo:
            raise NodeListError(f"range {part!r} runs backwards in SLURM node list {whole!r}")
        if hi - lo + 1 > MAX_NODES:
            raise NodeListError(f"range {part!r} in SLURM node list {whole!r} is too large")
        width = len(lo_text) if lo_text.startswith("0") else 0
        numbers.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return numbers
