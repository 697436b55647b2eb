"""A hostile jobs directory: records of the wrong types and sizes, escape sequences in
every field a person sees, links, FIFOs and unreadable files. ``list``, ``status`` and
``cleanup`` never crash, never print a raw control character, never touch anything
outside the directory, and a bad record makes only its own job ``corrupt``.

The fixed cases are the findings of the hostile review, through the command line run in
this process (support.cli.run_cli_here); the generated ones (hypothesis, bounded) keep
looking for the next one, in process, against the same code."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from support.cli import run_cli_here
from support.records import identity

from forgather_control.cli import render
from forgather_control.cli.output import printable
from forgather_control.client import scan
from forgather_control.core import JobPaths
from forgather_control.core.records import Endpoint, Job, Node, RecordError, Status, decode, encode

#: What must never reach a terminal raw: C0/C1 controls (but a line's own newline) and
#: the invisible and direction-changing code points.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
ESCAPES = [
    "\x1b]0;pwned\x07",  # retitle the terminal
    "\x1b[2J\x1b[H",  # clear it
    "\x1b[8mhidden\x1b[0m",  # hide text
    "\x1b]8;;http://evil.example\x07click\x1b]8;;\x07",  # an OSC-8 link
    "ok\nrunning   forged-job   1/1",  # a forged line
    "abc\u202edcba",  # a right-to-left override
    "[bold red]markup[/]",  # rich markup
]


def _cli(*args: str, jobs: Path) -> subprocess.CompletedProcess:
    """The command line over ``jobs``, in this process: what it prints and returns is the
    point here (some thirty runs), not an interpreter's start."""
    r = run_cli_here(*args, env={"FORGATHER_JOBS_DIR": str(jobs)})
    return subprocess.CompletedProcess(list(args), r.code, r.out, r.err)


def _assert_clean(proc: subprocess.CompletedProcess) -> None:
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        bad = RAW.search(text)
        assert bad is None, f"raw {bad.group()!r} in {name}: {text[max(0, bad.start() - 80) : bad.end() + 80]!r}"
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr, proc.stderr


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in --json output")

    return json.loads(text, parse_constant=refuse)


def _job(root: Path, job_id: str, **records: dict[str, Any]) -> JobPaths:
    paths = JobPaths(root, job_id).create()
    for name, data in records.items():
        (paths.dir / f"{name}.json").write_text(json.dumps(data))
    return paths


