"""The three `descore report` pages in a real headless Chromium (Debian's chromium + chromium-driver; nothing is
downloaded): opened from file://, every <video> loads and reports a finite duration > 0, the browser logs no error,
and a screenshot of the page is not blank. Then what a person looks at, asserted on the rendered DOM: the sort and
grouping controls of the scored-set page, the failures it flags (CoTs that do not parse, a judge out of its domain),
the videos of one prompt side by side, no mean reward for a Bradley-Terry head; the run page's standard-error bands,
axes and training curves; the evaluation page's facts.

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
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--window-size=1400,1000",
)


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
    judge = report_builders.judge_folder(root / "j")
    return {
        "scores": write_report(report_builders.scored_set(root / "s"), root / "out_scores"),
        "failing": write_report(report_builders.failing_scored_set(root / "f"), root / "out_failing", model=judge),
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


@pytest.mark.parametrize("kind, expected_videos", [("scores", 8), ("failing", 6), ("evaluation", 4), ("run", 32)])
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


def _visible_cards(browser):
    """[(group id, reward or None)] of the visible cards, in page order."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#cards .card')).filter(c => c.offsetParent !== null)"
        ".map(c => [c.parentElement.parentElement.id, c.dataset.kReward === '' ? null : parseFloat(c.dataset.kReward)])"
    )


def test_sorting_and_grouping_the_scored_set(browser, pages):
    from selenium.webdriver.support.ui import Select

    open_page(browser, pages["scores"])
    cards = _visible_cards(browser)
    assert len(cards) == 9  # 8 scored + the failed one
    groups = list(dict.fromkeys(group for group, _ in cards))
    assert len(groups) == 4 and "flat" not in groups  # one group per prompt, the flat list hidden
    for group in groups:  # sorted within each prompt, highest first
        rewards = [r for g, r in cards if g == group and r is not None]
        assert rewards == sorted(rewards, reverse=True) and len(rewards) >= 2
    bests = [max(r for g, r in cards if g == group and r is not None) for group in groups]
    assert bests == sorted(bests, reverse=True)  # the prompts ordered by their best video
    browser.find_element("id", "group-by-prompt").click()  # one flat list, sorted as a whole
    cards = _visible_cards(browser)
    assert {group for group, _ in cards} == {"flat"}
    shown = [r for _, r in cards if r is not None]
    assert shown == sorted(shown, reverse=True) and len(shown) == 8
    Select(browser.find_element("id", "sort-order")).select_by_value("asc")
    shown = [r for _, r in _visible_cards(browser) if r is not None]
    assert shown == sorted(shown)
    browser.find_element("id", "filter-min").send_keys("0.9")
    shown = [r for _, r in _visible_cards(browser)]
    assert all(r is not None and r >= 0.9 for r in shown) and 0 < len(shown) < 9


