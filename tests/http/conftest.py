"""The browser for the progress page's tests: Debian's headless chromium driven by
Playwright (which cannot download its own browsers here)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

from rlm_service.server import Server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
    "chromium-browser")
# Screenshots and other files a CI run keeps.
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "test-artifacts")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found: `make test` installs Debian's chromium with apt when run as "
           "root (`make page-deps`); otherwise install it or set CHROMIUM=/path/to/chromium")


@dataclass
class Browser:
    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, timeout=30_000)
        try:
            context = await chromium.new_context(viewport={"width": 1280, "height": 900},
                                                 accept_downloads=True)
            context.set_default_timeout(15_000)
            page = await context.new_page()
            seen = Browser(page)
            page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
            page.on("console", lambda msg: seen.errors.append(msg.text)
                    if msg.type == "error" else None)
            page.on("request", lambda req: seen.requests.append(req.url))
            yield seen
        finally:
            await chromium.close()


def page_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.http_port}/"
