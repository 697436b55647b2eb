"""What a training rank pays to import the project, before and after the split of control/ (a benchmark, not a test).

Every training rank runs ``import forgather_control.callback``. Until 6a810b1 the
contract and the client were one package, ``control/``, and that import loaded the
client too; since the split the rank loads ``core/`` only. Measured here, each in fresh
interpreters, interleaved round by round so that the neighbours' load falls on every
row alike, one warm-up round first (it writes the bytecode), median of ``--repeat``:

- baselines: the bare interpreter (``pass``) and ``import torch`` (every rank pays it
  anyway; 2 s a run, so in the first ``--torch-repeat`` rounds only);
- after (this checkout's mapped folders, copied so that edits during the run do not move
  it, or ``--after REV``): ``import forgather_control.callback``, and for context
  ``import forgather_control.client`` and ``forgather control --help``;
- before (``--before REV``, default 6a810b1, written by ``git archive`` into a temporary
  folder): the same rank import and ``forgather control --help``.

Each side runs as ``python -I -S`` with ``sys.path`` set to a temporary folder that maps
``forgather_control.<pkg>`` to that tree's top-level folders (as pyproject's
``package-dir`` does), then site-packages: the installed editable package cannot shadow
the tree (its finder is a .pth, which ``-S`` skips), and every project module loaded is
checked to come from the tree asked for. For each row: the time of the statement itself
(``perf_counter`` in the child) and the process's wall time beyond the bare
interpreter's; the peak RSS beyond the bare interpreter's (the child's ``VmHWM``: its
``ru_maxrss`` is no use, Linux carries the parent's RSS at fork across ``exec``, so every
child would read at least this script's 18 MiB); how many ``forgather_control`` modules
loaded and how many are the client's (in ``client/``, or in a package the split removed
under a name now in ``client/``: ``control.listing``, ``control.handle`` ...).

Budget (exit 1): the rank's import after costs no more time than before (a ratio of at
most ``--margin``), no more peak RSS than before beyond the typed records' share (a ratio
of at most ``--memory-margin``), and loads no client module. The margin, 1.10: nine runs
of the split itself (``--after ea95eef``) on the shared 2-core machine gave a time ratio
of 0.80-1.03 (median 0.91), the load average 1-6. The memory margin, 1.25: the typed
records the issue asked for (msgspec and the record classes, ``core/records.py``) are a
rank's on purpose: it writes its status, receipts and markers with them. They cost it
1.6 MiB (13.8 against 12.2 MiB, 1.13x, nine rounds on the quiet machine), under 1% of
what ``import torch`` costs it; 1.25 leaves room for noise, not for another library.
``--no-before`` (a clone without the history) checks the client rule only. Usage::

    python benchmarks/bench_import.py [--repeat 21] [--torch-repeat 3] [--before 6a810b1 | --no-before] [--after REV] [--margin 1.10] [--memory-margin 1.25]
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The last commit with control/ (contract and client in one package).
BEFORE = "6a810b1"
#: The line a probe prints after its statement: what it measured and loaded.
MARK = "bench-import:"
CLI_HELP = 'from forgather_control.cli.main import main\ntry:\n    main(["control", "--help"])\nexcept SystemExit:\n    pass'
RANK = "import forgather_control.callback"
TORCH = "import torch"


@dataclass(frozen=True)
class Tree:
    """One version of the project, importable as ``forgather_control`` from ``path``
    (a folder holding only the mapping) while its files live under ``files``."""

    label: str
    files: Path
    path: Path
    packages: tuple[str, ...]


@dataclass(frozen=True)
class Probe:
    """One row: ``statement`` run in a fresh interpreter that imports from ``tree``."""

    name: str
    side: str
    statement: str
    tree: Tree
    #: timed runs when fewer than --repeat (import torch: 2 s a run, and context only)
    rounds: int | None = None


@dataclass(frozen=True)
class Sample:
    wall: float
    took: float
    rss_kib: int
    modules: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Row:
    """A probe's medians and what its first timed run loaded."""

    probe: Probe
    wall: float
    took: float
    rss_kib: float
    modules: tuple[str, ...]
    client: tuple[str, ...]