def _hostile_dir(root: Path, outside: Path) -> dict[str, str]:
    """The review's findings as a jobs directory; returns job id -> the field named in
    its corrupt reason."""
    dead = {**identity(999_999_999)}
    _job(root, "good-done", status={**dead, "job_id": "good-done", "state": "stopped", "step": 4, "metrics": {"loss": float("nan")}})
    bad = {
        "pid-dict": ("status", {**dead, "pid": {"a": 1}, "state": "running"}, "pid"),
        "state-list": ("status", {**dead, "state": ["running"]}, "state"),
        "step-text": ("status", {**dead, "state": "running", "step": "abc"}, "step"),
        "max-steps-text": ("status", {**dead, "state": "running", "max_steps": "0"}, "max_steps"),
        "url-list": ("endpoint", {**dead, "url": ["http://127.0.0.1:1"], "token": "t"}, "url"),
        "huge-metrics": ("status", {**dead, "state": "running", "metrics": {f"m{i}": i for i in range(500)}}, "metrics"),
        "commands-not-list": ("status", {**dead, "state": "running", "commands": "rm -rf"}, "commands"),
        "job-argv-dict": ("job", {"state": "running", "argv": {"x": 1}}, "argv"),
    }
    for job_id, (record, data, _field) in bad.items():
        _job(root, job_id, **{record: data})
    # escape sequences in every field a person reads, in records that are otherwise fine
    for i, esc in enumerate(ESCAPES):
        paths = _job(
            root,
            f"escapes-{i}",
            status={
                **dead,
                "host": f"node{esc}",
                "state": "stopped",
                "step": 1,
                "metrics": {f"loss{esc}": f"v{esc}"},
                "last_checkpoint": f"/ck/{esc}",
                "error": f"boom {esc}",
                "commands": [{"id": f"c-{i}", "command": f"save{esc}", "state": "failed", "reason": f"why {esc}"}],
            },
            job={"state": "failed", "cwd": f"/x{esc}", "host": f"h{esc}", "exit_code": 1},
        )
        paths.nodes.mkdir(exist_ok=True)
        (paths.nodes / f"0{esc.replace('/', '_')}.json").write_text("{not json")  # a file name that reaches a warning
    # encodings and shapes a JSON reader trips on
    (JobPaths(root, "not-utf8").create().status).write_bytes(b'{"state": "running", "host": "\xff\xfe\x80"}')
    (JobPaths(root, "utf16").create().status).write_bytes('{"state": "running"}'.encode("utf-16"))
    (JobPaths(root, "deep").create().status).write_bytes(b'{"metrics": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    (JobPaths(root, "oversized").create().status).write_bytes(b'{"pad": "' + b"x" * (2 << 20) + b'"}')
    # links, FIFOs, unreadable and odd files
    (outside / "status.json").write_text(json.dumps({"state": "stopped", "host": "outside"}))
    linked = JobPaths(root, "status-link").create()
    os.symlink(outside / "status.json", linked.status)
    fifo = JobPaths(root, "status-fifo").create()
    os.mkfifo(fifo.status)  # a reader that opened it blocking would hang forever
    locked = _job(root, "unreadable", status={**dead, "state": "stopped"})
    os.chmod(locked.status, 0)
    os.symlink(outside, root / "job-link")
    return {job_id: field for job_id, (_r, _d, field) in bad.items()}


def test_hostile_directory_never_crashes_never_escapes(tmp_path: Path) -> None:
    root, outside = tmp_path / "jobs", tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("keep")
    fields = _hostile_dir(root, outside)

    listing = _cli("control", "list", "--all", "--json", jobs=root)
    assert listing.returncode == 0, listing.stderr
    _assert_clean(listing)
    rows = {r["job_id"]: r for r in _strict_json(listing.stdout)}
    assert "job-link" not in rows
    for job_id, field in fields.items():
        assert rows[job_id]["state"] == "corrupt" and f"'{field}'" in rows[job_id]["evidence"], rows[job_id]
    assert rows["good-done"]["state"] == "stopped"
    assert rows["status-link"]["state"] == "corrupt" and rows["status-fifo"]["state"] == "corrupt"
    for job_id in ("not-utf8", "utf16", "deep", "oversized"):
        assert rows[job_id]["state"] == "corrupt", rows[job_id]

    for args in (["control", "list", "--all"], ["control", "cleanup", "--dry-run"], ["control", "cleanup", "--dry-run", "--json"]):
        proc = _cli(*args, jobs=root)
        assert proc.returncode == 0, (args, proc.stderr)
        _assert_clean(proc)
    for job_id in ("good-done", "pid-dict", "escapes-0", "escapes-3", "escapes-4", "escapes-5", "escapes-6", "url-list"):
        for extra in ([], ["--json"]):
            proc = _cli("control", "status", job_id, *extra, jobs=root)
            assert proc.returncode == 0, (job_id, proc.stderr)
            _assert_clean(proc)
            if extra:
                assert _strict_json(proc.stdout)["job_id"] == job_id
    good = _strict_json(_cli("control", "status", "good-done", "--json", jobs=root).stdout)
    assert good["metrics"] == {"loss": None}  # NaN: null in strict JSON
    shown = _cli("control", "status", "escapes-4", jobs=root).stdout
    assert "forged-job" in shown and "\\x0a" in shown  # the forged line stays inside its field, visibly

    deleted = _cli("control", "cleanup", "--yes", "--json", jobs=root)
    assert deleted.returncode == 0, deleted.stderr
    _assert_clean(deleted)
    gone = set(_strict_json(deleted.stdout)["deleted"])
    assert not gone & (set(fields) | {"status-link", "status-fifo"})  # corrupt jobs are never judged dead
    assert precious.read_text() == "keep" and (outside / "status.json").exists() and (root / "job-link").is_symlink()
    assert stat.S_ISFIFO(os.lstat(fifo_path := root / "status-fifo" / "status.json").st_mode), fifo_path


def test_a_command_to_a_corrupt_job_is_refused_with_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    _job(root, "broken", status={**identity(), "state": ["running"]})
    proc = _cli("control", "save", "broken", jobs=root)
    assert proc.returncode == 4 and "corrupt" in proc.stderr and "'state'" in proc.stderr
    _assert_clean(proc)
    assert os.listdir(root / "broken" / "inbox") == []


# -- generated ---------------------------------------------------------------------------
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(ESCAPES)
_SCALAR = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | _TEXT
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=12)


def _record(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """Records whose known fields take any JSON value, plus stray fields."""
    fields = [f.encode_name for f in msgspec.structs.fields(cls)]
    return st.fixed_dictionaries({}, optional={name: _VALUE for name in fields}) | st.dictionaries(_TEXT, _VALUE, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(endpoint=_record(Endpoint), status=_record(Status), job=_record(Job), node=_record(Node))
def test_any_record_is_checked_or_refused_and_renders_clean(tmp_path_factory: pytest.TempPathFactory, endpoint, status, job, node) -> None:
    for data, cls in ((endpoint, Endpoint), (status, Status), (job, Job), (node, Node)):
        try:
            checked = decode(data, cls, name="r")
        except RecordError as exc:
            assert "field" in str(exc)
            continue
        assert set(msgspec.to_builtins(checked)) <= {f.encode_name for f in msgspec.structs.fields(cls)}
    root = tmp_path_factory.mktemp("gen") / "jobs"
    paths = JobPaths(root, "gen").create()
    paths.nodes.mkdir()
    for name, data in (("endpoint", endpoint), ("status", status), ("job", job)):
        (paths.dir / f"{name}.json").write_text(json.dumps(data, allow_nan=True))
    (paths.nodes / "0.json").write_text(json.dumps(node, allow_nan=True))
    infos = scan(root, include_finished=True, squeue=None)
    assert len(infos) == 1
    info = infos[0]
    details = info.details()
    json.dumps(encode(details), allow_nan=True)  # always serialisable
    with open(os.devnull, "w") as sink:
        con = Console(record=True, width=120, file=sink)
        con.print(render.jobs_table([info.summary()]))
        con.print(render.status_panel(details))
        out = con.export_text(styles=False)
    assert RAW.search(out) is None, out


def test_printable_writes_out_every_control_character() -> None:
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x202E, 0x2066, 0x200B]:
        assert RAW.search(printable(f"a{chr(code)}b")) is None
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
