"""``--token-file FILE``: the job's token read from a private file of the user's (the
check ``--notify-file`` makes, ``core.files.read_secret_file``), never printed; a literal
``--token`` still works, warned of on stderr without the token; both at once is a usage
error. The token in no running command's argv: tests/cli/test_token_secret.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.cli import run_cli_here
from support.ports import free_port

from forgather_control.client.remote import read_token_file

TOKEN = "s3cr3t-" + "T" * 36


def _token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_token_file_holds_the_token_on_one_line(tmp_path: Path) -> None:
    assert read_token_file(_token_file(tmp_path, f"{TOKEN}\n")) == TOKEN
    assert read_token_file(_token_file(tmp_path, f"  {TOKEN}  \n\n", 0o400)) == TOKEN  # read-only is private too


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("\n  \n", "is empty"),
        (f"{TOKEN}\n{TOKEN}\n", "holds more than one token"),
        (f"{TOKEN} s3cr3t\n", "holds more than one token"),
        (f"{TOKEN}\x1b\n", "a character a token has not"),
        (TOKEN * 200, "is larger than 4 KiB"),
    ],
)
def test_a_token_file_that_holds_no_one_token_is_refused_never_showing_its_text(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ValueError) as info:
        read_token_file(_token_file(tmp_path, text))
    assert said in str(info.value) and "s3cr3t" not in str(info.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o660])
def test_a_token_file_others_may_read_or_change_is_refused_saying_chmod_600(tmp_path: Path, mode: int) -> None:
    path = _token_file(tmp_path, TOKEN, mode)
    with pytest.raises(ValueError) as info:
        read_token_file(path)
    said = str(info.value)
    assert f"the token file {path} may be read or changed by other users (mode {mode:04o})" in said and f"chmod 600 {path}" in said
    assert "s3cr3t" not in said


def test_a_token_file_of_another_user_a_folder_or_none_is_refused(tmp_path: Path) -> None:
    path = _token_file(tmp_path, TOKEN)
    with pytest.raises(ValueError, match=r"cannot read the token file .*No such file"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(ValueError, match="is not a regular file"):
        read_token_file(tmp_path)
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, 54321, -1)
    with pytest.raises(ValueError, match=r"the token file .* is not yours \(owner uid 54321\)"):
        read_token_file(path)


# -- the command line ---------------------------------------------------------------------
def _closed() -> str:
    return f"127.0.0.1:{free_port()}"


def test_token_and_token_file_together_is_a_usage_error(tmp_path: Path) -> None:
    path = _token_file(tmp_path, TOKEN)
    res = run_cli_here("control", "list", "--remote", _closed(), "--token", TOKEN, "--token-file", str(path))
    assert res.code == 2 and "--token-file FILE or --token, not both" in res.err, res
    assert TOKEN not in res.out + res.err


def test_a_literal_token_is_warned_of_and_a_private_token_file_is_the_quiet_way(tmp_path: Path) -> None:
    res = run_cli_here("control", "list", "--remote", _closed(), "--token", TOKEN)
    assert res.code == 4, res  # it still works: the closed port is what fails
    assert "warning: --token puts the job's token on this command's command line" in res.err and "--token-file FILE" in res.err, res.err
    assert TOKEN not in res.out + res.err

    path = _token_file(tmp_path, f"{TOKEN}\n")
    res = run_cli_here("control", "status", "somejob", "--remote", _closed(), "--token-file", str(path))
    assert res.code == 4 and "warning" not in res.err and TOKEN not in res.out + res.err, res

    path.chmod(0o644)
    res = run_cli_here("control", "save", "somejob", "--remote", _closed(), "--token-file", str(path))
    assert res.code == 2 and f"--token-file: the token file {path}" in res.err and f"chmod 600 {path}" in res.err, res.err
    assert TOKEN not in res.out + res.err