def package_dirs(pyproject: str) -> dict[str, str]:
    """``package-dir`` of a pyproject.toml: sub-package of forgather_control -> top-level folder."""
    found = dict(re.findall(r'"forgather_control\.(\w+)"\s*=\s*"([\w/]+)"', pyproject))
    if not found:
        raise SystemExit("pyproject.toml maps no forgather_control package (package-dir)")
    return found


def git(*args: str) -> bytes:
    p = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=120)
    if p.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout


def checkout(rev: str, dest: Path) -> Path:
    """The mapped folders of ``rev`` written under ``dest`` (``git archive``: nothing in the repository changes)."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{rev}^{{commit}}"], capture_output=True).returncode != 0:
        raise SystemExit(f"commit {rev} is not in this clone's history: fetch it, or pass --no-before")
    dirs = package_dirs(git("show", f"{rev}:pyproject.toml").decode())
    with tarfile.open(fileobj=io.BytesIO(git("archive", rev, "pyproject.toml", *sorted(set(dirs.values()))))) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    return dest


def snapshot(dest: Path) -> Path:
    """This checkout's pyproject and mapped folders copied under ``dest``: laid out as a
    commit's are, and still while others edit the checkout during the run."""
    dirs = package_dirs((REPO / "pyproject.toml").read_text())
    dest.mkdir(parents=True)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    for folder in sorted(set(dirs.values())):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def mapped(label: str, files: Path, dest: Path) -> Tree:
    """A folder ``dest`` holding ``forgather_control/`` whose sub-packages are symlinks to
    ``files``' top-level folders, as pyproject's package-dir maps them."""
    dirs = package_dirs((files / "pyproject.toml").read_text())
    pkg = dest / "forgather_control"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, folder in dirs.items():
        (pkg / name).symlink_to(files / folder, target_is_directory=True)
    return Tree(label, files.resolve(), dest, tuple(sorted(dirs)))


def probe_code(statement: str, tree: Tree) -> str:
    """The child's program: ``sys.path`` is the tree's mapping, then this interpreter's own
    path less this repository (site-packages as its .pth files left it; ``-S`` keeps the
    child from running them again, the editable install's finder among them), the
    statement timed, then what it loaded."""
    path = [str(tree.path), *(p for p in sys.path if p and not Path(p).resolve().is_relative_to(REPO))]
    return (
        f"import sys, time\nsys.path[:] = {path!r}\n"
        "t0 = time.perf_counter()\n"
        f"{statement}\n"
        "took = time.perf_counter() - t0\n"
        "hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "mods = sorted((n, getattr(m, '__file__', None) or '') for n, m in list(sys.modules.items()) if n.startswith('forgather_control.'))\n"
        f"print({MARK!r}, repr((took, hwm, mods)), flush=True)\n"
    )


def run_once(probe: Probe, env: dict[str, str]) -> Sample:
    """One fresh interpreter: wall time as its parent sees it; peak RSS and the import's
    own time as the child saw them."""
    argv = [sys.executable, "-I", "-S", "-c", probe_code(probe.statement, probe.tree)]
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    wall = time.perf_counter() - t0
    out = p.stdout.decode(errors="replace")
    lines = [line for line in out.splitlines() if line.startswith(MARK)]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{probe.name} ({probe.side}) failed ({p.returncode}):\n{out[-3000:]}")
    took, hwm, mods = ast.literal_eval(lines[-1][len(MARK) :].strip())
    return Sample(wall, float(took), int(hwm), tuple((str(n), str(f)) for n, f in mods))


