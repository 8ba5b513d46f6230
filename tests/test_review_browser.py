"""The review page in a real headless browser (Chromium from the system packages, driven by selenium): click through
a sample, reload (verdicts kept in localStorage), export, and score the downloaded verdicts with `metakl review`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_review import HOSTILE, make_stage

pytestmark = pytest.mark.timeout(180)


def _chromium() -> tuple[str, str]:
    """(chromium, chromedriver) from the Debian packages, installed with apt-get where missing (root only)."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium/chromedriver missing and apt-get unavailable (install: apt-get install chromium chromium-driver)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
                          capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:  # a stale package list: update once, then try again
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=300)
        done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
                              capture_output=True, text=True, env=env, timeout=600)
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.skip(f"apt-get could not install chromium: {(done.stderr or done.stdout).strip()[-300:]}")
    return found  # type: ignore[return-value]


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _chromium()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900",
                f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _metakl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metakl", *args], capture_output=True, text=True, timeout=120)


def test_review_page_click_reload_export_and_score(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    stage = make_stage(tmp_path / "merge")
    made = _metakl("review", str(stage), "--n", "6", "--seed", "3", "--out", str(tmp_path / "review"))
    assert made.returncode == 0, made.stderr
    items = [json.loads(line) for line in (tmp_path / "review" / "items.jsonl").read_text().splitlines()]
    assert any(i["question"] == HOSTILE for i in items)  # the hostile prompt is in the sample

    wait = WebDriverWait(browser, 15)
    browser.get((tmp_path / "review" / "review.html").as_uri())
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    assert browser.execute_script("return window.pwned === undefined")  # the prompt's script never ran
    cards = browser.find_elements(By.CSS_SELECTOR, "section.card")
    assert [c.get_attribute("data-id") for c in cards] == [i["id"] for i in items]
    hostile = next(c for c, i in zip(cards, items) if i["question"] == HOSTILE)
    assert hostile.find_element(By.CSS_SELECTOR, ".question").text == HOSTILE  # shown as text, exactly
    progress = browser.find_element(By.ID, "progress")
    assert progress.text.startswith("0 / 6 reviewed")

    browser.find_element(By.ID, "reviewer").send_keys("ann")
    cards[0].find_element(By.CSS_SELECTOR, ".verdict-right").click()
    cards[1].find_element(By.CSS_SELECTOR, ".verdict-wrong").click()
    cards[1].find_element(By.CSS_SELECTOR, ".note").send_keys("unit too broad")
    keys = ActionChains(browser)
    keys.send_keys(Keys.ESCAPE).perform()  # leave the note; `r` and `w` typed into it would be text
    # keyboard: select the third card, `w` marks it wrong and moves on, `r` marks the next one right
    cards[2].find_element(By.CSS_SELECTOR, ".meta").click()
    ActionChains(browser).send_keys("w").perform()
    ActionChains(browser).send_keys("r").perform()
    wait.until(EC.text_to_be_present_in_element((By.ID, "progress"), "4 / 6 reviewed (2 right, 2 wrong)"))

    browser.refresh()  # everything survives a reload
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    wait.until(EC.text_to_be_present_in_element((By.ID, "progress"), "4 / 6 reviewed (2 right, 2 wrong)"))
    cards = browser.find_elements(By.CSS_SELECTOR, "section.card")
    assert cards[1].find_element(By.CSS_SELECTOR, ".note").get_attribute("value") == "unit too broad"
    assert "wrong" in cards[1].get_attribute("class").split()
    assert browser.find_element(By.ID, "reviewer").get_attribute("value") == "ann"

    browser.find_element(By.ID, "export").click()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done = [p for p in browser.downloads.iterdir() if p.suffix == ".jsonl"]
        if done:
            break
        time.sleep(0.2)
    assert done, f"no download in {list(browser.downloads.iterdir())}"
    verdicts = [json.loads(line) for line in done[0].read_text().splitlines()]
    assert [(v["id"], v["verdict"], v["note"], v["reviewer"]) for v in verdicts] == [
        (items[0]["id"], "right", "", "ann"), (items[1]["id"], "wrong", "unit too broad", "ann"),
        (items[2]["id"], "wrong", "", "ann"), (items[3]["id"], "right", "", "ann")]
    assert all(v["timestamp"].endswith("Z") for v in verdicts)

    scored = _metakl("review", "--score", str(done[0]), "--items", str(tmp_path / "review" / "items.jsonl"))
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.splitlines()[0].startswith("agreement: 50.0% right (2/4, 95% CI 15.0%–85.0%)")
    assert "unreviewed: 2 of 6 items; reviewers: ann" in scored.stdout
