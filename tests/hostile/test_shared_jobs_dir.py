"""A jobs directory shared by many users (issue 19, findings 1, 2 and 4), attacked by a
real second uid (``setpriv``) in a sticky ``1777`` root and in a group-writable ``2775``
one (the attacker in its group); the slow tests run the real ``forgather control`` as
uid 1002 (support.users.users_python).

The victim is root running the usual library, CLI and launcher, unless the attack needs
the victim to be unable to write somewhere (root may write anywhere): then it is uid
1001, writing its records with plain file operations. Every check of the trust model is
a uid comparison, so root is held to it like anyone else.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.cli import CliResult, run_cli
from support.env import base_env
from support.launcher import launch
from support.paths import PLAIN_LAUNCH
from support.processes import Procs, dead_pid
from support.records import identity, read_record
from support.scripts import CONTROLLED_LOOP
from support.ui import browser, ui_server
from support.users import ATTACKER_UID, SHARED_GID, VICTIM_UID, OtherUser, SharedDir, require_setpriv, shared_dir, users_python
from support.waiting import wait_for

from forgather_control.callback.publisher import Publisher
from forgather_control.core import Command, JobPaths, Ledger, write_json_atomic
from forgather_control.core import dumper as st
from forgather_control.core.files import NotOurs
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


def as_user(user: OtherUser, root: Path, *args: str) -> CliResult:
    """``forgather control ARGS`` run by ``user`` (its own python: support.users) on ``root``."""
    done = subprocess.run(user.cli("control", *args), env=user.env(FORGATHER_JOBS_DIR=str(root)), capture_output=True, text=True, timeout=120)
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def their_python() -> tuple[Path, Path]:
    """The venv other uids run the CLI from (built once per machine, under a lock)."""
    require_setpriv()
    return users_python()


def running_by_hand(user: OtherUser, root: Path, job_id: str, *, mode: str = "077", **status: object) -> None:
    """``user``'s job folder with a status.json naming this live process (running, step 5,
    a fresh heartbeat), written with plain file operations as its rank 0 would."""
    record = {**identity(), "job_id": job_id, "state": "running", "step": 5, "heartbeat_at": time.time(), **status}
    user.sh(f"umask {mode} && mkdir {job_id} {job_id}/inbox && printf '%s' '{json.dumps(record)}' > {job_id}/status.json", cwd=root)


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


def test_another_users_settled_entries_never_hide_a_running_job_from_the_page_or_metrics(shared: SharedDir) -> None:
    """The same entries planted; the page's job feed (as it polls it: without the ended
    jobs, unless asked) and the Prometheus scrape still have 'a-train', running at step 5.
    The scrape and the live-only feed are asked first: nothing has read every folder yet."""
    b = attacker(shared)
    b.sh(
        "mkdir -m 755 .runs .settled .settled/0 .settled/1001 .settled/1002 && for d in . 0 1001 1002; do touch .settled/$d/a-train; done",
        cwd=shared.root,
    )
    running_by_hand(OtherUser(VICTIM_UID, groups=b.groups), shared.root, "a-train")
    with ui_server(shared.root) as server:
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.config.token}"})
        scrape = client.get("/metrics")
        feeds = [client.get("/api/jobs", params={"ended": ended}).json()["rows"] for ended in ("false", "true")]
        client.close()
    assert scrape.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    assert {s.labels["job_id"]: s.value for s in families["forgather_job_step"].samples} == {"a-train": 5}
    for rows in feeds:
        assert [(r["job_id"], r["state"], r["step"]) for r in rows] == [("a-train", "running", 5)]


# -- another user's planted records are refused, and the reason shown ---------------------------
def test_a_record_another_user_planted_in_a_job_folder_is_refused_with_the_reason_in_status_and_cleanup(shared: SharedDir) -> None:
    """The victim (root) left its running job's folder writable; uid 1002 replaces its
    status.json with one that says the job finished long ago (so that cleanup deletes
    it). `status` and `cleanup --dry-run` refuse the record and say why; nothing goes."""
    paths = JobPaths(shared.root, "victim").create()
    write_json_atomic(paths.status, {**identity(), "job_id": "victim", "state": "running", "step": 5, "heartbeat_at": time.time()})
    os.chmod(paths.dir, 0o777)
    forged = {**identity(dead_pid()), "job_id": "victim", "state": "finished", "step": 9, "heartbeat_at": time.time() - 86400}
    attacker(shared).sh(f"printf '%s' '{json.dumps(forged)}' > victim/.forged && mv -f victim/.forged victim/status.json", cwd=shared.root)
    reason = f"{paths.status} belongs to uid 1002, not to the job's owner (uid 0 (root)); not trusted"
    env = base_env(shared.root)

    shown = run_cli("control", "status", "victim", "--json", env=env)
    assert shown.code == 0, shown.err
    assert (shown.json()["state"], shown.json()["liveness"], shown.json()["evidence"], shown.json()["step"]) == ("corrupt", "unknown", reason, None)
    panel = run_cli("control", "status", "victim", env={**env, "COLUMNS": "400"})
    assert panel.code == 0 and f"state    corrupt  (unknown: {reason})" in panel.out, panel.out
    dry = run_cli("control", "cleanup", "--dry-run", env=env)
    assert (dry.code, dry.out) == (0, f"nothing to clean up in {shared.root}\nkept victim: not judged, its records are refused: {reason}\n"), dry
    done = run_cli("control", "cleanup", "--yes", "--json", env=env)
    assert (done.code, done.json()["deleted"], done.json()["kept"]) == (
        0,
        [],
        [{"job_id": "victim", "reason": f"not judged, its records are refused: {reason}"}],
    )
    assert sorted(os.listdir(paths.dir)) == ["inbox", "status.json"]


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


# -- 5. a rank's stacks go only into a file of its own ------------------------------------------
@contextlib.contextmanager
def _registering(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Around st.register in this process: whatever it registered is undone afterwards."""
    monkeypatch.setattr(st, "_dump_file", None)
    try:
        yield
    finally:
        if st._dump_file is not None:  # registered (the rule broken): undo it
            faulthandler.unregister(st.STACK_SIGNAL)
            st._dump_file.close()


