"""The web page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium):
upload a photo and see the nearest gallery images; compare two photos and see the verdict."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.settings import Settings
from tests.app.conftest import live_server, png_bytes
from tests.conftest import draw_shape

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")


def start_chromium(*extra: str) -> Any:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="imgsim-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        *extra,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.imgsim_profile = profile
    return driver


def stop_chromium(driver: Any) -> None:
    driver.quit()
    shutil.rmtree(driver.imgsim_profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        stop_chromium(driver)


@pytest.fixture
def offline_browser() -> Iterator[Any]:
    """Chromium with no network but loopback: every other host name fails to resolve (as on a machine
    without internet), so a page that needs a CDN shows it."""
    driver = start_chromium("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
    try:
        yield driver
    finally:
        stop_chromium(driver)


def test_page_search_and_compare(settings: Settings, gallery_files: list[Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    query = gallery_files[15]
    with live_server(settings) as base:
        expected = httpx.post(
            base + "/v1/search", files={"image": ("q.png", query.read_bytes())}, data={"k": "10"}
        ).json()["results"]
        driver.get(base + "/")
        driver.find_element(By.ID, "search-file").send_keys(str(query))
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 10)
        hits = driver.find_elements(By.CSS_SELECTOR, "#results .hit")
        labels = [h.find_element(By.CLASS_NAME, "label").text for h in hits]
        distances = [h.find_element(By.CLASS_NAME, "distance").text for h in hits]
        assert labels == [r["label"] for r in expected]
        assert labels[0] == query.parent.name and distances[0] == "distance 0.000"
        assert distances == [f"distance {r['distance']:.3f}" for r in expected]
        # Thumbnails arrive through fetch() (with the key header) and are decoded by the browser.
        wait.until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
            )
        )

        driver.find_element(By.ID, "compare-a").send_keys(str(query))
        driver.find_element(By.ID, "compare-b").send_keys(str(query))
        driver.find_element(By.ID, "compare-btn").click()
        wait.until(lambda d: "dissimilarity" in d.find_element(By.ID, "verdict").text)
        verdict = driver.find_element(By.ID, "verdict").text
        assert verdict.startswith("Same kind of dog") and "dissimilarity 0.000 (threshold 0.500)" in verdict
        assert "98 % likely the same kind" in verdict  # sigmoid(4 - 8 · 0): the tiny checkpoint's probability

        driver.find_element(By.ID, "compare-b").send_keys(str(gallery_files[40]))
        driver.find_element(By.ID, "compare-btn").click()
        truth = httpx.post(
            base + "/v1/compare", files=[("images", query.read_bytes()), ("images", gallery_files[40].read_bytes())]
        ).json()
        wait.until(lambda d: f"dissimilarity {truth['dissimilarity']:.3f}" in d.find_element(By.ID, "verdict").text)
        text = driver.find_element(By.ID, "verdict").text
        assert text.startswith("Same kind of dog" if truth["same"] else "Different dogs")


def test_view_large_more_like_this_label_filter_and_add(
    settings: Settings, gallery_files: list[Path], tmp_path: Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    secured = settings.model_copy(update={"api_keys_read": ["r1"], "api_keys_write": ["w1"]})
    query = gallery_files[15]
    with live_server(secured) as base:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 30)
        assert "lower distance = more similar" in driver.find_element(By.TAG_NAME, "body").text
        icon = driver.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
        assert httpx.get(icon).headers["content-type"] == "image/svg+xml"
        key = driver.find_element(By.ID, "api-key")
        key.send_keys("w1")
        key.send_keys("\t")  # change event: the labels load with the key
        wait.until(lambda d: len(Select(d.find_element(By.ID, "label")).options) == 5)
        Select(driver.find_element(By.ID, "label")).select_by_value("green_squares")
        driver.find_element(By.ID, "k").send_keys("5")
        driver.find_element(By.ID, "search-file").send_keys(str(query))  # a blue triangle, filtered to squares
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 5)
        labels = {h.text.splitlines()[0] for h in driver.find_elements(By.CSS_SELECTOR, "#results .hit")}
        assert labels == {"green_squares"}

        first = driver.find_elements(By.CSS_SELECTOR, "#results .hit")[0]
        item = int(first.get_attribute("data-id"))
        first.click()
        wait.until(lambda d: d.execute_script("const i = document.getElementById('viewer-image');"
                                              "return i.complete && i.naturalWidth > 0"))  # fmt: skip
        assert driver.find_element(By.ID, "viewer-image").get_property("naturalWidth") == 72  # the stored image
        assert f"item {item}" in driver.find_element(By.ID, "viewer-caption").text
        Select(driver.find_element(By.ID, "label")).select_by_value("")
        driver.find_element(By.ID, "more-like-this").click()
        expected = httpx.get(base + f"/v1/gallery/{item}/similar", params={"k": 5}, headers={"X-API-Key": "r1"}).json()
        wait.until(lambda d: f"like item {item}" in d.find_element(By.ID, "search-status").text)
        shown = [int(h.get_attribute("data-id")) for h in driver.find_elements(By.CSS_SELECTOR, "#results .hit")]
        assert shown == [h["id"] for h in expected["results"]] and item not in shown

        new = tmp_path / "new.png"
        png = png_bytes(draw_shape("yellow_bars", np.random.default_rng(99)))
        new.write_bytes(png)
        driver.find_element(By.ID, "add-file").send_keys(str(new))
        driver.find_element(By.ID, "add-label").send_keys("yellow_bars")
        driver.find_element(By.ID, "add-btn").click()
        wait.until(lambda d: "Added as item" in d.find_element(By.ID, "add-status").text)
        listed = httpx.get(base + "/v1/gallery", params={"label": "yellow_bars"}, headers={"X-API-Key": "r1"}).json()
        assert listed["total"] == 13

        key.clear()
        key.send_keys("r1\t")  # a read key may not add
        driver.find_element(By.ID, "add-btn").click()
        wait.until(lambda d: "Add failed" in d.find_element(By.ID, "add-status").text)
        assert "insufficient_scope" in driver.find_element(By.ID, "add-status").text


def test_docs_render_with_the_network_off(settings: Settings, offline_browser: Any) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = offline_browser
    with live_server(settings) as base:
        with pytest.raises(WebDriverException, match="ERR_NAME_NOT_RESOLVED"):  # the network is off for it
            driver.get("https://cdn.jsdelivr.net/")
        driver.get(base + "/docs")
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 12)
        summaries = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/search", "/v1/search/vector", "/v1/embed", "/v1/model", "/v1/gallery/{item_id}"} <= summaries
        assert "imgsim" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
