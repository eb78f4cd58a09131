"""The explorer answers only its own pages: Host, Origin and the per-launch token, each refused with a 403.

Checked on a real server (`serve_in_thread`) with raw HTTP requests, as another site's page
or a rebinding DNS name would send them; the model is never needed.
"""

from __future__ import annotations

import re

import httpx
import pytest

from qkv.explorer import create_app, serve_in_thread
from qkv.explorer.guard import Guard


@pytest.fixture(scope="module")
def server():
    app = create_app(loader=lambda name: pytest.fail("no model is needed"), allowed_hosts=["127.0.0.1", "localhost"])
    with serve_in_thread(app) as url:
        yield app, url


def _lab(url: str, **headers: str) -> httpx.Response:
    return httpx.post(url + "api/lab", json={"d_k": 4}, headers=headers, timeout=30)


@pytest.mark.parametrize("path", ["", "learn"])
def test_each_page_carries_this_launchs_token_and_a_change_with_it_is_served(server, path):
    app, url = server
    html = httpx.get(url + path, timeout=30).text
    token = re.search(r'<meta name="qkv-token" content="([^"]+)">', html).group(1)
    assert token == app.state.token and len(token) >= 32 and "__QKV_TOKEN__" not in html
    assert _lab(url, **{"X-QKV-Token": token}).status_code == 200


def test_two_launches_have_different_tokens():
    assert create_app().state.token != create_app().state.token


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({}, "missing token"),
        ({"X-QKV-Token": "guessed-token-value"}, "wrong token"),
    ],
)
def test_a_change_without_the_token_is_refused_with_a_403_and_a_message(server, headers, says):
    app, url = server
    r = _lab(url, **headers)
    assert r.status_code == 403 and says in r.json()["error"] and "reload the page" in r.json()["error"]


def test_reading_needs_no_token(server):
    app, url = server
    assert httpx.get(url + "api/health", timeout=30).status_code == 200


def test_a_cross_origin_post_is_refused_even_with_the_token(server):
    app, url = server
    r = _lab(url, **{"X-QKV-Token": app.state.token, "Origin": "https://evil.example"})
    assert r.status_code == 403 and "Origin 'https://evil.example' is refused" in r.json()["error"]
    r = _lab(url, **{"X-QKV-Token": app.state.token, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    same = url.rstrip("/")  # the page's own origin is fine
    assert _lab(url, **{"X-QKV-Token": app.state.token, "Origin": same}).status_code == 200


def test_a_foreign_host_name_is_refused_against_dns_rebinding(server):
    app, url = server
    port = url.rstrip("/").rsplit(":", 1)[1]
    r = httpx.get(url, headers={"Host": f"attacker.example:{port}"}, timeout=30)
    assert r.status_code == 403 and "DNS rebinding" in r.json()["error"]
    r = _lab(url, **{"Host": f"attacker.example:{port}", "X-QKV-Token": app.state.token})
    assert r.status_code == 403
    assert httpx.get(url, headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200


def test_a_refused_check_grades_nothing_and_records_nothing(server, tmp_path):
    """No token: the route that runs learner code refuses before it reads the body."""
    app, url = server
    from qkv.learn.progress import Progress
    from qkv.learn.tutor import Tutor

    app.state.tutor = Tutor(progress=Progress(tmp_path / "p.json"))
    r = httpx.post(url + "api/learn/check", json={"exercise": "softmax", "source": "def softmax(x, axis=-1): ..."})
    assert r.status_code == 403 and not (tmp_path / "p.json").exists()


def test_hosts_with_ports_and_ipv6_brackets_are_read_as_names():
    guard = Guard(token="a-long-enough-token", allowed_hosts=["::1", "127.0.0.1"])
    assert guard.refusal("GET", "/", {"host": "[::1]:8765"}) is None
    assert guard.refusal("GET", "/", {"host": "127.0.0.1"}) is None
    assert guard.refusal("GET", "/", {"host": "127.0.0.2:80"}) is not None
    with pytest.raises(ValueError, match="at least 8"):
        Guard(token="short")