def test_a_rank_never_writes_its_stacks_through_a_link_in_its_stacks_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link where the rank's dump file goes (left there by whoever could write the
    folder before it was the job's) is not followed: register refuses, records nothing."""
    paths = JobPaths(tmp_path / "jobs", "linked").create()
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("")
    (paths.dir / "stacks").mkdir(mode=0o700)
    os.symlink(elsewhere, paths.dir / "stacks" / f"rank-0-{os.getpid()}.txt")
    with _registering(monkeypatch):
        with pytest.raises(OSError, match="symbolic link"):
            st.register(paths, 0)
    assert not (paths.dir / "stacks" / "rank-0.json").exists()


def test_a_rank_never_writes_its_stacks_into_a_file_another_user_made(shared: SharedDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """uid 1002 made the dump file while the job's stacks folder was open: it is refused
    naming its owner (else 1002 reads every stack dump the rank writes)."""
    paths = JobPaths(shared.root, "loose").create()
    os.chmod(paths.dir, 0o777)
    (paths.dir / "stacks").mkdir(mode=0o777)
    os.chmod(paths.dir / "stacks", 0o777)
    attacker(shared).sh(f"umask 000 && touch loose/stacks/rank-0-{os.getpid()}.txt", cwd=shared.root)
    with _registering(monkeypatch):
        with pytest.raises(NotOurs, match=r"rank-0-\d+\.txt belongs to uid 1002"):
            st.register(paths, 0)
    assert not (paths.dir / "stacks" / "rank-0.json").exists()


# -- the real CLI as uid 1002, on another user's job --------------------------------------------
@pytest.mark.slow
def test_a_private_job_of_yours_is_left_out_of_another_users_list_and_refused_to_them_by_id_naming_you(
    shared: SharedDir, procs: Procs, their_python: tuple[Path, Path], tmp_path: Path
) -> None:
    """Root runs a job; its folder is private to root. uid 1002 runs the real CLI on it:
    `list` leaves it out and says one private folder of root's was not shown (not
    `corrupt`: nothing is wrong with it); `status`, `save` and `abort` are refused, exit 4,
    naming its owner, and nothing reaches the job; `cleanup` keeps it, saying why."""
    job = procs.start([sys.executable, CONTROLLED_LOOP, "a-train", str(tmp_path / "out")], env=base_env(shared.root), name="a-train")
    wait_for(lambda: read_record(shared.root, "a-train", "status.json").get("state") == "running", timeout=60, what="a-train running")
    b = attacker(shared).with_python(their_python)
    reason = f"{shared.root}/a-train is the job folder of uid 0 (root), private to it: you (uid 1002) cannot read its records"

    rows = as_user(b, shared.root, "list", "--json")
    assert (rows.code, rows.json(), rows.err) == (0, [], ""), rows
    table = as_user(b, shared.root, "list")
    assert (table.code, table.err) == (0, ""), table
    assert table.out.endswith("not shown: 1 job folder of other users, private to them (1 of uid 0 (root))\n"), table.out
    for command in (("status", "a-train", "--json"), ("save", "a-train"), ("abort", "a-train", "--yes"), ("status", "a-tr")):
        refused = as_user(b, shared.root, *command)
        assert (refused.code, refused.out, refused.err) == (4, "", f"error: job a-train: {reason}; only its owner can see or command it\n"), command
    kept = "kept a-train: its folder belongs to uid 0 (root), not to you (uid 1002); only its owner deletes it; it is private to them, so it was not judged\n"
    for args in (["cleanup", "--dry-run"], ["cleanup", "--yes"]):
        swept = as_user(b, shared.root, *args)
        assert (swept.code, swept.out, swept.err) == (0, f"nothing to clean up in {shared.root}\n" + kept, ""), (args, swept)

    assert os.listdir(shared.root / "a-train" / "inbox") == []
    mine = run_cli("control", "status", "a-train", "--json", env=base_env(shared.root))
    assert (mine.code, mine.json()["state"], mine.json()["commands"]) == (0, "running", []), mine
    assert job.popen.poll() is None


@pytest.mark.slow
def test_a_listing_by_another_user_leaves_out_a_private_job_and_counts_it_by_owner(shared: SharedDir, their_python: tuple[Path, Path]) -> None:
    """uid 1001's job folder is private (umask 077); the listing a Python caller (and the
    page's feed: tests/ui/test_ui_api.py) gets as uid 1002 has no row for it, not a
    `corrupt` one, and names it among the private folders left out, with its owner."""
    b = attacker(shared).with_python(their_python)
    running_by_hand(OtherUser(VICTIM_UID, groups=b.groups), shared.root, "a-train")
    snippet = (
        "import json, sys\n"
        "from forgather_control.client.sources import LocalSource\n"
        "listing = LocalSource(sys.argv[1]).list(include_finished=True)\n"
        "print(json.dumps([listing.rows, listing.private]))\n"
    )
    assert b.python is not None
    done = subprocess.run(b.argv(b.python, "-c", snippet, shared.root), capture_output=True, text=True, timeout=60, env=b.env())
    assert (done.returncode, done.stderr) == (0, ""), done
    assert json.loads(done.stdout) == [[], {"a-train": VICTIM_UID}]


@pytest.mark.slow
def test_the_page_of_another_user_shows_no_row_for_a_private_job_and_says_one_folder_was_left_out(
    shared: SharedDir, procs: Procs, their_python: tuple[Path, Path], tmp_path: Path
) -> None:
    """uid 1002 serves the page (the real `forgather control ui`) over a root holding uid
    1001's private running job and 1002's own; Chromium logs in with the printed address:
    one row, 1002's, and the notice says one private folder of another user is not shown."""
    victim = OtherUser(VICTIM_UID, groups=attacker(shared).groups)
    running_by_hand(victim, shared.root, "a-train")
    b = attacker(shared).with_python(their_python)
    running_by_hand(b, shared.root, "b-mine", mode="022")
    proc = procs.start(b.cli("control", "ui", "--no-browser", "--port", "0", "--jobs-dir", str(shared.root)), env=b.env(), name="ui-as-1002")
    url = wait_for(lambda: next((w for w in proc.output().split() if w.startswith("http://127.0.0.1:")), None), timeout=60, what="the page's address")
    with browser() as chromium:
        page = chromium.new_context(viewport={"width": 1400, "height": 700}).new_page()
        page.goto(url)
        page.wait_for_selector("tr[data-job='b-mine']")
        notice = page.locator("div.notice")
        notice.wait_for(state="visible")
        assert notice.inner_text() == "Not shown: 1 job folder of other users, private to them."
        assert page.locator("tr[data-job]").count() == 1
        page.screenshot(path=str(tmp_path / "private-left-out.png"))


@pytest.mark.slow
def test_another_users_cleanup_never_deletes_a_dead_job_folder_not_theirs(shared: SharedDir, their_python: tuple[Path, Path]) -> None:
    """uid 1001's job died; its folder is readable (umask 022), so uid 1002 judges it dead
    too. 1002's cleanup keeps it, naming its owner; in the group-writable root it would
    otherwise move the folder aside, out of its owner's listing."""
    b = attacker(shared).with_python(their_python)
    running_by_hand(OtherUser(VICTIM_UID, groups=b.groups), shared.root, "a-old", mode="022", **identity(dead_pid()), heartbeat_at=time.time() - 3600)
    kept = "kept a-old: its folder belongs to uid 1001, not to you (uid 1002); only its owner deletes it\n"
    for args in (["cleanup", "--dry-run"], ["cleanup", "--yes"]):
        done = as_user(b, shared.root, *args)
        assert (done.code, done.out, done.err) == (0, f"nothing to clean up in {shared.root}\n" + kept, ""), (args, done)
    assert sorted(os.listdir(shared.root)) == ["a-old"] and sorted(os.listdir(shared.root / "a-old")) == ["inbox", "status.json"]


@pytest.mark.slow
def test_root_is_held_to_the_owner_rule_and_clears_another_users_jobs_as_that_user(shared: SharedDir, their_python: tuple[Path, Path]) -> None:
    """uid 1001's job died. Root reads its private folder and judges it dead too, yet its
    cleanup keeps it, naming its owner; the administrator's way, cleanup run as 1001
    (`sudo -u alice forgather control cleanup`), deletes it."""
    a = OtherUser(VICTIM_UID, groups=attacker(shared).groups).with_python(their_python)
    running_by_hand(a, shared.root, "a-old", **identity(dead_pid()), heartbeat_at=time.time() - 3600)
    mine = run_cli("control", "cleanup", "--yes", env=base_env(shared.root))
    kept = "kept a-old: its folder belongs to uid 1001, not to you (uid 0 (root)); only its owner deletes it\n"
    assert (mine.code, mine.out, mine.err) == (0, f"nothing to clean up in {shared.root}\n" + kept, ""), mine
    assert os.listdir(shared.root) == ["a-old"]
    theirs = as_user(a, shared.root, "cleanup", "--yes")
    assert (theirs.code, theirs.out, theirs.err) == (0, f"deleted 1 job record(s) from {shared.root}\n", ""), theirs
    assert os.listdir(shared.root) == []
