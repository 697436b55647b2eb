"""The web page's token is never in a process's argv nor in the browser's history:
``forgather control ui`` opens the browser on a 0600 file that holds a single-use code
(ps shows its path only), and the address it prints carries another single-use code
that expires. Whatever a local user finds in ``ps`` or the history gets 401/403."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from support.env import base_env
from support.paths import FORGATHER
from support.ui import browser, write_job
from support.waiting import wait_for

pytestmark = pytest.mark.xdist_group("chromium")

#: Stands in for the user's browser (webbrowser runs $BROWSER): records its argv, exits.
FAKE_BROWSER = """#!/bin/sh
printf '%s\\n' "$@" > "$0.argv"
"""


def _cmdlines() -> dict[int, str]:
    """Every process's command line, as any local user reads it (``ps``)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out[int(name)] = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def _secrets_in(text: str) -> set[str]:
    """Every query value and every long opaque word in ``text``: anything that could be a secret."""
    found = {v for url in re.findall(r"\w+://\S+", text) for _, v in parse_qsl(urlsplit(url).query)}
    return found | set(re.findall(r"[A-Za-z0-9_\-]{20,}", text))


def _refused(base: str, value: str) -> None:
    """``value`` is no key to the page: as a bearer, a token or a code."""
    with httpx.Client() as c:
        assert c.get(f"{base}/api/jobs", headers={"Authorization": f"Bearer {value}"}).status_code == 401, value
        for key in ("token", "code"):
            r = c.get(f"{base}/", params={key: value})
            assert r.status_code in (401, 403) or (r.status_code == 303 and r.headers["location"].startswith("/login")), (key, value, r.status_code)
            assert "set-cookie" not in r.headers, (key, value)


def test_the_token_is_in_no_argv_and_no_history_and_what_is_there_opens_nothing(jobs_dir: Path, tmp_path: Path) -> None:
    write_job(jobs_dir, "mine", state="running", step=1, alive=True)
    fake = tmp_path / "browser.sh"
    fake.write_text(FAKE_BROWSER)
    fake.chmod(0o755)
    token = "T" * 43  # the server's token, known here to look for it
    env = base_env(jobs_dir, BROWSER=f"{fake} %s", FORGATHER_UI_TOKEN=token)
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen([*FORGATHER, "control", "ui", "--port", "0"], env=env, stdout=fh, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: Path(f"{fake}.argv").exists() or proc.poll() is not None, timeout=60, what="the browser to be opened")
        printed = out.read_text().strip()
        base = printed.split("/?")[0]
        argv = Path(f"{fake}.argv").read_text()
        everyone = _cmdlines()
        assert token not in argv and all(token not in line for line in everyone.values())
        opened = argv.strip()
        assert opened.startswith("file://"), argv  # a file, not the address with a secret in it
        target = Path(opened.removeprefix("file://"))
        assert target.stat().st_mode & 0o777 == 0o600 and target.parent.stat().st_mode & 0o777 == 0o700

        # the browser follows the file; what it navigated to is its history
        with browser() as b:
            page = b.new_page()
            seen: list[str] = []
            page.on("framenavigated", lambda frame: seen.append(frame.url) if frame == page.main_frame else None)
            page.goto(opened)
            page.wait_for_url(f"{base}/", timeout=30_000)
            page.wait_for_selector("text=mine", timeout=30_000)
            assert all(token not in url for url in seen), seen
            leaked = set().union(
                *(_secrets_in(u) for u in seen), *(_secrets_in(line) for line in everyone.values() if str(fake) in line or "forgather" in line)
            )
            for value in leaked:
                _refused(base, value)
            # the printed address logs in once (a person on a remote shell), then never again
            with httpx.Client() as c:
                first = c.get(printed)
                assert first.status_code == 200 and 'content="0;url=/"' in first.text and "set-cookie" in first.headers
                assert c.get(f"{base}/api/jobs", cookies=first.cookies).status_code == 200
            _refused(base, dict(parse_qsl(urlsplit(printed).query))["code"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not target.exists(), "the login file goes with the server"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
