"""SLURM compressed node lists, expanded by the launcher itself (pure, no SLURM needed;
one test cross-checks against `scontrol show hostnames` when SLURM's tools are here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.services import require_service

from forgather_control.launcher.nodelist import NodeListError, expand_nodelist, first_node


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n1", ["n1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("node[01-04,07],gpu-a[1-2]", ["node01", "node02", "node03", "node04", "node07", "gpu-a1", "gpu-a2"]),
        ("x[8-11]", ["x8", "x9", "x10", "x11"]),
        ("x[08-11]", ["x08", "x09", "x10", "x11"]),
        ("x[098-101]", ["x098", "x099", "x100", "x101"]),
        ("a,b,c", ["a", "b", "c"]),
        ("r[1-2]n[08-09]", ["r1n08", "r1n09", "r2n08", "r2n09"]),
        ("rack[1-2]-gpu", ["rack1-gpu", "rack2-gpu"]),
        ("host.example.com,node[3]", ["host.example.com", "node3"]),
        ("c[5,3,4]", ["c5", "c3", "c4"]),
        (" n[1-2] ", ["n1", "n2"]),
    ],
)
def test_expand(text: str, expected: list[str]) -> None:
    assert expand_nodelist(text) == expected


def test_first_node_is_the_rendezvous_host() -> None:
    assert first_node("node[07-09],a1") == "node07"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("n[1-2", "unclosed"),
        ("n1-2]", "unbalanced"),
        ("n[[1]]", "nested"),
        ("n[2-1]", "backwards"),
        ("n[a-b]", "bad range"),
        ("n[1-2],,m", "empty item"),
        ("n[1-99999999]", "too large"),
    ],
)
def test_bad_lists_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(NodeListError) as err:
        expand_nodelist(text)
    assert fragment in str(err.value)
    if text:
        assert repr(text.strip()) in str(err.value) or text in str(err.value)


def test_agrees_with_scontrol() -> None:
    require_service("SLURM's scontrol", shutil.which("scontrol") is not None, "not installed (tests/slurm/cluster-up.sh installs it)")
    text = "node[01-04,07],gpu-a[1-2],x[8-11],y[098-101]"
    env = dict(os.environ)
    conf = Path(os.environ.get("SLURM_TESTBED_DIR", "/tmp/forgather-slurm")) / "etc" / "slurm.conf"
    if "SLURM_CONF" not in env and conf.is_file():
        env["SLURM_CONF"] = str(conf)
    proc = subprocess.run(["scontrol", "show", "hostnames", text], capture_output=True, text=True, timeout=30, env=env)
    require_service("SLURM's scontrol", proc.returncode == 0, f"it cannot run without a SLURM config: {proc.stderr.strip()}")
    assert expand_nodelist(text) == proc.stdout.split()
