"""The web studio driven in headless Chromium: type a prompt, render on the tiny bundle, watch it play.

Needs Chromium and its driver (Debian: `apt-get install -y chromium chromium-driver`) and the
`selenium` package (the dev extra); skips, saying which is missing, where they are not installed.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
from serverutil import LiveServer

pytestmark = pytest.mark.server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("no headless browser: install Chromium and its driver (Debian: apt-get install -y chromium "
                "chromium-driver) to drive the web studio", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the selenium package (dev extra) is not installed")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1100,1000")
# Records every value the page assigns to the progress bar, so the test sees it move.
RECORD_PROGRESS = """
const bar = document.getElementById('progress');
const own = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');
window.progressSeen = [];
Object.defineProperty(bar, 'value', {get() { return own.get.call(this); },
                                     set(v) { window.progressSeen.push(Number(v)); own.set.call(this, v); }});
"""
AUDIO_STATE = """
const done = arguments[arguments.length - 1];
const audio = document.querySelector('#results-list audio');
const report = () => done({src: audio.src, readyState: audio.readyState, duration: audio.duration,
                           error: audio.error && audio.error.code,
                           link: audio.parentElement.querySelector('a[download]').href});
if (audio.readyState >= 1 || audio.error) report();
else { audio.addEventListener('loadedmetadata', report); audio.addEventListener('error', report); audio.load(); }
"""


@pytest.fixture(scope="module")
def server(demo_pipeline, tmp_path_factory):
    live = LiveServer(demo_pipeline, tmp_path_factory.mktemp("renders"))
    yield live
    live.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _fill(driver, element_id: str, text: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(text)


def test_studio_renders_with_progress_and_a_playable_result(server, browser, tmp_path):
    browser.get(server.base + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "demo_bundle" in d.find_element("id", "health").text)
    prompt = f"dusty lo-fi piano, vinyl crackle ({uuid.uuid4().hex[:6]})"
    _fill(browser, "prompt", prompt)
    _fill(browser, "lyrics", "[Verse]\nsmall hours, slow tape")
    _fill(browser, "duration", "10")
    _fill(browser, "steps", "40")
    _fill(browser, "seed", "7")
    Select(browser.find_element("id", "format")).select_by_visible_text("WAV")
    browser.execute_script(RECORD_PROGRESS)
    browser.find_element("id", "render").click()
    wait.until(lambda d: d.find_element("id", "status").text == "done"
               or "bad" in (d.find_element("id", "status").get_attribute("class") or ""))
    assert browser.find_element("id", "status").text == "done"

    seen = browser.execute_script("return window.progressSeen")
    assert any(0 < v < 1 for v in seen), seen  # the bar moved through the render, fed by the events
    moving = [v for v in seen if v > 0]
    assert moving == sorted(moving) and moving[-1] == 1, seen

    state = browser.execute_async_script(AUDIO_STATE)
    assert state["error"] is None and state["readyState"] >= 1, state
    assert state["src"].startswith(server.base + "/audio/") and state["src"].endswith(".wav")
    assert abs(state["duration"] - 10) < 0.05, state
    assert state["link"] == state["src"]
    status, payload, headers = server.request("GET", state["src"].removeprefix(server.base))
    assert status == 200 and payload[:4] == b"RIFF" and headers["content-type"] == "audio/wav"
    wait.until(lambda d: prompt in d.find_element("id", "recent").text)  # listed under recent renders

    shot = os.environ.get("ACESTEP_EDGE_SCREENSHOT") or str(tmp_path / "studio.png")
    assert browser.save_screenshot(shot)


def test_studio_cancel_button(server, browser):
    browser.get(server.base + "/")
    _fill(browser, "prompt", "a long one to cancel")
    _fill(browser, "duration", "30")
    _fill(browser, "steps", "200")
    browser.find_element("id", "render").click()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element("id", "status").text.startswith("step "))
    browser.find_element("id", "cancel").click()
    wait.until(lambda d: "cancelled" in d.find_element("id", "status").text)
    assert "nothing was written" in browser.find_element("id", "status").text
    assert browser.find_element("id", "render").is_enabled()
