"""The three `descore report` pages in a real headless Chromium (Debian's chromium + chromium-driver; nothing is
downloaded): opened from file://, every <video> loads and reports a finite duration > 0, the browser logs no error,
and a screenshot of the page is not blank. The sort control of the scored-set page reorders the cards.

Screenshots are kept in the test's temporary directory (the path is printed with -s) to look at."""

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import report_builders
from descore_plugin.report import write_report

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio",
         "--window-size=1400,1000")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_pages")
    return {
        "scores": write_report(report_builders.scored_set(root / "s"), root / "out_scores"),
        "evaluation": write_report(report_builders.evaluation(root / "e"), root / "out_evaluation"),
        "run": write_report(report_builders.run(root / "r", hacked=True), root / "out_run"),
    }


VIDEO_STATE = """
return Array.from(document.querySelectorAll('video')).map(v => ({
    src: v.currentSrc, ready: v.readyState, duration: v.duration, error: v.error ? v.error.code : null}));
"""


def open_page(browser, index: Path, timeout: float = 30.0) -> list:
    """Load `index` from file:// and wait until every video has its metadata (or failed); returns their states."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(index.as_uri())
    deadline = time.monotonic() + timeout
    while True:
        states = browser.execute_script(VIDEO_STATE)
        if all(s["ready"] >= 1 or s["error"] for s in states) or time.monotonic() > deadline:
            return states


def screenshot(browser, index: Path) -> np.ndarray:
    """A PNG of the whole page (window grown to the page's height, up to 4000 px) next to it, as an RGB array."""
    from PIL import Image

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(4000, height + 120))
    time.sleep(0.5)
    path = index.with_name("screenshot.png")
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


@pytest.mark.parametrize("kind, expected_videos", [("scores", 8), ("evaluation", 4), ("run", 32)])
def test_page_loads_plays_and_draws(browser, pages, kind, expected_videos):
    states = open_page(browser, pages[kind])
    assert len(states) == expected_videos, states
    for state in states:
        assert state["error"] is None and state["ready"] >= 1, state
        assert np.isfinite(state["duration"]) and state["duration"] > 0, state
        assert state["src"].startswith("file://") and "/media/" in state["src"], state
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    image = screenshot(browser, pages[kind])
    assert image.std() > 20, f"the screenshot of the {kind} page is nearly blank (pixel std {image.std():.1f})"
    assert image.shape[0] > 600


def test_sorting_the_scored_set(browser, pages):
    from selenium.webdriver.support.ui import Select

    open_page(browser, pages["scores"])

    def rewards():
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#cards .card'))"
            ".filter(c => c.style.display !== 'none').map(c => c.dataset.kReward)")

    shown = [float(r) for r in rewards() if r]
    assert shown == sorted(shown, reverse=True) and len(shown) == 8
    Select(browser.find_element("id", "sort-order")).select_by_value("asc")
    shown = [float(r) for r in rewards() if r]
    assert shown == sorted(shown)
    browser.find_element("id", "filter-min").send_keys("0.9")
    assert all(float(r) >= 0.9 for r in rewards()) and 0 < len(rewards()) < 9