def check_files(probe: Probe, modules: tuple[tuple[str, str], ...]) -> None:
    """Every project module the probe loaded came from its own tree, not the installed package."""
    for name, file in modules:
        real = Path(os.path.realpath(file)) if file else None
        if real is None or not real.is_relative_to(probe.tree.files):
            raise SystemExit(f"{probe.name} ({probe.side}) loaded {name} from {file or '(no file)'}, not from {probe.tree.files}")


def client_modules(modules: tuple[str, ...], client_names: frozenset[str], after_packages: tuple[str, ...]) -> tuple[str, ...]:
    """The client's among ``modules``: in ``client/``, or named as a module of ``client/``
    is now, in a package the split removed (``control``)."""
    out = []
    for name in modules:
        parts = name.split(".")
        if len(parts) < 2:
            continue
        if parts[1] == "client" or (parts[1] not in after_packages and len(parts) > 2 and parts[-1] in client_names):
            out.append(name)
    return tuple(out)


def measure(probes: list[Probe], repeat: int, env: dict[str, str]) -> dict[Probe, list[Sample]]:
    """Round-robin over the probes, one warm-up round (bytecode written, page cache warm) not kept."""
    samples: dict[Probe, list[Sample]] = {p: [] for p in probes}
    for i in range(repeat + 1):
        for probe in probes:
            if probe.rounds is not None and i > probe.rounds:
                continue
            s = run_once(probe, env)
            check_files(probe, s.modules)
            if i:
                samples[probe].append(s)
    return samples


def summarize(probe: Probe, samples: list[Sample], client_names: frozenset[str], after_packages: tuple[str, ...]) -> Row:
    mods = tuple(n for n, _ in samples[0].modules)
    return Row(
        probe,
        statistics.median(s.wall for s in samples),
        statistics.median(s.took for s in samples),
        statistics.median(s.rss_kib for s in samples),
        mods,
        client_modules(mods, client_names, after_packages),
    )


