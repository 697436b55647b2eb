"""At scale, on paper: what the agreement and the jobs directory cost at 64, 512 and 4,096 ranks.

Not a test: ``python benchmarks/sim_scale.py`` (a few minutes; ``--quick`` under one).
This 2-core machine holds a few dozen control-only ranks, not thousands, so the script
measures what it can here and scales it with the model written in docs/design-notes.md
("At scale"). Four parts, each printed as a table:

- **collective**: control-only rank processes (``python -m torch.distributed.run
  --standalone --nproc-per-node N``, gloo on loopback; above 2 ranks oversubscribed) make
  the real :class:`~forgather_control.callback.agreement.Agreement` (its ``new_group``:
  time and the sockets it opens) and then, round by round after a barrier, interleaved:
  ``start`` + ``wait`` at once (the whole collective: what a resolution waits when the lag
  is too short), ``start`` alone (what the check step pays when the lag is enough), the
  synchronous ``exchange``, and a bare all-reduce(MAX) of only the fields (8 int64) and of
  the tensor a 4,096-rank job sends (8,216 int64, 64 KiB). Medians per rank; the slowest
  rank's median is reported. Growth is fitted against ``log2(N)`` and ``N - 1``.
- **rank0**: rank 0's own work at a check's resolution for N = 8 ... 4,096 ranks, in this
  process: ``Agreement._agreed`` (the answer read out of the tensor) and
  ``Controller._compare_ranks`` (every rank's time compared, the status table), both on the
  training thread; and status.json's size with N ranks' table (written every 2 s).
- **files**: several "nodes", each its own ``forgather launch --nnodes K --node-rank i``
  (static rendezvous on 127.0.0.1) running the plain loop, a few ranks each, at the
  default cadences. The jobs directory is polled (every 50 ms: size, mtime and inode of
  every entry) over a window: the files there, the files created, and each file's
  replacements and appends per second, grouped by name pattern and scaled per job, per
  node and per rank to 512 nodes x 8 ranks.
- **listing**: the job's folder as ``list``/``status`` read it (``client.listing.load``:
  every node record and status.json) with 8, 64 and 512 node records and rank 0's status
  at the matching rank count, best of 5.

Exits 1 when a part could not run (a launcher failed, a rank count did not start); the
"breaks at" figures are the design notes' reading of the tables, not budgets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAIN = ROOT / "examples" / "trainer_control" / "plain_loop.py"
FORGATHER = [sys.executable, "-m", "forgather_control.cli.main"]
#: The job this simulation scales to: 512 nodes x 8 ranks.
TARGET_NODES, TARGET_PER_NODE = 512, 8
TARGET_RANKS = TARGET_NODES * TARGET_PER_NODE
SCALES = (64, 512, TARGET_RANKS)
_LEAKS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FORGATHER_JOB_ID")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKS and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min), {os.cpu_count()} cores"


# -- collective: a worker under torchrun ----------------------------------------------------------
def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def worker(out: str, rounds: int) -> None:
    import torch
    import torch.distributed as dist

    from forgather_control.callback.agreement import FIELDS, Agreement, Proposal
    from forgather_control.core.knobs import SLOTS

    fds_start = _fds()
    t = time.perf_counter()
    dist.init_process_group("gloo")
    init_s = time.perf_counter() - t
    rank, world = dist.get_rank(), dist.get_world_size()
    fds0 = _fds()
    dist.barrier()
    # The group the Agreement makes when the job's own is not gloo (NCCL on GPUs: the
    # case at thousands of ranks), made here explicitly so a job whose default group is
    # gloo (this one) measures it too; then the real Agreement on it.
    t = time.perf_counter()
    group = dist.new_group(backend="gloo")
    group_s = time.perf_counter() - t
    fds1 = _fds()
    agreement = Agreement(group, node=0)
    small = torch.zeros(len(FIELDS), dtype=torch.int64)
    at_target = torch.zeros(len(FIELDS) + SLOTS + 2 * TARGET_RANKS, dtype=torch.int64)
    times: dict[str, list[float]] = {k: [] for k in ("full_us", "issue_us", "wait_after_us", "sync_us", "fields_us", "target_size_us")}
    seq = 0

    def timed(key: str, fn) -> object:
        dist.barrier(group=agreement.group)  # every rank starts together: no arrival skew
        t0 = time.perf_counter()
        result = fn()
        times[key].append((time.perf_counter() - t0) * 1e6)
        return result

    for _ in range(rounds):
        seq += 1
        timed("full_us", lambda seq=seq: agreement.start(Proposal(seq=seq), own_us=1000).wait())
        seq += 1
        pending = timed("issue_us", lambda seq=seq: agreement.start(Proposal(seq=seq), own_us=1000))
        time.sleep(0.005)  # the steps of the lag
        t0 = time.perf_counter()
        pending.wait()  # type: ignore[attr-defined]
        times["wait_after_us"].append((time.perf_counter() - t0) * 1e6)
        seq += 1
        timed("sync_us", lambda seq=seq: agreement.exchange(Proposal(seq=seq), own_us=1000))
        timed("fields_us", lambda: dist.all_reduce(small, op=dist.ReduceOp.MAX, group=agreement.group))
        timed("target_size_us", lambda: dist.all_reduce(at_target, op=dist.ReduceOp.MAX, group=agreement.group))
    mine = {k: statistics.median(v) for k, v in times.items()}
    mine.update(init_s=init_s, group_s=group_s, group_fds=float(fds1 - fds0), init_fds=float(fds0 - fds_start), fds=float(fds1))
    keys = sorted(mine)
    vec = torch.tensor([mine[k] for k in keys], dtype=torch.float64)
    lo = vec.clone()
    dist.all_reduce(vec, op=dist.ReduceOp.MAX)
    lo.neg_()
    dist.all_reduce(lo, op=dist.ReduceOp.MAX)
    agreement.close()
    try:  # shut by close when the Agreement owns the groups it is given
        dist.destroy_process_group(group)
    except (RuntimeError, ValueError):
        pass
    dist.destroy_process_group()
    if rank == 0:
        result = {
            "world_size": world,
            "tensor_int64": len(FIELDS) + SLOTS + 2 * world,
            "slowest": dict(zip(keys, vec.tolist(), strict=True)),
            "fastest": dict(zip(keys, (-lo).tolist(), strict=True)),
        }
        Path(out).write_text(json.dumps(result))


def run_collective(nproc: int, rounds: int, *, lazy: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        extra = {"TORCH_GLOO_LAZY_INIT": "1"} if lazy else {}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            __file__,
            "--worker",
            str(out),
            "--rounds",
            str(rounds),
        ]
        t = time.perf_counter()
        done = subprocess.run(cmd, env=_env(**extra), capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"{nproc} ranks failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(out.read_text())
        result["wall_s"] = wall
        result["lazy"] = lazy
        return result


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, r^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    ss = sum((y - my) ** 2 for y in ys)
    res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, (1 - res / ss) if ss else 1.0


def report_collective(results: list[dict]) -> None:
    print("\n## collective: the check's all-reduce on gloo, loopback, control-only ranks")
    print(f"({_load()}; above {os.cpu_count()} ranks the cores are oversubscribed)\n")
    print(
        "| ranks | tensor int64 | start+wait us | start us | wait after 5 ms us | exchange us | 8 int64 us | 8,216 int64 us"
        " | new_group s | its sockets | default group's |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        s = r["slowest"]
        lazy = " (lazy)" if r["lazy"] else ""
        print(
            f"| {r['world_size']}{lazy} | {r['tensor_int64']} | {s['full_us']:.0f} | {s['issue_us']:.0f} | {s['wait_after_us']:.0f} | {s['sync_us']:.0f} | "
            f"{s['fields_us']:.0f} | {s['target_size_us']:.0f} | {s['group_s']:.3f} | {s['group_fds']:.0f} | {s['init_fds']:.0f} |"
        )
    eager = [r for r in results if not r["lazy"]]
    if len(eager) >= 3:
        ns = [float(r["world_size"]) for r in eager]
        ys = [r["slowest"]["full_us"] for r in eager]
        a1, b1, r1 = fit([math.log2(n) for n in ns], ys)
        a2, b2, r2 = fit([n - 1 for n in ns], ys)
        print(f"\nfit start+wait: {a1:.0f} + {b1:.0f}*log2(N) us (r2 {r1:.3f});  {a2:.0f} + {b2:.0f}*(N-1) us (r2 {r2:.3f})")
        per_hop = [r["slowest"]["full_us"] / (2 * (r["world_size"] - 1)) for r in eager]
        print("per ring hop (start+wait / 2(N-1)): " + ", ".join(f"N={r['world_size']}: {h:.0f} us" for r, h in zip(eager, per_hop, strict=True)))


# -- rank 0's work at a resolution ---------------------------------------------------------------
def run_rank0(repeat: int = 20) -> list[dict]:
    import types

    import torch
    import torch.distributed as dist

    from forgather_control.callback import Controller
    from forgather_control.callback.agreement import _RANKS, Agreement
    from forgather_control.core.records import encode

    rows = []
    # A world of one in this process: the real Agreement, whose answer is read out of a
    # tensor as wide as n ranks make it (``_agreed`` reads every rank's slots it is given).
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    ag = Agreement(node=0)
    with tempfile.TemporaryDirectory() as jobs:
        ctl = Controller(job_id="sim-rank0", jobs_dir=jobs, enable_http=False, signals=(), rank=0, world_size=2)
        ctl._solo = False  # as in a job of several ranks (never started: nothing served)
        for n in (8, 64, 512, 4096):
            buf = torch.zeros(_RANKS + 2 * n, dtype=torch.int64)
            for r in range(n):  # every rank's slots as the all-reduce hands them to rank 0
                buf[_RANKS + 2 * r] = 10_000 + (r % 7) * 10
                buf[_RANKS + 2 * r + 1] = r // 8 + 1
            t = time.perf_counter()
            for _ in range(repeat):
                ag._agreed(buf)
            agreed_us = (time.perf_counter() - t) / repeat * 1e6
            ctl._agreement = types.SimpleNamespace(per_rank=ag.per_rank)
            t = time.perf_counter()
            for k in range(repeat):
                ctl._compare_ranks(k)
            compare_us = (time.perf_counter() - t) / repeat * 1e6
            status = json.dumps(encode(ctl.status()), indent=1, sort_keys=True, default=str).encode()  # as write_json_atomic
            rows.append({"ranks": n, "agreed_us": agreed_us, "compare_us": compare_us, "status_bytes": len(status)})
        ctl._agreement = None
        ctl.close()
    ag.close()
    dist.destroy_process_group()
    return rows


def report_rank0(rows: list[dict]) -> None:
    print(f"\n## rank0: rank 0's work at a check's resolution, on its training thread ({_load()})\n")
    print("| ranks | Agreement._agreed us | Controller._compare_ranks us | both, share of a 1 s check interval | status.json bytes |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        both = r["agreed_us"] + r["compare_us"]
        print(f"| {r['ranks']} | {r['agreed_us']:.0f} | {r['compare_us']:.0f} | {both / 1e6:.3%} | {r['status_bytes']:,} |")


# -- files: several nodes as separate launchers ---------------------------------------------------
def _snapshot(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """path -> (kind, inode, size, mtime_ns) of every entry under ``root``."""
    out: dict[str, tuple[str, int, int, int]] = {}
    stack = [str(root)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                    kind = "dir"
                elif e.is_file(follow_symlinks=False):
                    kind = "file"
                else:
                    kind = "other"
                out[os.path.relpath(e.path, root)] = (kind, st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def pattern(rel: str, job_id: str) -> str:
    """A path's name with its numbers and nonces made generic: one line per kind of file."""
    rel = rel.replace(job_id, "JOB")
    rel = re.sub(r"@[0-9a-zA-Z_.-]+$", "@NONCE", rel)
    rel = re.sub(r"^(JOB/(?:.*/)?)\.tmp[^/]*$", r"\1.tmp*", rel) if "/.tmp" in rel or rel.startswith(".tmp") else rel
    return re.sub(r"\d+", "N", rel)


