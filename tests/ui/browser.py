"""Real Debian chromium driven by Playwright (``executable_path``: Playwright never downloads a browser here).

Each test saves a screenshot of the pages it visits to ``test-artifacts/screenshots/`` (the CI keeps
that folder): people look at them, the README shows some.
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import quote
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    explicit = os.environ.get("TUNELAB_CHROMIUM")
    if explicit:
        return explicit
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def screenshot(page, name: str) -> Path:
    """Save the whole page as ``test-artifacts/screenshots/NAME.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page, url: str, key: str, then: str = "/ui/") -> None:
    page.goto(f"{url}/ui/login?next={quote(then, safe='/')}")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


@pytest.fixture(scope="session")
def chromium():
    """A launched chromium (headless), or a skip naming what is missing."""
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium with apt)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium):
    """A fresh browser context (own cookies) and page, 1440x900."""
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()