def by_package(modules: tuple[str, ...]) -> str:
    """``callback 18 + core 14``: how many of ``modules`` each sub-package holds."""
    counts: dict[str, int] = {}
    for name in modules:
        package = name.split(".")[1]
        counts[package] = counts.get(package, 0) + 1
    return " + ".join(f"{package} {n}" for package, n in sorted(counts.items()))


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=21, help="timed runs of each row (after one warm-up round)")
    ap.add_argument("--before", default=BEFORE, help=f"the commit before the split (default {BEFORE})")
    ap.add_argument("--no-before", action="store_true", help="measure this checkout only (a clone without the history)")
    ap.add_argument("--after", default=None, help="a commit to measure as 'after' instead of this checkout's files")
    ap.add_argument("--torch-repeat", type=int, default=3, help="timed runs of the import torch row, in the first rounds (0: no torch row)")
    ap.add_argument("--margin", type=float, default=1.10, help="after/before ratio allowed for the rank's import time")
    ap.add_argument("--memory-margin", type=float, default=1.25, help="after/before ratio allowed for the rank's peak RSS (the typed records' share)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="bench-import-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        after_files = checkout(args.after, tmp / "after-tree") if args.after else snapshot(tmp / "after-tree")
        after = mapped(args.after or "this checkout", after_files, tmp / "after-path")
        before = None if args.no_before else mapped(args.before, checkout(args.before, tmp / "before-tree"), tmp / "before-path")
        client_names = frozenset(f.stem for f in (after.files / "client").glob("*.py") if f.stem != "__init__")
        probes = [Probe("python -c pass (interpreter start)", "baseline", "pass", after)]
        if args.torch_repeat > 0:
            probes.append(Probe(TORCH, "baseline", TORCH, after, rounds=min(args.torch_repeat, args.repeat)))
        probes += [
            Probe(RANK, "after", RANK, after),
            Probe("import forgather_control.client", "after", "import forgather_control.client", after),
            Probe("forgather control --help", "after", CLI_HELP, after),
        ]
        if before is not None:
            probes += [Probe(RANK, "before", RANK, before), Probe("forgather control --help", "before", CLI_HELP, before)]
        samples = measure(probes, args.repeat, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [summarize(p, s, client_names, after.packages) for p, s in samples.items()]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.repeat} runs of each row after a warm-up round, interleaved; medians; python -I -S, sys.path = the tree's mapping; load average {load}")
    print(f"after: {after.label}; before: {before.label if before else 'not measured (--no-before)'}")
    return report(rows, args.margin, args.memory_margin)


def report(rows: list[Row], margin: float, memory_margin: float) -> int:
    """The table of every row, then the rank's import after / before against the budget."""
    bare = rows[0]
    print(f"{'row':<36} {'side':<8} {'import s':>9} {'wall s':>7} {'wall+ s':>8} {'peak MiB':>9} {'peak+ MiB':>10} {'modules':>8} {'client':>7}")
    for row in rows:
        print(
            f"{row.probe.name:<36} {row.probe.side:<8} {row.took:>9.3f} {row.wall:>7.3f} {row.wall - bare.wall:>8.3f} "
            f"{mib(row.rss_kib):>9} {mib(row.rss_kib - bare.rss_kib):>10} {len(row.modules):>8} {len(row.client):>7}"
        )
    print("import s: the statement alone, timed in the child; wall+, peak+: beyond the bare interpreter's; modules: forgather_control's loaded")

    by = {(row.probe.side, row.probe.statement): row for row in rows}
    rank, old, torch = by[("after", RANK)], by.get(("before", RANK)), by.get(("baseline", TORCH))
    over = []
    if rank.client:
        over.append(f"the rank's import loads client modules: {', '.join(rank.client)}")
    if old is not None:
        print()
        print(f"the rank's import ({RANK}), after / before; budget: time ratio <= {margin:.2f}, memory ratio <= {memory_margin:.2f}")
        print(f"{'measure':<28} {'before':>8} {'after':>8} {'ratio':>6}  budget")
        checks = [
            ("import s (in the child)", old.took, rank.took, ".3f", margin),
            ("wall s beyond bare", old.wall - bare.wall, rank.wall - bare.wall, ".3f", None),
            ("peak MiB beyond bare", (old.rss_kib - bare.rss_kib) / 1024, (rank.rss_kib - bare.rss_kib) / 1024, ".2f", memory_margin),
            ("project modules loaded", len(old.modules), len(rank.modules), "d", None),
        ]
        for name, b, a, fmt, limit in checks:
            ratio = a / b if b > 0 else float("inf")
            verdict = ("ok" if ratio <= limit else "OVER") if limit is not None else "-"
            if limit is not None and ratio > limit:
                over.append(f"{name}: {a:{fmt}} after against {b:{fmt}} before ({ratio:.2f}x)")
            print(f"{name:<28} {b:>8{fmt}} {a:>8{fmt}} {ratio:>6.2f}  {verdict}")
        print(f"{'client modules loaded':<28} {len(old.client):>8} {len(rank.client):>8} {'':>6}  must be 0 after")
        for side, row in (("before", old), ("after", rank)):
            print(f"{side}, the rank's modules by package: {by_package(row.modules)}")
        print(f"before, the rank loaded the client's {', '.join(n.removeprefix('forgather_control.') for n in old.client) or 'nothing'}")
    if torch is not None and torch.took > 0:
        share = (rank.rss_kib - bare.rss_kib) / max(torch.rss_kib - bare.rss_kib, 1)
        print(f"for scale: the rank's import is {rank.took / torch.took:.1%} of import torch's time and {share:.1%} of its memory")
    if over:
        print(f"FAIL: {'; '.join(over)}")
        return 1
    than = f"costs no more time (x{margin:.2f}) and peak RSS (x{memory_margin:.2f}) than before and " if old is not None else ""
    print(f"PASS: the rank's import {than}loads no client module")
    return 0


if __name__ == "__main__":
    sys.exit(main())