def run_files(nodes: int, per_node: int, window: float, keep: Path | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="sim-scale-"))
    jobs, out = tmp / "jobs", tmp / "out"
    job_id = "sim-scale"
    port = _free_port()
    launchers: list[subprocess.Popen] = []
    logs = []
    try:
        common = ["--nnodes", str(nodes), "--nproc-per-node", str(per_node), "--master-addr", "127.0.0.1", "--master-port", str(port)]
        for i in reversed(range(nodes)):
            log = open(tmp / f"launcher-{i}.log", "wb")  # closed in finally
            logs.append(log)
            argv = [
                *FORGATHER,
                "launch",
                "--jobs-dir",
                str(jobs),
                "--job-id",
                job_id,
                *common,
                "--node-rank",
                str(i),
                str(PLAIN),
                "--step-time",
                "0.05",
                "--output-dir",
                str(out),
            ]
            if i == nodes - 1 and i > 0 and STRACE:  # one node other than node 0: its launcher and ranks' file operations
                argv = [STRACE, "-f", "--seccomp-bpf", "-ttt", "-y", "-qq", "-e", f"trace={','.join(TRACED)}", "-o", str(tmp / "strace.txt"), *argv]
            launchers.append(subprocess.Popen(argv, env=_env(FORGATHER_JOBS_DIR=str(jobs)), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        status = jobs / job_id / "status.json"
        deadline = time.monotonic() + 300
        while True:
            if any(p.poll() is not None for p in launchers):
                raise RuntimeError("a launcher exited before the job ran:\n" + "\n".join((tmp / f"launcher-{i}.log").read_text()[-2000:] for i in range(nodes)))
            try:
                st = json.loads(status.read_text())
                if st.get("state") == "running" and (st.get("step") or 0) >= 20:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the job did not reach step 20 in 300 s")
            time.sleep(0.2)
        time.sleep(3.0)  # past the start: the steady state
        first = prev = _snapshot(jobs)
        writes: dict[str, int] = {}
        appended: dict[str, int] = {}
        glimpsed: set[str] = set()
        t0 = time.monotonic()
        wall0 = time.time()
        polls = 0
        while time.monotonic() - t0 < window:
            time.sleep(0.05)
            now = _snapshot(jobs)
            polls += 1
            for rel, (kind, ino, size, mtime) in now.items():
                old = prev.get(rel)
                if kind == "dir":
                    continue
                if "/.tmp" in "/" + rel:
                    glimpsed.add(rel)
                    continue
                if old is None or old[1] != ino:
                    writes[rel] = writes.get(rel, 0) + (old is not None or rel not in first)
                elif (old[2], old[3]) != (size, mtime):
                    appended[rel] = appended.get(rel, 0) + 1
            prev = now
        elapsed = time.monotonic() - t0
        wall1 = wall0 + elapsed
        step_status = json.loads(status.read_text())
        snap = tmp / "snapshot"
        shutil.copytree(jobs / job_id, snap / job_id, symlinks=True, ignore=shutil.ignore_patterns("*.fifo", "*.dump", ".tmp*"))
        # stop the job the way a person does
        subprocess.run(
            [*FORGATHER, "control", "stop", job_id, "--jobs-dir", str(jobs), "--wait", "--timeout", "120"], env=_env(), capture_output=True, timeout=180
        )
        for p in launchers:
            p.wait(180)
        final = _snapshot(jobs)
    finally:
        for p in launchers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
    ranks = nodes * per_node
    groups: dict[str, dict] = {}
    for rel, (kind, _ino, size, _m) in prev.items():  # the files there at the window's end
        if kind == "dir" or "/.tmp" in "/" + rel:
            continue
        g = groups.setdefault(pattern(rel, job_id), {"files": 0, "bytes": 0, "replaced": 0, "appended": 0, "created_in_window": 0, "kind": kind})
        g["files"] += 1
        g["bytes"] += size
    for rel in set(first) | set(prev):
        kind = (prev.get(rel) or first.get(rel))[0]  # type: ignore[index]
        if kind == "dir" or "/.tmp" in "/" + rel:
            continue
        g = groups.setdefault(pattern(rel, job_id), {"files": 0, "bytes": 0, "replaced": 0, "appended": 0, "created_in_window": 0, "kind": kind})
        g["replaced"] += writes.get(rel, 0)
        g["appended"] += appended.get(rel, 0)
        g["created_in_window"] += rel not in first
    result = {
        "nodes": nodes,
        "per_node": per_node,
        "ranks": ranks,
        "window_s": elapsed,
        "polls": polls,
        "steps_in_status": step_status.get("step"),
        "groups": groups,
        "temp_glimpsed": len(glimpsed),
        "after_end": sorted(pattern(rel, job_id) for rel, v in final.items() if v[0] != "dir"),
        "traced_node": _traced(tmp / "strace.txt", jobs, job_id, wall0, wall1) if STRACE and nodes > 1 else None,
        "snapshot": str(snap),
        "tmp": str(tmp),
    }
    if keep is None:
        result["cleanup"] = True
    return result


#: strace, when there, counts one node's file operations in the jobs directory (reads too).
STRACE = shutil.which("strace")
TRACED = ("openat", "getdents64", "rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdirat", "fsync", "newfstatat", "statx")
_TRACE_LINE = re.compile(r"^\d+\s+(\d+\.\d+)\s+(\w+)\((.*)$")


def _traced(path: Path, jobs: Path, job_id: str, t0: float, t1: float) -> dict[str, int] | None:
    """Per syscall and name pattern, the operations one node (its launcher, torchrun and
    ranks) made in the jobs directory between ``t0`` and ``t1``."""
    if not path.exists():
        return None
    root = str(jobs)
    counts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _TRACE_LINE.match(line)
        if m is None or "resumed>" in line:
            continue
        at, call, rest = float(m.group(1)), m.group(2), m.group(3)
        if not t0 <= at <= t1 or root not in rest:
            continue
        names = re.findall(r'"([^"]*)"|<([^>]*)>', rest)
        where = next((a or b for a, b in names if root in (a or b)), "")
        rel = os.path.relpath(where, root) if where.startswith(root) else where
        if "O_RDONLY" in rest and call == "openat" and "O_DIRECTORY" not in rest:
            call = "openat(read)"
        elif call == "openat":
            call = "openat(dir)" if "O_DIRECTORY" in rest else "openat(write)"
        key = f"{call} {pattern(rel, job_id)}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def scope_of(g: dict, nodes: int, ranks: int) -> tuple[str, float]:
    """(per what, how many at 512 x 8) for a name pattern seen ``g['files']`` times."""
    n = g["files"]
    if n >= ranks and n % ranks == 0:
        return "rank", n / ranks * TARGET_RANKS
    if n == nodes:
        return "node", float(TARGET_NODES)
    if n == nodes + 1:
        return "node, +1", float(TARGET_NODES + 1)
    return "job", float(n)


def report_files(r: dict) -> dict:
    nodes, ranks, w = r["nodes"], r["ranks"], r["window_s"]
    print(
        f"\n## files: {nodes} launchers x {r['per_node']} ranks, the plain loop at 50 ms a step, default cadences;"
        f" {w:.0f} s window, {r['polls']} polls ({_load()})\n"
    )
    at = f"{TARGET_NODES} x {TARGET_PER_NODE}"
    print(f"| name pattern | per | files here | writes/s here (replaced + appended) | files at {at} | writes/s at {at} |")
    print("|---|---|---:|---:|---:|---:|")
    tot_files = tot_rate = 0.0
    tot_here_files = tot_here_rate = 0.0
    for pat, g in sorted(r["groups"].items()):
        per, scaled = scope_of(g, nodes, ranks)
        rate = (g["replaced"] + g["appended"]) / w
        per_file = rate / g["files"] if g["files"] else 0.0
        scaled_rate = per_file * scaled
        tot_files += scaled
        tot_rate += scaled_rate
        tot_here_files += g["files"]
        tot_here_rate += rate
        print(f"| `{pat}` | {per} | {g['files']} | {rate:.2f} ({g['replaced']} + {g['appended']}) | {scaled:,.0f} | {scaled_rate:,.1f} |")
    print(f"| **total** | | {tot_here_files:.0f} | {tot_here_rate:.2f} | **{tot_files:,.0f}** | **{tot_rate:,.1f}** |")
    print(f"\ntemp files glimpsed by the poll (each replacement makes one, then renames it): {r['temp_glimpsed']}")
    print(f"left after the job ended: {len(r['after_end'])} files ({', '.join(sorted(set(r['after_end'])))})")
    traced = r.get("traced_node")
    if traced:
        print(f"\nOne node other than node 0 (its launcher, torchrun and {r['per_node']} ranks), every operation in the jobs directory per second (strace):\n")
        print(f"| operation and name | per s, one node | per s, {TARGET_NODES} nodes |")
        print("|---|---:|---:|")
        total = 0.0
        for key, n in sorted(traced.items(), key=lambda kv: -kv[1]):
            total += n / w
            print(f"| `{key}` | {n / w:.2f} | {n / w * TARGET_NODES:,.0f} |")
        print(f"| **total** | {total:.2f} | **{total * TARGET_NODES:,.0f}** |")
    return {"files_at_target": tot_files, "writes_per_s_at_target": tot_rate}


# -- listing: a job's folder with many node records ---------------------------------------------
def run_listing(snapshot: Path, status_by_ranks: dict[int, bytes], repeat: int = 5) -> list[dict]:
    from forgather_control.client.listing import load
    from forgather_control.core.jobs import JobPaths

    job_id = "sim-scale"
    template = json.loads((snapshot / job_id / "nodes" / "0.json").read_text())
    rows = []
    for nodes in (8, 64, 512):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / job_id
            shutil.copytree(snapshot / job_id, folder, symlinks=True)
            os.chmod(folder, 0o700)
            shutil.rmtree(folder / "nodes")
            (folder / "nodes").mkdir(mode=0o700)
            for i in range(nodes):
                rec = dict(template, node_rank=i)
                (folder / "nodes" / f"{i}.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
            ranks = nodes * TARGET_PER_NODE
            body = status_by_ranks.get(ranks)
            if body is not None:
                (folder / "status.json").write_bytes(body)
            paths = JobPaths(Path(tmp), job_id)
            best = math.inf
            for _ in range(repeat):
                t = time.perf_counter()
                info = load(paths, quiet=True)
                best = min(best, time.perf_counter() - t)
            assert len(info.nodes) == nodes, (len(info.nodes), info.corrupt)
            rows.append({"nodes": nodes, "ranks": ranks, "load_ms": best * 1e3, "status_bytes": len(body) if body else 0})
    return rows


def report_listing(rows: list[dict]) -> None:
    print(f"\n## listing: one job's records as list/status read them (client.listing.load), best of 5 ({_load()})\n")
    print("| nodes (x 8 ranks) | node records | status.json bytes | load ms |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['nodes']} ({r['ranks']:,}) | {r['nodes']} | {r['status_bytes']:,} | {r['load_ms']:.1f} |")


def status_bodies() -> dict[int, bytes]:
    """status.json as rank 0 writes it with N ranks' table, for N = 64, 512, 4096."""
    import types

    from forgather_control.callback import Controller
    from forgather_control.core.records import encode

    out = {}
    with tempfile.TemporaryDirectory() as jobs:
        ctl = Controller(job_id="sim-scale", jobs_dir=jobs, enable_http=False, signals=(), rank=0, world_size=2)
        ctl._solo = False
        for n in SCALES:
            ctl._agreement = types.SimpleNamespace(per_rank=[(10_000 + (r % 7) * 10, r // 8) for r in range(n)])
            ctl._compare_ranks(1)
            out[n] = json.dumps(encode(ctl.status()), indent=1, sort_keys=True, default=str).encode()
        ctl._agreement = None
        ctl.close()
    return out


# -- driver ---------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="2 and 4 ranks, 2 nodes x 2 ranks, a 5 s window: about a minute")
    p.add_argument("--ranks", default="2,4,8,16,32", help="rank counts for the collective part (default 2,4,8,16,32)")
    p.add_argument("--rounds", type=int, default=100, help="rounds per rank count (default 100)")
    p.add_argument("--lazy", action="store_true", help="also the largest rank count with TORCH_GLOO_LAZY_INIT=1")
    p.add_argument("--nodes", type=int, default=3, help="launchers in the files part (default 3)")
    p.add_argument("--per-node", type=int, default=2, help="ranks per launcher (default 2)")
    p.add_argument("--window", type=float, default=30.0, help="seconds the files part watches the job (default 30)")
    p.add_argument("--part", action="append", choices=("collective", "rank0", "files", "listing"), help="only these parts (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.rounds)
        return 0
    if args.quick:
        args.ranks, args.rounds, args.nodes, args.per_node, args.window = "2,4", 10, 2, 2, 5.0
    parts = set(args.part or ("collective", "rank0", "files", "listing"))
    print(f"# sim_scale.py: {_load()}")
    everything: dict[str, object] = {}
    failed = False
    if "collective" in parts:
        results = []
        for n in [int(x) for x in args.ranks.split(",") if x]:
            try:
                results.append(run_collective(n, args.rounds))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"FAIL collective at {n} ranks: {exc}")
                failed = True
        if args.lazy and results:
            try:
                results.append(run_collective(results[-1]["world_size"], args.rounds, lazy=True))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"FAIL lazy collective: {exc}")
                failed = True
        if results:
            report_collective(results)
        everything["collective"] = results
    if "rank0" in parts:
        rows = run_rank0()
        report_rank0(rows)
        everything["rank0"] = rows
    if "files" in parts or "listing" in parts:
        try:
            files = run_files(args.nodes, args.per_node, args.window, None)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"FAIL files: {exc}")
            return 1
        try:
            if "files" in parts:
                everything["files"] = files
                everything["files_scaled"] = report_files(files)
            if "listing" in parts:
                rows = run_listing(Path(files["snapshot"]), status_bodies())
                report_listing(rows)
                everything["listing"] = rows
        finally:
            shutil.rmtree(files["tmp"], ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
