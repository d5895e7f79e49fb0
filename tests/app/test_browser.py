"""The web page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium):
upload a photo and see the nearest gallery images; compare two photos and see the verdict."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.app.conftest import live_server

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


@pytest.fixture
def browser() -> Iterator[Any]:
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
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


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
