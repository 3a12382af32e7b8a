"""Open a local HTML page in headless Chromium (selenium) and report what it loaded.

Used by the report tests (marker ``browser``).  Chromium and chromedriver come from the
Debian packages ``chromium`` and ``chromium-driver``; selenium is pointed at them
explicitly and told to stay offline, so selenium-manager never downloads a driver.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path(os.environ.get("BIDS_KETAMINE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BIDS_KETAMINE_CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)

_IMAGES_JS = """
return Array.from(document.images).map(function (img) {
  return {src: img.currentSrc || img.src, naturalWidth: img.naturalWidth,
          naturalHeight: img.naturalHeight, complete: img.complete};
});
"""
_RESOURCES_JS = """
return performance.getEntriesByType('resource').map(function (e) { return e.name; });
"""


def chromium_available() -> str | None:
    """None when headless Chromium can be driven here, else the reason it cannot."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{path} not found: install the Debian package '{package}' to run browser tests"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install 'bids_ketamine[test]'"
    return None


@dataclass
class LoadedPage:
    """What Chromium loaded for one page.

    Attributes
    ----------
    url : str
        The page's URL (``file://...``).
    title : str
    images : list of dict
        One per ``<img>``: ``src``, ``naturalWidth``, ``naturalHeight``, ``complete``.
    resources : list of str
        URLs of every resource the page requested: the Resource Timing API's entries
        and every ``Network.requestWillBeSent`` of Chromium's performance log (which
        also lists ``file://`` requests, absent from Resource Timing).
    screenshot : Path
        Full-page PNG screenshot.
    height : int
        Height of the page in CSS pixels.
    """

    url: str
    title: str
    images: list[dict] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    height: int = 0


def open_in_chromium(
    page: Path,
    screenshot: Path,
    *,
    width: int = 1320,
    max_height: int = 16000,
    timeout: float = 60.0,
) -> LoadedPage:
    """Load ``page`` in a fresh headless Chromium, collect its images and requests, screenshot it.

    Parameters
    ----------
    page : Path
        A local HTML file.
    screenshot : Path
        Where to save the full-page PNG screenshot.
    width : int
        Window width in pixels.
    max_height : int
        Cap on the screenshot height.
    timeout : float
        Page-load timeout in seconds.

    Returns
    -------
    LoadedPage
    """
    reason = chromium_available()
    if reason is not None:
        raise RuntimeError(reason)
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="bids-ketamine-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},900")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(timeout)
        driver.get(Path(page).resolve().as_uri())
        height = int(driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);"))
        driver.set_window_size(width, min(max(height, 600), max_height))
        loaded = LoadedPage(
            url=driver.current_url,
            title=driver.title,
            images=list(driver.execute_script(_IMAGES_JS)),
            resources=list(driver.execute_script(_RESOURCES_JS))
            + _requested_urls(driver, driver.current_url),
            height=height,
        )
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        loaded.screenshot = screenshot
        return loaded
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _requested_urls(driver, document_url: str) -> list[str]:
    """URLs requested by ``document_url``, from Chromium's performance (DevTools network) log.

    The page itself is included; requests of other documents (Chromium's own start-up
    tab) are not.
    """
    urls = []
    for entry in driver.get_log("performance"):
        try:
            message = json.loads(entry["message"])["message"]
        except (KeyError, ValueError):
            continue
        if message.get("method") == "Network.requestWillBeSent":
            params = message.get("params", {})
            url = params.get("request", {}).get("url")
            if url and params.get("documentURL") == document_url:
                urls.append(url)
    return urls
