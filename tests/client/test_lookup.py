"""The library's pure rules for finding a job: remote addresses, the one prefix rule,
Ray's address, and the rule that never probes another host's loopback."""

from __future__ import annotations

import pytest
from support.records import identity, typed

from forgather_control.client.listing import useful_probe
from forgather_control.client.ray_listing import resolve_address
from forgather_control.client.remote import remote_url
from forgather_control.core import AmbiguousJob, JobNotFound, UsageError, match_job_id
from forgather_control.core.records import Endpoint


@pytest.mark.parametrize(
    ("given", "url"),
    [("node1:8000", "http://node1:8000"), ("127.0.0.1:1", "http://127.0.0.1:1"), ("http://h:2/", "http://h:2"), ("[::1]:5", "http://[::1]:5")],
)
def test_remote_url(given: str, url: str) -> None:
    assert remote_url(given) == url


@pytest.mark.parametrize("bad", ["node1", "node1:", ":80", "node1:http"])
def test_remote_url_refuses(bad: str) -> None:
    with pytest.raises(UsageError):
        remote_url(bad)


def test_one_prefix_rule() -> None:
    assert match_job_id("ab", ["abc", "xyz"], where="here") == "abc"
    assert match_job_id("abc", ["abc", "abcd"], where="here") == "abc"
    with pytest.raises(AmbiguousJob):
        match_job_id("a", ["abc", "abd"], where="here")
    with pytest.raises(JobNotFound):
        match_job_id("q", ["abc"], where="here")


def test_ray_address_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert resolve_address("auto") == "head:6379"
    assert resolve_address("other:1") == "other:1"


def test_never_probe_another_hosts_loopback() -> None:
    def probe(endpoint: dict) -> bool:
        return True

    me = identity()
    other = {"host": "elsewhere", "boot_id": "b", "pid": 1}
    assert useful_probe(typed(Endpoint, {**other, "url": "http://127.0.0.1:5000"}), probe) is None
    assert useful_probe(typed(Endpoint, {**other, "url": "http://localhost:5000"}), probe) is None
    assert useful_probe(typed(Endpoint, {**other, "url": "http://10.1.2.3:5000"}), probe) is probe
    assert useful_probe(typed(Endpoint, {**me, "url": "http://127.0.0.1:5000"}), probe) is probe
    assert useful_probe(typed(Endpoint, {**me, "url": "http://127.0.0.1:5000"}), probe, probe_local=False) is None
    assert useful_probe(None, probe) is None
