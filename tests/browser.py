"""Read what a web page really renders, with headless Chromium driven by Playwright.

The MLflow UI is a single-page app: its HTML is an empty shell and the content
arrives through later API calls, so a plain HTTP fetch proves nothing. These
helpers load a page in a real browser, wait until given texts are visible in the
rendered page (no fixed sleeps) and return the page's visible text.

Needs the ``playwright`` PyPI package (it bundles its driver; no browser download:
the system's Chromium is used) and a Chromium binary (Debian: ``chromium``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# As root Chromium refuses to start without --no-sandbox; /dev/shm is often tiny in containers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

_ALL_VISIBLE = """expect => {
  const text = document.body ? document.body.innerText : "";
  return expect.every(s => text.includes(s));
}"""


def find_chromium() -> str:
    """Path of a Chromium/Chrome binary: ``$CHROMIUM`` if set, else the first one on ``PATH``.

    Raises FileNotFoundError if there is none.
    """
    env = os.environ.get("CHROMIUM")
    if env:
        if Path(env).is_file() and os.access(env, os.X_OK):
            return env
        raise FileNotFoundError(f"$CHROMIUM={env!r} is not an executable file")
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(f"no Chromium found on PATH (tried {', '.join(_CANDIDATES)}); set $CHROMIUM")


def page_text(
    url: str,
    *,
    expect: Sequence[str],
    click: Sequence[str] = (),
    screenshot: Path | None = None,
    timeout: float = 60.0,
    viewport: tuple[int, int] = (1600, 1000),
) -> str:
    """Load ``url`` in headless Chromium and return its visible text (``document.body.innerText``).

    ``click``: Playwright selectors clicked in order once the page has loaded, each
    waited for first (e.g. ``'[role=gridcell]:has-text("parent") button'`` to expand
    a row). Then waits until every string of ``expect`` is in the visible text.
    ``screenshot`` (PNG) is written in every case, also on failure.
    ``timeout`` (seconds) bounds each wait.

    Raises AssertionError naming the missing texts (and an excerpt of what was shown)
    if they do not all appear in time, or if a ``click`` target never shows up.
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    ms = timeout * 1000
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(ms)
            problem = ""
            try:
                page.goto(url, wait_until="load")
                for selector in click:
                    page.locator(selector).first.click()
                page.wait_for_function(_ALL_VISIBLE, arg=list(expect), timeout=ms)
            except PlaywrightError as exc:  # includes TimeoutError
                problem = str(exc).splitlines()[0]
            text = page.inner_text("body")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    missing = [s for s in expect if s not in text]
    if problem or missing:
        shown = " | ".join(line.strip() for line in text.splitlines() if line.strip())[:1500]
        raise AssertionError(
            f"{url}: missing {missing} ({problem or 'not all texts visible'}); screenshot: {screenshot}; page showed: {shown}"
        )
    return text
