"""The page server's guard, over real HTTP on loopback: the token and its cookies, the
bearer token, the Host check, and the refusal of cross-site requests."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.ui import ui_server, write_job

from forgather_control.ui import UiConfig
from forgather_control.ui.auth import CSRF_HEADER


@pytest.fixture
def server(jobs_dir: Path) -> Iterator:
    write_job(jobs_dir, "secret-job-1", state="running", step=5, max_steps=10, alive=True)
    with ui_server(jobs_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One server for the tests that only read from it (the Host rule): a server per case
    only adds its start and stop."""
    jobs_dir = tmp_path_factory.mktemp("shared") / "jobs"
    write_job(jobs_dir, "secret-job-1", state="running", step=5, max_steps=10, alive=True)
    with ui_server(jobs_dir) as srv:
        yield srv


def logged_in(server) -> httpx.Client:
    client = httpx.Client(base_url=server.url, follow_redirects=False)
    r = client.get("/", params={"token": server.config.token})
    assert r.status_code == 303 and r.headers["location"] == "/"
    return client


def raw(server, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """A request with exactly these headers (Host included), as a hostile page sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, body


def test_no_token_no_job_data(server) -> None:
    with httpx.Client(base_url=server.url) as c:
        page = c.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        login = c.get("/login")
        assert login.status_code == 200 and "needs its token" in login.text and "secret-job-1" not in login.text
        for path in (
            "/api/jobs",
            "/api/session",
            "/api/sparklines",
            "/api/jobs/secret-job-1",
            "/api/jobs/secret-job-1/metrics",
            "/metrics",
            "/static/js/app.js",
        ):
            r = c.get(path)
            assert r.status_code == 401, path
            assert "secret-job-1" not in r.text, path
        assert c.get("/static/css/app.css").status_code == 200, "the login page's own style is open"


def test_token_becomes_cookies_and_leaves_the_address(server) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as c:
        r = c.get("/", params={"token": server.config.token})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookies = {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}
        session = cookies[f"forgather_ui_session_{server.port}"]
        csrf = cookies[f"forgather_ui_csrf_{server.port}"]
        assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
        assert "HttpOnly" not in csrf and "SameSite=strict" in csrf, "the page reads the CSRF value"
        assert server.config.token not in session + csrf, "the cookie is not the token"
        jobs = c.get("/api/jobs")
        assert jobs.status_code == 200 and [row["job_id"] for row in jobs.json()["rows"]] == ["secret-job-1"]
        assert c.get("/jobs/secret-job-1").status_code == 200
        assert c.get("/jobs/secret-job-1", params={"token": server.config.token}).headers["location"] == "/jobs/secret-job-1"


def test_wrong_token_and_token_elsewhere(server) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as c:
        r = c.get("/", params={"token": "x" * 43})
        assert r.status_code == 303 and r.headers["location"] == "/login?wrong=1"
        assert not r.headers.get_list("set-cookie")
        r = c.get("/api/jobs", params={"token": server.config.token})
        assert r.status_code == 401 and "only taken by the page" in r.json()["detail"], "a token in an API address is refused, not used"


def test_bearer_token(server) -> None:
    with httpx.Client(base_url=server.url) as c:
        good = {"Authorization": f"Bearer {server.config.token}"}
        assert c.get("/api/jobs", headers=good).status_code == 200
        assert c.get("/metrics", headers=good).status_code == 200
        assert c.get("/api/jobs", headers={"Authorization": "Bearer " + "y" * 43}).status_code == 401
        assert c.get("/api/jobs", headers={"Authorization": server.config.token}).status_code == 401


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "localhost:evil", "evil.example:{port}", "[::2]:{port}", ""])
def test_host_check(shared_server, host: str) -> None:
    server = shared_server
    headers = {"Host": host.format(port=server.port)} if host else {}
    status, body = raw(server, "GET", f"/?token={server.config.token}", headers)
    if not host:  # HTTP/1.1 without a Host header: httptools lets it through, the Host check refuses it
        assert status == 403 and "not local" in body and "token" not in body, (status, body)
        return
    assert status == 403 and "not local" in body, (host, status, body)
    assert raw(server, "GET", "/login", headers)[0] == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "127.0.0.2:{port}"])
def test_local_hosts_pass(shared_server, host: str) -> None:
    server = shared_server
    status, _ = raw(server, "GET", "/login", {"Host": host.format(port=server.port)})
    assert status == 200


def test_cross_site_post_refused(server, jobs_dir: Path) -> None:
    c = logged_in(server)
    csrf = c.cookies[f"forgather_ui_csrf_{server.port}"]
    here = f"http://127.0.0.1:{server.port}"
    url = "/api/jobs/secret-job-1/commands"
    body = {"command": "abort"}
    cases = {
        "no CSRF header": {"Origin": here},
        "wrong CSRF header": {CSRF_HEADER: "z" * 43, "Origin": here},
        "another port of this host": {CSRF_HEADER: csrf, "Origin": f"http://127.0.0.1:{server.port + 1}"},
        "another site": {CSRF_HEADER: csrf, "Origin": "http://evil.example"},
        "a null origin": {CSRF_HEADER: csrf, "Origin": "null"},
        "no Origin nor Referer": {CSRF_HEADER: csrf},
        "a Referer from elsewhere": {CSRF_HEADER: csrf, "Referer": "http://evil.example/page"},
    }
    for why, headers in cases.items():
        r = c.post(url, json=body, headers=headers)
        assert r.status_code == 403, (why, r.status_code, r.text)
        assert "cross-site" in r.json()["detail"], why
    assert list((jobs_dir / "secret-job-1" / "inbox").iterdir()) == [], "nothing reached the job"
    # the page's own request passes the guard (the job, with no control plane, then refuses it)
    ok = c.post(url, json=body, headers={CSRF_HEADER: csrf, "Origin": here})
    assert ok.status_code == 503 and "endpoint" in ok.json()["detail"], ok.text
    assert c.post(url, json=body, headers={CSRF_HEADER: csrf, "Referer": here + "/jobs/secret-job-1"}).status_code == 503
    # a form post (text/plain) is not a command either
    r = c.post(url, content=b"command=abort", headers={CSRF_HEADER: csrf, "Origin": here, "Content-Type": "text/plain"})
    assert r.status_code == 415
    # a bearer request needs no CSRF value: no other page can make a browser send one
    r = httpx.post(server.url + url, json=body, headers={"Authorization": f"Bearer {server.config.token}"})
    assert r.status_code == 503
    c.close()


def test_security_headers_and_logout(server) -> None:
    c = logged_in(server)
    r = c.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    csrf = c.cookies[f"forgather_ui_csrf_{server.port}"]
    session = c.cookies[f"forgather_ui_session_{server.port}"]
    out = c.post("/api/logout", headers={CSRF_HEADER: csrf, "Origin": server.url})
    assert out.status_code == 200
    stale = httpx.get(server.url + "/api/jobs", cookies={f"forgather_ui_session_{server.port}": session})
    assert stale.status_code == 401, "a session ended by logging out does not come back"
    c.close()


def test_config_refuses_short_tokens_and_knows_loopback() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        UiConfig(token="short")
    assert UiConfig().loopback and UiConfig(host="::1").loopback and UiConfig(host="localhost").loopback
    assert not UiConfig(host="0.0.0.0").loopback
    assert UiConfig().token != UiConfig().token, "a fresh token every time"
