"""A real headless Chromium for tests, driven by Playwright's Python package.

Debian's chromium (``apt-get install chromium``, at ``/usr/bin/chromium``) is used,
never a downloaded browser. Without chromium or playwright the tests that use
`browser_page` skip, unless ``QKV_REQUIRE_BROWSER=1`` (CI sets it), where they fail.

Usage in a test module::

    from browser import browser_page          # tests/ is on sys.path under pytest

    def test_page(tmp_path):
        with browser_page() as page:
            page.goto(path.as_uri())
            ...
            page.assert_quiet()                  # no page errors, no network requests

``browser_page`` yields a Playwright ``Page`` with two extra attributes:
``page.errors`` (uncaught page errors and console errors) and ``page.requests``
(every URL the page asked for that is not ``file:``/``data:``/``blob:``/``about:``;
such requests are also aborted), and a method ``page.assert_quiet()``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def chromium_path() -> str | None:
    """Debian's chromium, or ``$QKV_CHROMIUM``, or one on PATH; None when there is none."""
    explicit = os.environ.get("QKV_CHROMIUM")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    for candidate in CHROMIUM_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    if os.environ.get("QKV_REQUIRE_BROWSER") == "1":
        pytest.fail(f"QKV_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def browser_page(width: int = 1200, height: int = 900) -> Iterator[object]:
    """A fresh page in headless Chromium; skips (or fails under QKV_REQUIRE_BROWSER=1) when unavailable."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install playwright)")
    executable = chromium_path()
    if executable is None:
        _unavailable("no chromium found (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            errors: list[str] = []
            requests: list[str] = []

            def on_route(route) -> None:
                url = route.request.url
                if url.startswith(LOCAL_SCHEMES):
                    route.continue_()
                else:
                    requests.append(url)
                    route.abort()

            context.route("**/*", on_route)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on(
                "console",
                lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None,
            )
            page.on(
                "request",
                lambda req: (
                    requests.append(req.url)
                    if not req.url.startswith(LOCAL_SCHEMES) and req.url not in requests
                    else None
                ),
            )
            page.errors = errors
            page.requests = requests

            def assert_quiet() -> None:
                assert not errors, f"the page reported errors: {errors}"
                assert not requests, f"the page asked the network for: {requests}"

            page.assert_quiet = assert_quiet
            yield page
        finally:
            browser.close()
