"""What control adds to a training rank's memory and threads, against the same loop without it (issue 24).

Not a test: run ``python benchmarks/bench_footprint.py`` (about a minute). Four jobs of
the same small loop (this file, ``--loop``: a DDP model on gloo, CPU, 10 ms a step) run
side by side in the same run, 2 ranks each:

- **bare**: plain torchrun, the loop without control (it never imports the project);
- **import only** (not budgeted: what the import alone costs, to tell it from running
  control): plain torchrun, the loop after ``import forgather_control.callback``;
- **torchrun + Controller**: plain torchrun, the loop with a ``Controller`` (rank 0
  serves HTTP and the file channel);
- **forgather launch**: the loop with a ``Controller`` under ``forgather launch`` (the
  worker bootstrap too: its output capture, the launcher watch, the stack listener).

Each rank reports its pid and step. Once every rank is past ``--warm`` steps, each
controlled job is asked its status (``forgather control status --json``, over HTTP) and
served one command (``forgather control eval --wait``); after ``--settle`` more steps
each rank's ``/proc/<pid>/status`` is read ``--samples`` times (median): ``VmRSS``,
``RssAnon`` and ``Threads``. What control adds is a controlled rank's figure minus the
bare job's rank of the same number.

Why RSS (``VmRSS``) and not USS or PSS: RSS is what the issue's figures are in and what
``ps``/``top`` show, and a page control maps (a module, a thread's stack) counts in full
in the rank that maps it, whoever else maps it. USS leaves out pages shared with another
process (so a library both ranks load would count for neither), and PSS divides them
among whoever maps them at that moment, the other jobs of this very run included: both
would move with what else runs, not with control. ``RssAnon`` (private heap and stacks)
is shown beside it as the part no other process can share.

The project's bytecode is compiled before the jobs start and the ranks may read and write
it (``PYTHONDONTWRITEBYTECODE`` is dropped from their environment), as an installed
package's is: a rank that compiles the project from source at every import grows its heap
by the compiler's peak, about 2.7 MiB here, which is not what control keeps.

Budgets (exit 1 when missed, in every controlled job): rank 0 adds at most 10 MiB and 2
threads, every other rank at most 1 MiB and 1 thread. ``--smoke`` runs a few steps and
enforces nothing (it keeps the script from rotting).

    python benchmarks/bench_footprint.py [--warm 300] [--settle 100] [--samples 5] [--rounds 1] [--smoke]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: (MiB, threads) control may add: rank 0 (the HTTP server and the I/O) and every other rank.
BUDGET_RANK0 = (10.0, 2)
BUDGET_OTHERS = (1.0, 1)
NPROC = 2
STEP_TIME = 0.01
#: every this many steps a rank rewrites its report (pid, step, Python threads)
REPORT_EVERY = 20
#: torch's import on 2 busy cores, four jobs at once, before a first step
START_TIMEOUT = 300.0


# -- the rank: the same loop with and without control --------------------------------------
def rank_loop(out: Path, variant: str, control: bool, job_id: str | None, step_time: float, import_only: bool = False) -> None:
    """Train a tiny DDP model until killed; rewrite ``out/<variant>-rank<R>.json`` every
    :data:`REPORT_EVERY` steps. Without ``control`` nothing of the project is imported
    (``import_only``: the package is, and nothing of it runs)."""
    import threading

    import torch
    import torch.distributed as dist
    from torch import nn

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    model = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1 + rank)
    ctl = None
    if import_only:
        import forgather_control.callback  # noqa: F401 - its cost alone
    if control:
        from forgather_control.callback import Controller

        ctl = Controller(job_id=job_id, evaluates=True)  # under forgather launch the id is the launcher's
        ctl.__enter__()
    report, tmp = out / f"{variant}-rank{rank}.json", out / f".{variant}-rank{rank}.tmp"
    step = 0
    while True:
        step += 1
        x = torch.randn(32, 16, generator=gen)
        loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(step_time)
        if ctl is not None:
            act = ctl.step(step, {"loss": float(loss.detach())})
            if act.evaluate:
                ctl.evaluation_done({"eval_loss": float(loss.detach())})
        if step % REPORT_EVERY == 0:
            tmp.write_text(json.dumps({"pid": os.getpid(), "step": step, "threads": sorted(t.name for t in threading.enumerate())}))
            os.replace(tmp, report)


# -- the driver ----------------------------------------------------------------------------
@dataclass
class Job:
    variant: str
    label: str
    argv: list[str]
    job_id: str | None
    popen: subprocess.Popen | None = None
    log: Path | None = None
    #: rank -> its last report
    reports: dict[int, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    rss_kib: float
    anon_kib: float
    threads: int
    #: the native threads' names (``/proc/<pid>/task/*/comm``), sorted
    names: tuple[str, ...] = ()


def forgather() -> list[str]:
    exe = Path(sys.executable).with_name("forgather")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "forgather_control.cli.main"]


def env_for(jobs_dir: Path) -> dict[str, str]:
    """This environment without a surrounding job's identity; one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "FORGATHER_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the bytecode compile_project wrote is read
    env.update(FORGATHER_JOBS_DIR=str(jobs_dir), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def compile_project() -> None:
    """Write the project's bytecode once, before any rank imports it: an installed package
    has it (pip compiles at install), and a rank that compiled from source would count
    the compiler's memory as control's."""
    for folder in ("core", "callback", "serving", "launcher", "cli", "client", "ui"):
        if not compileall.compile_dir(REPO / folder, quiet=1):
            raise SystemExit(f"could not compile {REPO / folder}")


def jobs(out: Path, jobs_dir: Path, tag: str) -> list[Job]:
    loop = [__file__, "--loop", str(out)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(NPROC)]
    ctl_id, launch_id = f"fp-torchrun-{tag}", f"fp-launch-{tag}"
    return [
        Job("bare", "bare (torchrun, no control)", [*torchrun, *loop, "bare"], None),
        Job("import", "import only (not budgeted)", [*torchrun, *loop, "import", "--import-only"], None),
        Job("torchrun", "torchrun + Controller", [*torchrun, *loop, "torchrun", "--control", "--job-id", ctl_id], ctl_id),
        Job(
            "launch",
            "forgather launch",
            [*forgather(), "launch", "--nproc-per-node", str(NPROC), "--jobs-dir", str(jobs_dir), "--job-id", launch_id, *loop, "launch", "--control"],
            launch_id,
        ),
    ]


def read_reports(out: Path, job: Job) -> None:
    for rank in range(NPROC):
        try:
            job.reports[rank] = json.loads((out / f"{job.variant}-rank{rank}.json").read_text())
        except (OSError, ValueError):
            pass


def wait_steps(out: Path, all_jobs: list[Job], target: dict[tuple[str, int], int], what: str, timeout: float) -> None:
    """Until every rank of every job reports a step at least its target; fails at once
    when a job exits."""
    deadline = time.monotonic() + timeout
    while True:
        behind = []
        for job in all_jobs:
            assert job.popen is not None and job.log is not None
            if job.popen.poll() is not None:
                raise SystemExit(f"{job.label} exited ({job.popen.returncode}) {what}:\n{job.log.read_text(errors='replace')[-4000:]}")
            read_reports(out, job)
            for rank in range(NPROC):
                if job.reports.get(rank, {}).get("step", -1) < target[(job.variant, rank)]:
                    behind.append(f"{job.variant} rank {rank}")
        if not behind:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out {what}: {', '.join(behind)}")
        time.sleep(0.2)


def control_cli(args: list[str], env: dict[str, str]) -> None:
    p = subprocess.run([*forgather(), "control", *args], env=env, capture_output=True, text=True, timeout=180)
    if p.returncode != 0:
        raise SystemExit(f"forgather control {' '.join(args)} exited {p.returncode}:\n{p.stdout}{p.stderr}")


def proc_status(pid: int) -> Figure:
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    kib = lambda name: float(fields[name].split()[0])  # noqa: E731
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as fh:
                names.append(fh.read().strip())
        except OSError:
            pass
    return Figure(kib("VmRSS"), kib("RssAnon"), int(fields["Threads"]), tuple(sorted(names)))


def sample(pid: int, n: int) -> Figure:
    figs = []
    for i in range(n):
        if i:
            time.sleep(0.2)
        figs.append(proc_status(pid))
    most = max(figs, key=lambda f: f.threads)
    return Figure(statistics.median(f.rss_kib for f in figs), statistics.median(f.anon_kib for f in figs), most.threads, most.names)


def descendants(pid: int) -> list[int]:
    """``pid``'s process tree, children first found through /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def kill_tree(job: Job) -> None:
    if job.popen is None:
        return
    pids = set(descendants(job.popen.pid)) | {int(r["pid"]) for r in job.reports.values() if "pid" in r}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        job.popen.wait(30)
    except subprocess.TimeoutExpired:
        pass


def one_round(args: argparse.Namespace, tag: str) -> dict[str, dict[int, tuple[Figure, list[str]]]]:
    """One run of the four jobs side by side: variant -> rank -> (figure, Python threads)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    out, jobs_dir = tmp / "reports", tmp / "jobs"
    out.mkdir()
    jobs_dir.mkdir()
    env = env_for(jobs_dir)
    all_jobs = jobs(out, jobs_dir, tag)
    try:
        for job in all_jobs:
            job.log = tmp / f"{job.variant}.log"
            with open(job.log, "wb") as fh:
                job.popen = subprocess.Popen(job.argv, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
        wait_steps(out, all_jobs, {(j.variant, r): args.warm for j in all_jobs for r in range(NPROC)}, f"before step {args.warm}", START_TIMEOUT)
        for job in all_jobs:
            if job.job_id is not None:
                control_cli(["status", job.job_id, "--json"], env)
                control_cli(["eval", job.job_id, "--wait", "--timeout", "120"], env)
        for job in all_jobs:
            read_reports(out, job)
        target = {(j.variant, r): j.reports[r]["step"] + args.settle for j in all_jobs for r in range(NPROC)}
        wait_steps(out, all_jobs, target, f"for {args.settle} more steps", 120.0)
        return {j.variant: {r: (sample(int(j.reports[r]["pid"]), args.samples), j.reports[r].get("threads", [])) for r in range(NPROC)} for j in all_jobs}
    finally:
        for job in all_jobs:
            kill_tree(job)
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


def mib(kib: float) -> float:
    return kib / 1024


def report(rounds: list[dict[str, dict[int, tuple[Figure, list[str]]]]], labels: dict[str, str], smoke: bool) -> int:
    """The table (medians over rounds), the Python threads control adds, the verdict."""

    def med(variant: str, rank: int) -> Figure:
        figs = [r[variant][rank][0] for r in rounds]
        return Figure(statistics.median(f.rss_kib for f in figs), statistics.median(f.anon_kib for f in figs), int(statistics.median(f.threads for f in figs)))

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{NPROC} ranks a job, gloo on CPU, {STEP_TIME * 1000:.0f} ms steps; {len(rounds)} round(s); load average {load}")
    print(f"{'job':<28} {'rank':>4} {'VmRSS MiB':>10} {'RssAnon MiB':>12} {'threads':>8} {'+RSS MiB':>9} {'+anon MiB':>10} {'+threads':>9}  budget")
    over = []
    for variant, label in labels.items():
        for rank in range(NPROC):
            fig, bare = med(variant, rank), med("bare", rank)
            if variant == "bare":
                print(f"{label:<28} {rank:>4} {mib(fig.rss_kib):>10.1f} {mib(fig.anon_kib):>12.1f} {fig.threads:>8} {'':>9} {'':>10} {'':>9}  baseline")
                continue
            d_rss, d_anon, d_thr = mib(fig.rss_kib - bare.rss_kib), mib(fig.anon_kib - bare.anon_kib), fig.threads - bare.threads
            budget_mib, budget_thr = BUDGET_RANK0 if rank == 0 else BUDGET_OTHERS
            figures = f"{mib(fig.rss_kib):>10.1f} {mib(fig.anon_kib):>12.1f} {fig.threads:>8}"
            if variant == "import":
                print(f"{label:<28} {rank:>4} {figures} {d_rss:>+9.1f} {d_anon:>+10.1f} {d_thr:>+9}  -")
                continue
            ok = d_rss <= budget_mib and d_thr <= budget_thr
            if not ok:
                over.append(f"{label} rank {rank}: +{d_rss:.1f} MiB, +{d_thr} threads (budget {budget_mib:g} MiB, {budget_thr})")
            verdict = f"<= {budget_mib:g} MiB, {budget_thr} {'ok' if ok else 'OVER'}"
            print(f"{label:<28} {rank:>4} {figures} {d_rss:>+9.1f} {d_anon:>+10.1f} {d_thr:>+9}  {verdict}")
    last = rounds[-1]
    for variant, label in labels.items():
        if variant in ("bare", "import"):
            continue
        for rank in range(NPROC):
            added = sorted(set(last[variant][rank][1]) - set(last["bare"][rank][1]))
            native = Counter(last[variant][rank][0].names)
            native.subtract(Counter(last["bare"][rank][0].names))
            # a Python thread's native name is the interpreter's (python, python3.11): the others are C++ threads
            names = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(native.items()) if c > 0 and not n.startswith("python"))
            print(f"threads control adds, {label} rank {rank}: Python {', '.join(added) or 'none'}; native {names or 'none'}")
    if smoke:
        print("SMOKE: budgets not enforced")
        return 0
    if over:
        print(f"FAIL: {'; '.join(over)}")
        return 1
    (r0_mib, r0_thr), (other_mib, other_thr) = BUDGET_RANK0, BUDGET_OTHERS
    print(f"PASS: rank 0 within {r0_mib:g} MiB and {r0_thr} threads, every other rank within {other_mib:g} MiB and {other_thr} thread")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--loop":
        lp = argparse.ArgumentParser()
        lp.add_argument("--loop", type=Path, required=True)
        lp.add_argument("variant")
        lp.add_argument("--control", action="store_true")
        lp.add_argument("--job-id", default=None)
        lp.add_argument("--import-only", action="store_true")
        la = lp.parse_args()
        rank_loop(la.loop, la.variant, la.control, la.job_id, STEP_TIME, la.import_only)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", type=int, default=300, help="steps every rank runs before the status poll and the command")
    ap.add_argument("--settle", type=int, default=100, help="steps after the command before the figures are read")
    ap.add_argument("--samples", type=int, default=5, help="reads of /proc/<pid>/status per rank, 0.2 s apart (median)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of the four jobs (medians over rounds)")
    ap.add_argument("--smoke", action="store_true", help="a few steps, budgets not enforced")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder (logs, reports, jobs)")
    args = ap.parse_args()
    if args.smoke:
        args.warm, args.settle, args.samples, args.rounds = 40, 20, 2, 1
    compile_project()
    rounds = [one_round(args, f"{os.getpid()}-{i}") for i in range(args.rounds)]
    labels = {j.variant: j.label for j in jobs(Path("."), Path("."), "")}
    return report(rounds, labels, args.smoke)


if __name__ == "__main__":
    sys.exit(main())
