"""Who the explorer answers: its own pages on this machine, nothing else.

The explorer runs code on request (the course's snippets, a learner's exercise in
the grader's child process), so a page from another site open in the same browser
must not be able to drive it. Three checks, each refusing with a 403 and a message:

- ``Host``: where the server listens on loopback, only loopback names (a page that
  rebinds its own DNS name to 127.0.0.1 still sends its own name);
- ``Origin`` (and ``Sec-Fetch-Site``): a request a browser sends from another origin;
- the token: every POST, PUT, PATCH and DELETE under ``/api/`` carries the per-launch
  secret in ``X-QKV-Token``. The server writes it into the pages it serves (a
  ``<meta name="qkv-token">`` tag); another site's page cannot read them.

>>> guard = Guard(token="s3cret-token", allowed_hosts=["127.0.0.1", "localhost"])
>>> guard.refusal("GET", "/api/health", {"host": "127.0.0.1:8765"}) is None
True
>>> guard.refusal("GET", "/", {"host": "evil.example:8765"})[:36]
"Host 'evil.example:8765' is refused:"
>>> guard.refusal("POST", "/api/lab", {"host": "localhost:8765", "x-qkv-token": "s3cret-token"}) is None
True
>>> guard.refusal("POST", "/api/lab", {"host": "localhost:8765"})[:30]
'missing token: this server ans'
>>> guard.refusal("POST", "/api/lab", {"host": "localhost:8765", "origin": "https://evil.example"})[:30]
"Origin 'https://evil.example' "
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

__all__ = ["TOKEN_HEADER", "Guard"]

TOKEN_HEADER = "x-qkv-token"
PLACEHOLDER = b"__QKV_TOKEN__"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RELOAD = "reload the page from the address `qkv explore` (or `qkv learn`) printed"


def _hostname(host: str) -> str:
    """``127.0.0.1:8765`` -> ``127.0.0.1``; ``[::1]:8765`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """The three checks, and the pages with the token written in."""

    def __init__(self, *, token: str | None = None, allowed_hosts: Sequence[str] | None = None) -> None:
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ValueError("token: expected a secret of at least 8 characters, or None for a random one")
        self.token = token if token is not None else secrets.token_urlsafe(32)
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    def page(self, html: bytes) -> bytes:
        """``html`` with the token in its ``qkv-token`` meta tag."""
        return html.replace(PLACEHOLDER, self.token.encode("ascii"))

    def refusal(self, method: str, path: str, headers: Mapping[str, str]) -> str | None:
        """Why a request is refused (the 403's message), or None to serve it."""
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host).lower() not in self.allowed_hosts:
            names = ", ".join(sorted(self.allowed_hosts))
            return (
                f"Host {host[:80]!r} is refused: this server answers only to {names} "
                f"(a guard against DNS rebinding); open it as http://127.0.0.1:PORT/"
            )
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
            return (
                f"Origin {origin[:80]!r} is refused: this server answers only its own pages, "
                "not another site's; open the explorer from the address it printed"
            )
        if headers.get("sec-fetch-site") == "cross-site":
            return "a cross-site request is refused: this server answers only its own pages"
        if method.upper() not in SAFE_METHODS and path.startswith("/api/"):
            given = headers.get(TOKEN_HEADER)
            if given is None:
                return f"missing token: this server answers changes only from its own pages; {RELOAD}"
            if not secrets.compare_digest(given.encode("utf-8", "replace"), self.token.encode("ascii")):
                return f"wrong token (the server was restarted since the page was loaded?); {RELOAD}"
        return None
