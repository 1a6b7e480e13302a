"""The report page in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) via
selenium loads report.html from disk and checks that every image loads, the tables hold the JSON's numbers,
nothing is fetched and the console logs no error.

Skipped only where the browser, its driver or selenium is missing AND ``FAIRMONAI_REQUIRE_BROWSER`` is unset;
CI (``.ci/run``) installs them and sets it, so there the test cannot skip in silence.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from report_fixture import compare_tables, write_run_dir

from fairmonai.report import render_report

REQUIRED = os.environ.get("FAIRMONAI_REQUIRE_BROWSER", "") not in ("", "0")


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if found:
            return found
    return None


def _missing() -> list[str]:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if _find("chromium", "chromium-browser") is None:
        missing.append("chromium (apt-get install chromium)")
    if _find("chromedriver") is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    return missing


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = _missing()
    if missing:
        message = "the browser test needs " + ", ".join(missing)
        if REQUIRED:
            pytest.fail(f"{message}; FAIRMONAI_REQUIRE_BROWSER is set, so it may not skip")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "chromium-browser")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver named explicitly: selenium then looks nothing up on the network
    driver = webdriver.Chrome(service=Service(executable_path=_find("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def loaded(browser, tmp_path_factory):
    run = write_run_dir(tmp_path_factory.mktemp("run"))
    page = render_report(run)
    browser.get_log("browser")  # start from an empty console
    browser.get(page.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    return browser, json.loads((run / "report.json").read_text()), browser.get_log("browser")


def test_every_image_loads(loaded):
    driver, _, _ = loaded
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
    )
    assert len(images) == 10  # 9 figures and the generator's sample grid
    for complete, width, height, alt in images:
        assert complete and width > 0 and height > 0, alt
    # nothing came from outside the page: data URIs only, no file or network resource
    assert driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []


def test_tables_hold_the_json_numbers(loaded):
    driver, report, _ = loaded
    tables = driver.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('table[id]')).map(t => [t.id, "
        "Array.from(t.querySelectorAll('td[data-value]')).map(td => Object.assign({text: td.textContent}, "
        "td.dataset))]))"
    )
    assert compare_tables(tables, report) == 166
    title = driver.execute_script("return document.title")
    assert title == report["title"]  # the <script> in it is text, not markup
    assert driver.execute_script("return document.scripts.length") == 0


def test_console_has_no_errors(loaded, browser, tmp_path):
    _, _, log = loaded
    assert [e for e in log if e["level"] == "SEVERE"] == []
    # the check itself works: a page with a broken image logs a SEVERE entry in this same browser
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><img src="nope.png">')
    browser.get(broken.as_uri())
    assert any(e["level"] == "SEVERE" and "nope.png" in e["message"] for e in browser.get_log("browser"))
