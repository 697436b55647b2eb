"""A jobs directory shared by many users (issue 19, findings 1, 2 and 4), attacked by a
real second uid (``setpriv``) in a sticky ``1777`` root and in a group-writable ``2775``
one (the attacker in its group).

The victim is root running the usual library, CLI and launcher, unless the attack needs
the victim to be unable to write somewhere (root may write anywhere): then it is uid
1001, writing its records with plain file operations. Every check of the trust model is
a uid comparison, so root is held to it like anyone else.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import run_cli
from support.env import base_env
from support.launcher import launch
from support.paths import PLAIN_LAUNCH
from support.records import identity
from support.users import ATTACKER_UID, SHARED_GID, VICTIM_UID, OtherUser, SharedDir, require_setpriv, shared_dir

from forgather_control.callback.publisher import Publisher
from forgather_control.core import Command, JobPaths, Ledger, write_json_atomic
from forgather_control.core.markers import mark_run
from forgather_control.launcher.duties import read_inbox

ROOTS = {"sticky-1777": (0o1777, None), "group-2775": (0o2775, SHARED_GID)}


@pytest.fixture(params=sorted(ROOTS))
def shared(request: pytest.FixtureRequest) -> Iterator[SharedDir]:
    require_setpriv()
    mode, group = ROOTS[request.param]
    with shared_dir(mode, group=group) as d:
        yield d


def attacker(shared: SharedDir) -> OtherUser:
    """uid 1002; in the root's group when the root is group-writable."""
    return OtherUser(ATTACKER_UID, groups=(shared.group,) if shared.group is not None else ())


def listed(root: Path) -> list[str]:
    done = run_cli("control", "list", "--json", env=base_env(root))
    assert done.code == 0, done.err
    return [row["job_id"] for row in done.json()]


# -- 1. hiding: another user's settled entries hide nothing ------------------------------------
def test_another_users_settled_entries_never_hide_a_running_job(shared: SharedDir) -> None:
    """uid 1002 makes .runs and .settled first (755: the victim can write neither) and
    settles 'a-train' in every place it can: flat, in a folder named for the victim's
    uid, in its own. The victim (uid 1001, records written by hand, as its launcher would
    without a marker) is running; root's `list` must show it."""
    b = attacker(shared)
    b.sh(
        "mkdir -m 755 .runs .settled .settled/1001 .settled/1002 && touch .settled/a-train .settled/1001/a-train .settled/1002/a-train",
        cwd=shared.root,
    )
    status = {**identity(), "job_id": "a-train", "state": "running", "step": 5, "heartbeat_at": time.time()}  # this live process
    a = OtherUser(VICTIM_UID, groups=b.groups)
    a.sh(f"umask 077 && mkdir a-train a-train/inbox && printf '%s' '{json.dumps(status)}' > a-train/status.json", cwd=shared.root)
    assert listed(shared.root) == ["a-train"]


# -- 2. hijack: a job folder another user made is refused -----------------------------------
def test_a_job_folder_another_user_made_is_refused_naming_its_owner(shared: SharedDir) -> None:
    attacker(shared).sh("mkdir -m 777 victim victim/inbox victim/stacks", cwd=shared.root)
    with pytest.raises(PermissionError, match=r"belongs to uid 1002"):
        JobPaths(shared.root, "victim").create()
    assert not os.listdir(shared.root / "victim" / "inbox")


@pytest.mark.slow
def test_the_launcher_refuses_a_job_folder_another_user_made(shared: SharedDir, procs) -> None:  # type: ignore[no-untyped-def]
    """B prepares victim/ with an open inbox and stacks folder; A's launch must stop
    before anything runs, exit 2 and name B's uid (else B's abort in the inbox ends A's job)."""
    attacker(shared).sh("mkdir -m 777 victim victim/inbox victim/stacks", cwd=shared.root)
    proc = launch(procs, shared.root, "victim", PLAIN_LAUNCH, "--max-steps", "3")
    assert proc.wait() == 2, proc.output()
    assert "belongs to uid 1002" in proc.output(), proc.output()
    assert sorted(os.listdir(shared.root / "victim")) == ["inbox", "stacks"]  # nothing of A's was written there


def test_a_command_file_another_user_put_in_the_inbox_is_not_obeyed(shared: SharedDir) -> None:
    """Even in a job's own folder (its mode loosened by hand), an abort another uid wrote
    is no command for the launcher's abort watch."""
    paths = JobPaths(shared.root, "loose").create()
    os.chmod(paths.dir, 0o777)
    os.chmod(paths.inbox, 0o777)
    attacker(shared).sh(f"printf '%s' '{json.dumps({'command': 'abort', 'id': 'b-1'})}' > {paths.inbox}/1-b-1.json")
    write_json_atomic(paths.inbox / "2-a-1.json", {"command": "save", "id": "a-1"})
    assert [getattr(c, "id", None) or c["id"] for c in read_inbox(paths)] == ["a-1"]  # type: ignore[index]
    ledger = Ledger()  # rank 0's poller (the launching uid's, as rank 0 runs): the abort is dropped, the save taken
    assert Publisher(paths=paths, ledger=ledger, status=dict, inbox_grace=0.0).poll_inbox() == 2
    assert [r.id for r in ledger.recent()] == ["a-1"] and ledger.get("a-1").command is Command.SAVE_CHECKPOINT
    assert os.listdir(paths.inbox) == []


# -- 4. the chmod race: nothing is chmod-ed through a path another user can swap --------------
def test_a_link_swapped_in_while_an_index_folder_is_made_is_never_chmod_ed(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a 2775 root (a sticky one lets nobody rename another's folder), the moment the
    victim (root) has made the run markers' folder, uid 1002 of the root's group renames
    it away and puts a link to the victim's 0600 file in its place (deterministic: done
    from inside os.mkdir). The file must stay 0600 and closed to 1002."""
    require_setpriv()
    with shared_dir(0o2775, group=SHARED_GID) as shared:
        _swap_while_made(shared, monkeypatch)


def _swap_while_made(shared: SharedDir, monkeypatch: pytest.MonkeyPatch) -> None:
    b = attacker(shared)
    secret = shared.root / "a-notes.txt"
    secret.write_text("mine\n")
    os.chmod(secret, 0o600)
    real_mkdir = os.mkdir

    def mkdir_then_swap(path, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        real_mkdir(path, mode, dir_fd=dir_fd)
        name = os.path.basename(os.fspath(path))
        if "runs" in name:
            b.sh(f"mv '{name}' '{name}.gone' && ln -s '{secret}' '{name}'", cwd=shared.root)

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    mark_run(shared.root, "a-train")
    monkeypatch.undo()
    assert stat.S_IMODE(os.lstat(secret).st_mode) == 0o600
    assert b.sh(f"echo theirs >> '{secret}'", check=False).returncode != 0
    assert secret.read_text() == "mine\n"
