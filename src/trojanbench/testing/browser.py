"""Headless Chromium for tests (ours and plug-in authors'): Debian's /usr/bin/chromium driven by playwright,
never a downloaded browser. Tests skip without it, unless TROJANBENCH_REQUIRE_BROWSER=1 (CI) makes them fail."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None and os.environ.get("TROJANBENCH_REQUIRE_BROWSER") == "1":
        pytest.fail("Chromium and playwright are required here (TROJANBENCH_REQUIRE_BROWSER=1); `make test` installs them")
    if path is None:
        pytest.skip("no Chromium/playwright on this machine (`make test` installs them where it can)")
    return path


def open_page(url, executable, screenshot=None):
    """Load `url` in headless Chromium; returns (console errors, [(src, naturalWidth)] of every image)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.src, i.complete ? i.naturalWidth : 0])")
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return errors, images