def test_scores_page_says_what_failed(browser, pages):
    """The out-of-domain judge: 5 of 6 CoTs unparsed, rewards far outside its recorded range; the page says so at
    the top, names the judge and the data, shows no mean reward, and puts each prompt's three videos in one row."""
    open_page(browser, pages["failing"])
    tiles = {
        browser.execute_script("return arguments[0].querySelector('.k').textContent", tile): (
            tile.find_element("css selector", ".v").text,
            "bad" in tile.get_attribute("class"),
        )
        for tile in browser.find_elements("css selector", ".tile")
    }
    assert tiles["CoTs not parsed"] == ("5 of 6", True) and tiles["videos that failed"] == ("0", False)
    assert not any("mean" in label for label in tiles) and "errors" not in tiles
    kinds = [flag.get_attribute("data-kind") for flag in browser.find_elements("css selector", "#warnings .flag")]
    assert kinds == ["parse", "out_of_domain", "out_of_domain"]
    warnings = browser.find_element("id", "warnings").text
    assert "5 of 6 CoTs did not parse" in warnings and "4 of 6 rewards (-8.9 .. 2.7)" in warnings
    assert "0 ± 1" in warnings and "40 videos it was evaluated on (validation pairs)" in warnings
    assert browser.find_element("id", "no-mean").is_displayed()
    assert "Bradley-Terry" in browser.find_element("id", "no-mean").text
    subtitle = browser.find_element("css selector", "header p").text
    assert "judge: " + str(pages["failing"].parents[1] / "j" / "judge") in subtitle and "/data/videos" in subtitle
    # each prompt's videos side by side: one row, same top, left to right
    for group in browser.find_elements("css selector", ".group[data-prompt]"):
        boxes = browser.execute_script(
            "return Array.from(arguments[0].querySelectorAll('video')).map(v => v.getBoundingClientRect())"
            ".map(r => [r.top, r.left, r.width])",
            group,
        )
        assert len(boxes) == 3 and len({round(top) for top, _, _ in boxes}) == 1, boxes
        assert [left for _, left, _ in boxes] == sorted(left for _, left, _ in boxes) and boxes[0][2] > 100
    ranks = [e.text for e in browser.find_elements("css selector", ".rank")]
    assert ranks.count("rank 1 of 3, the prompt's best") == 2 and len(ranks) == 6


def _tile_values(browser) -> dict:
    return {
        tile.find_element("css selector", ".k").text: tile.find_element("css selector", ".v").text
        for tile in browser.find_elements("css selector", ".tile")
    }


def test_evaluation_page_names_model_data_and_truth(browser, pages):
    open_page(browser, pages["evaluation"])
    values = _tile_values(browser)
    assert values["max_new_tokens"] == "256" and values["CoTs parsed"] == "15 of 16 (94%)"
    assert values["official figure (ties as errors)"] == "0.750" and values["accuracy without ties"] == "0.750"
    subtitle = browser.find_element("css selector", "header p").text
    assert "model: " in subtitle and "pairs: " in subtitle and subtitle.endswith("pairs.jsonl")
    truths = browser.find_elements("css selector", ".pair .truth")
    assert len(truths) == 2
    for truth in truths:  # one dimension differs in a synthetic pair, and its row is the highlighted one
        marked = truth.find_elements("css selector", "tr.differs")
        assert len(marked) == 1 and marked[0].is_displayed()
        name = marked[0].find_element("css selector", "td").text
        assert f"the videos differ in {name}: A" in truth.text
    unparsed = browser.find_elements("css selector", ".pair .parse-error")
    assert len(unparsed) == 1 and unparsed[0].text == "CoT not parsed: no <answer> block"


def test_run_page_curves_have_error_bands_and_honest_axes(browser, pages):
    open_page(browser, pages["run"])
    charts = {
        chart.get_attribute("aria-label"): chart for chart in browser.find_elements("css selector", "#eval-curves svg")
    }
    optimised = charts["descore (optimised)"]
    band = optimised.find_element("css selector", "polygon.se-band")
    assert band.rect["height"] > 2  # a visible band around the mean
    assert "SE)" in optimised.find_element("css selector", "text.note").text
    style = charts["dimension style"]  # the 0-2 rubric stays on the axis
    ticks = [t.text for t in style.find_elements("css selector", "text[text-anchor='end']")]
    assert float(ticks[0]) <= 0.0 and float(ticks[-1]) >= 2.0
    assert "-" in style.find_element("css selector", "text.note").text  # the style score fell
    student = charts["student (independent check)"]  # flat noise: the axis spans >= 6 SE, the change is ~0 SE
    note = student.find_element("css selector", "text.note").text
    assert abs(float(note.rsplit("(", 1)[1].split(" ")[0])) < 3
    training = {
        chart.get_attribute("aria-label") for chart in browser.find_elements("css selector", "#training-curves svg")
    }
    assert "train/loss" in training
    assert "student" in browser.find_element("id", "checks").text
