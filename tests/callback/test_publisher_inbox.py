"""The inbox poller, driven one poll at a time (no thread, no clock races).

A command file written in place (not renamed into the inbox) can be seen half-written;
the poller must wait for it rather than drop it, and still drop real garbage in the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from forgather_control.callback.publisher import Publisher
from forgather_control.core import Command, JobPaths, Ledger


class Clock:
    """A clock the test moves by hand, so no assertion depends on real time passing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(jobs_dir: Path, grace: float, clock: Clock | None = None) -> tuple[Publisher, Ledger, JobPaths]:
    paths = JobPaths(jobs_dir, "job-1")
    paths.inbox.mkdir(parents=True)
    ledger = Ledger()
    pub = Publisher(paths=paths, ledger=ledger, status=dict, inbox_grace=grace, clock=clock or Clock())
    return pub, ledger, paths


def test_half_written_file_is_waited_for_then_taken(jobs_dir: Path) -> None:
    pub, ledger, paths = make(jobs_dir, grace=3600)
    body = json.dumps({"id": "c-half", "command": "save"})
    f = paths.inbox / "c-half.json"
    f.write_text(body[:7])  # a writer caught mid-write
    assert pub.poll_inbox() == 0
    assert f.exists(), "a file that may still be growing is left where it is"
    assert ledger.pending_count() == 0
    f.write_text(body)
    assert pub.poll_inbox() == 1
    assert not f.exists()
    assert ledger.get("c-half").command is Command.SAVE_CHECKPOINT


def test_empty_file_then_filled_is_taken(jobs_dir: Path) -> None:
    """open(O_TRUNC) then write: the poller may see zero bytes first."""
    pub, ledger, paths = make(jobs_dir, grace=3600)
    f = paths.inbox / "c-empty.json"
    f.write_bytes(b"")
    assert pub.poll_inbox() == 0
    f.write_text(json.dumps({"id": "c-empty", "command": "explode"}))
    assert pub.poll_inbox() == 1
    entry = ledger.get("c-empty")
    assert entry.state == "rejected", "an unknown command gets a receipt that says so"


def test_garbage_is_dropped_once_grace_passes(jobs_dir: Path) -> None:
    clock = Clock()
    pub, ledger, paths = make(jobs_dir, grace=5.0, clock=clock)
    f = paths.inbox / "garbage.json"
    f.write_text("{nope")
    assert pub.poll_inbox() == 0 and f.exists()
    clock.now += 4.9
    assert pub.poll_inbox() == 0 and f.exists()
    clock.now += 0.2
    assert pub.poll_inbox() == 1 and not f.exists()
    assert ledger.pending_count() == 0


def test_no_grace_drops_garbage_at_once(jobs_dir: Path) -> None:
    pub, _, paths = make(jobs_dir, grace=0.0)
    (paths.inbox / "garbage.json").write_text("{nope")
    assert pub.poll_inbox() == 1


def test_changed_file_restarts_its_grace(jobs_dir: Path) -> None:
    clock = Clock()
    pub, _, paths = make(jobs_dir, grace=5.0, clock=clock)
    f = paths.inbox / "slow.json"
    f.write_text("{")
    assert pub.poll_inbox() == 0
    clock.now += 4.0
    f.write_text('{"id": ')  # grew since the last poll: still being written
    assert pub.poll_inbox() == 0
    clock.now += 4.0  # 8 s since first seen, 4 s since it last changed
    assert pub.poll_inbox() == 0 and f.exists()
    clock.now += 1.5
    assert pub.poll_inbox() == 1 and not f.exists()


def test_symlink_is_dropped_at_once_and_its_target_kept(jobs_dir: Path) -> None:
    pub, ledger, paths = make(jobs_dir, grace=3600)
    outside = jobs_dir.parent / "outside.json"
    outside.write_text(json.dumps({"command": "abort"}))
    (paths.inbox / "link.json").symlink_to(outside)
    assert pub.poll_inbox() == 1
    assert outside.exists() and not (paths.inbox / "link.json").is_symlink()
    assert ledger.pending_count() == 0


def test_folder_in_inbox_is_ignored(jobs_dir: Path) -> None:
    """Only files are commands; a folder named like one is left alone, not retried."""
    pub, ledger, paths = make(jobs_dir, grace=3600)
    os.mkdir(paths.inbox / "dir.json")
    (paths.inbox / "c-ok.json").write_text(json.dumps({"id": "c-ok", "command": "eval"}))
    assert pub.poll_inbox() == 1
    assert (paths.inbox / "dir.json").is_dir()
    assert ledger.get("c-ok").command is Command.EVALUATE


def test_forgotten_names_do_not_pile_up(jobs_dir: Path) -> None:
    pub, _, paths = make(jobs_dir, grace=3600)
    f = paths.inbox / "gone.json"
    f.write_text("{")
    pub.poll_inbox()
    f.unlink()  # its writer gave up
    pub.poll_inbox()
    assert pub.unparsed == frozenset()


def test_a_set_through_the_inbox_is_checked_by_the_jobs_knobs(jobs_dir: Path) -> None:
    """The file channel meets the same check as HTTP (the ledger's vet): a set its job can
    take is queued with its values converted; one it cannot is a rejected receipt under
    the file's id, saying why, and nothing is queued."""
    from forgather_control.core.knobs import KnobTable

    table = KnobTable()
    table.declare("temperature", 1.0, min=0.0, max=10.0)
    paths = JobPaths(jobs_dir, "job-1")
    paths.inbox.mkdir(parents=True)
    ledger = Ledger(vet=table.vet_command)
    pub = Publisher(paths=paths, ledger=ledger, status=dict, inbox_grace=0, clock=Clock())
    good = {"id": "c-good", "command": "set", "options": {"changes": [{"name": "temperature", "value": "2"}]}}
    bad = {"id": "c-bad", "command": "set", "options": {"changes": [{"name": "temperature", "value": 11}]}}
    for body in (good, bad):
        (paths.inbox / f"{body['id']}.json").write_text(json.dumps(body))
    assert pub.poll_inbox() == 2
    taken = ledger.get("c-good")
    assert taken.command is Command.SET and taken.options is not None and taken.options.changes[0].value == 2.0
    refused = ledger.get("c-bad").as_record()
    assert refused.state == "rejected" and refused.reason == "temperature must be at most 10, not 11"
    assert ledger.pending_count() == 1
