"""The studio's editing tasks in headless Chromium: source upload, a window dragged on the waveform,
outpainting, extract, cover with a timbre reference, the body limit, remix, and the page's request
rendering the same bytes as `acestep-edge generate`.

Needs Chromium and its driver (Debian: `apt-get install -y chromium chromium-driver`) and selenium;
skips, saying which is missing, where they are not installed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from acestep_edge.runtime import vocab
from acestep_edge.runtime.pipeline import Pipeline
from acestep_edge.runtime.request import RequestError, parse_request
from serverutil import DEMO_BUNDLE, LiveServer

pytestmark = pytest.mark.server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("no headless browser: install Chromium and its driver (Debian: apt-get install -y chromium "
                "chromium-driver) to drive the web studio", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the selenium package (dev extra) is not installed")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

RATE = 48000
LIMIT = 6 * 2**20  # the server's body limit here: a 12-s WAV fits as a data URI, a 30-s one does not
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,800",
        "--autoplay-policy=no-user-gesture-required", "--mute-audio")
PLAY_NEWEST = """
const done = arguments[arguments.length - 1];
const audio = document.querySelector('#results-list li audio');
const report = () => done({duration: audio.duration, time: audio.currentTime, error: audio.error && audio.error.code,
                           src: audio.src});
audio.addEventListener('error', report);
audio.addEventListener('timeupdate', () => { if (audio.currentTime > 0.05) { audio.pause(); report(); } });
audio.play().catch((e) => done({error: String(e)}));
"""


def _clip(path: Path, seconds: float, freq: float = 220.0) -> Path:
    """A generated test clip: a tone with a slow swell and a pulse every second, 16-bit stereo WAV."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.4 * np.sin(2 * np.pi * freq * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    x += 0.2 * np.sin(2 * np.pi * 3 * freq * t) * (t % 1.0 < 0.25)
    sf.write(path, np.stack([x, 0.8 * x], 1).astype(np.float32), RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {"source": _clip(folder / "source.wav", 12.0), "reference": _clip(folder / "reference.wav", 4.0, 330.0),
            "big": _clip(folder / "big.wav", 30.0)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(Pipeline.load(DEMO_BUNDLE, threads=1), tmp_path_factory.mktemp("renders"),
                      max_body_bytes=LIMIT)
    yield live
    live.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture
def page(server, browser):
    browser.get(server.base + "/")
    WebDriverWait(browser, 30).until(lambda d: "body limit" in d.find_element("id", "health").text)
    browser.get_log("browser")  # start each test with an empty console
    yield browser
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors  # no console errors


# -- helpers ---------------------------------------------------------------------------------------

def _fill(driver, element_id: str, text: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(text)


def _task(driver, name: str) -> None:
    driver.find_element("css selector", f'input[name="task"][value="{name}"]').find_element("xpath", "..").click()


def _upload(driver, input_id: str, path: Path, info_id: str) -> None:
    driver.find_element("id", input_id).send_keys(str(path))
    # "name · size · seconds" once read and decoded ("reading name…" before that)
    WebDriverWait(driver, 90).until(lambda d: d.find_element("id", info_id).text.startswith(path.name + " · "),
                                    f"{path.name} was not read and decoded")


def _settle(driver) -> None:
    """Wait for the debounced validator check to have answered for the current form."""
    driver.execute_async_script("setTimeout(arguments[0], 700)")


def _request(driver) -> dict:
    return json.loads(driver.execute_script("return window.acestepStudio.requestText()"))


def _drag(driver, t0: float, t1: float) -> None:
    """Press at t0 seconds on the source waveform and release at t1, using the page's own axis."""
    canvas = driver.find_element("id", "wave")
    v0, v1 = float(canvas.get_attribute("data-view-start")), float(canvas.get_attribute("data-view-end"))
    width = driver.execute_script("return arguments[0].clientWidth", canvas)
    assert v0 < min(t0, t1) and max(t0, t1) < v1, (v0, v1)
    x = [round((t - v0) / (v1 - v0) * width - width / 2) for t in (t0, t1)]  # offsets from the centre
    if t0 == t1:
        ActionChains(driver).move_to_element_with_offset(canvas, x[0], 0).click().perform()
        return
    ActionChains(driver).move_to_element_with_offset(canvas, x[0], 0).click_and_hold() \
        .move_by_offset((x[1] - x[0]) // 2, 0).move_by_offset(x[1] - x[0] - (x[1] - x[0]) // 2, 0).release().perform()


def _common(driver, seed: int) -> None:
    _fill(driver, "prompt", "studio test, warm synth")
    _fill(driver, "steps", "2")
    _fill(driver, "seed", str(seed))
    Select(driver.find_element("id", "format")).select_by_visible_text("WAV")


def _render(driver) -> dict:
    """Click Render, wait for the end; the newest result card's data attributes and its player's state."""
    before = len(driver.find_elements("css selector", "#results-list li"))
    driver.find_element("id", "render").click()
    wait = WebDriverWait(driver, 240)  # a loaded CI machine renders slowly
    try:
        wait.until(lambda d: d.find_element("id", "status").text == "done"
                   or "bad" in (d.find_element("id", "status").get_attribute("class") or ""))
    except TimeoutException:
        raise AssertionError(f"the render did not end; status: {driver.find_element('id', 'status').text!r}") from None
    assert driver.find_element("id", "status").text == "done", driver.find_element("id", "status").text
    wait.until(lambda d: len(d.find_elements("css selector", "#results-list li")) == before + 1
               and d.find_element("css selector", "#results-list li").get_attribute("data-seconds"),
               "the result card was not drawn")
    card = driver.find_element("css selector", "#results-list li")
    played = driver.execute_async_script(PLAY_NEWEST)
    assert played.get("error") is None and played["time"] > 0, played  # it plays
    return {"seconds": float(card.get_attribute("data-seconds")), "duration": played["duration"], "src": played["src"]}


def _shot(driver, name: str) -> None:
    """When ACESTEP_EDGE_SCREENSHOTS names a folder, save the form and the newest result as docs/ pictures.

    The page is captured at 1280 px wide, the form and the newest result card are cut out, stacked,
    scaled to 960 px and stored with a 128-colour palette (Pillow), so each file stays small.
    """
    folder = os.environ.get("ACESTEP_EDGE_SCREENSHOTS")
    if not folder:
        return
    from PIL import Image

    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, height + 140)
    driver.execute_async_script("window.scrollTo(0, 0); setTimeout(arguments[0], 600)")
    full = Path(folder) / f".full-{name}.png"
    driver.save_screenshot(str(full))
    boxes = driver.execute_script("""
        const r = (e) => { const b = e.getBoundingClientRect(); return [b.top, b.bottom]; };
        return [r(document.getElementById('form')), r(document.querySelector('#results-list li'))];""")
    driver.set_window_size(1280, 800)
    image = Image.open(full).convert("RGB")
    scale = image.width / 1280  # device pixels per CSS pixel
    parts = [image.crop((0, 0, image.width, round((boxes[0][1] + 8) * scale))),
             image.crop((0, round((boxes[1][0] - 8) * scale), image.width, round((boxes[1][1] + 8) * scale)))]
    stacked = Image.new("RGB", (image.width, sum(p.height for p in parts)))
    stacked.paste(parts[0], (0, 0))
    stacked.paste(parts[1], (0, parts[0].height))
    small = stacked.resize((960, round(stacked.height * 960 / stacked.width)), Image.LANCZOS)
    small.quantize(128, dither=Image.Dither.NONE).save(Path(folder) / f"studio-{name}.png", optimize=True)
    full.unlink()


def _shown(driver, element_id: str) -> bool:
    return driver.find_element("id", element_id).is_displayed()


# -- tests -----------------------------------------------------------------------------------------

def test_repaint_window_dragged_on_the_waveform_renders_the_cli_bytes(page, server, clips, tmp_path):
    _task(page, "repaint")
    # Only the fields the validator lets repaint take (runtime/vocab.py).
    assert not _shown(page, "duration") and not _shown(page, "track") and not _shown(page, "classes")
    assert _shown(page, "strength") == ("repaint" in vocab.STRENGTH_TASKS)
    assert _shown(page, "coverscale") == ("repaint" in vocab.COVER_SCALE_TASKS)
    _upload(page, "source-file", clips["source"], "source-info")
    _drag(page, 2.0, 6.5)
    assert page.find_element("id", "wstart").get_attribute("value") == "2.0"
    assert page.find_element("id", "wend").get_attribute("value") == "6.5"
    _drag(page, 9.0, 9.0)  # a click keeps the window and moves the source's playhead there
    assert page.find_element("id", "wstart").get_attribute("value") == "2.0"
    assert abs(page.execute_script("return document.getElementById('source-audio').currentTime") - 9.0) < 0.05
    _common(page, seed=11)
    _settle(page)
    request = _request(page)
    assert request["settings"]["repaintingStart"] == 2.0 and request["settings"]["repaintingEnd"] == 6.5
    assert request["settings"]["task"] == "repaint" and "duration" not in request
    assert request["inputs"]["audio"] == "data:audio/wav;base64," + base64.b64encode(clips["source"].read_bytes()).decode()
    parse_request(request)  # the runtime's validator takes the page's JSON as it is
    shown = page.find_element("id", "request-json").text
    assert '"repaintingStart": 2' in shown and "data URI" in shown  # the JSON is on the page, audio shortened
    page.find_element("id", "copy").click()
    WebDriverWait(page, 10).until(lambda d: d.find_element("id", "copy").text == "copied")

    result = _render(page)
    assert abs(result["seconds"] - 12.0) < 0.01 and abs(result["duration"] - 12.0) < 0.01, result
    # The fields still show the dragged window, and the card aligns source and result with an A/B switch.
    assert page.find_element("id", "wstart").get_attribute("value") == "2.0"
    card = page.find_element("css selector", "#results-list li")
    assert "window 2.0–6.5 s" in card.text and len(card.find_elements("css selector", "canvas.timeline")) == 2
    ab = card.find_element("css selector", "button.ab")
    ab.click()
    assert "hearing A" in ab.text and ab.get_attribute("aria-pressed") == "true"
    _shot(page, "repaint")

    # The page's request through `acestep-edge generate` gives the same bytes.
    status, page_bytes, _ = server.request("GET", result["src"].removeprefix(server.base))
    assert status == 200 and page_bytes[:4] == b"RIFF"
    (tmp_path / "request.json").write_text(json.dumps(request))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "acestep_edge.cli", "generate", str(tmp_path / "request.json"),
                           "--bundle", str(DEMO_BUNDLE), "--out", str(out), "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written = [p for p in out.rglob("*.wav")] if out.is_dir() else [out]
    assert len(written) == 1 and written[0].read_bytes() == page_bytes


def test_outpainting_drag_extends_three_seconds_each_side(page, clips):
    _task(page, "repaint")
    _upload(page, "source-file", clips["source"], "source-info")
    _drag(page, -3.0, 15.0)
    assert page.find_element("id", "wstart").get_attribute("value") == "-3.0"
    assert page.find_element("id", "wend").get_attribute("value") == "15.0"
    _common(page, seed=12)
    result = _render(page)
    assert abs(result["seconds"] - 18.0) < 0.01 and abs(result["duration"] - 18.0) < 0.01, result
    card = page.find_element("css selector", "#results-list li canvas.timeline")
    assert float(card.get_attribute("data-view-start")) == -3.0  # the source is drawn 3 s in
    _shot(page, "outpaint")


def test_extract_with_a_track_name(page, clips):
    _task(page, "extract")
    assert _shown(page, "track") and not _shown(page, "wstart") and not _shown(page, "mode")
    assert _shown(page, "strength") == ("extract" in vocab.STRENGTH_TASKS)
    _upload(page, "source-file", clips["source"], "source-info")
    Select(page.find_element("id", "track")).select_by_value("drums")
    _common(page, seed=13)
    # The noise source (settings.noise): the GPU field appears for torch-cuda only.
    noise = Select(page.find_element("id", "noise"))
    noise.select_by_value("torch-cuda")
    assert _shown(page, "noisegpu")
    noise.select_by_value("torch-cpu")
    assert not _shown(page, "noisegpu")
    request = _request(page)
    assert request["settings"]["noise"] == "torch-cpu" and "noiseGpu" not in request["settings"]
    assert request["settings"]["trackName"] == "drums" and request["settings"]["task"] == "extract"
    assert "repaintingStart" not in request["settings"]
    result = _render(page)
    assert abs(result["seconds"] - 12.0) < 0.01
    _shot(page, "extract")


def test_cover_with_a_timbre_reference(page, clips):
    _task(page, "cover")
    _upload(page, "source-file", clips["source"], "source-info")
    _upload(page, "ref-file", clips["reference"], "ref-info")
    _fill(page, "strength", "0.6")
    _common(page, seed=14)
    request = _request(page)
    assert request["settings"]["referenceAudio"] == (
        "data:audio/wav;base64," + base64.b64encode(clips["reference"].read_bytes()).decode())
    assert request["strength"] == 0.6 and request["settings"]["task"] == "cover"
    result = _render(page)
    assert abs(result["seconds"] - 12.0) < 0.01
    _shot(page, "cover")


@pytest.mark.parametrize("task", ["lego", "complete"])
def test_lego_and_complete(page, clips, task):
    _task(page, task)
    _upload(page, "source-file", clips["source"], "source-info")
    if task == "lego":
        assert _shown(page, "track") and _shown(page, "wstart") and not _shown(page, "classes")
        Select(page.find_element("id", "track")).select_by_value("guitar")
        _fill(page, "bpm", "120")  # the ruler shows bars: 4 beats of 0.5 s
        Select(page.find_element("id", "timesig")).select_by_value("4")
        _drag(page, 4.0, 8.0)
    else:
        assert _shown(page, "classes") and not _shown(page, "track") and not _shown(page, "wstart")
        assert not _shown(page, "duration")  # the source sets the length
        for name in ("drums", "bass"):
            page.find_element("css selector", f'#classes input[value="{name}"]').click()
    _common(page, seed=15)
    settings = _request(page)["settings"]
    if task == "lego":
        assert (settings["trackName"], settings["repaintingStart"], settings["repaintingEnd"]) == ("guitar", 4.0, 8.0)
        assert (settings["bpm"], settings["timeSignature"]) == (120, 4)
    else:
        assert sorted(settings["trackClasses"]) == ["bass", "drums"] and "trackName" not in settings
    result = _render(page)
    assert abs(result["seconds"] - 12.0) < 0.01
    _shot(page, task)


def test_a_too_large_file_is_refused_before_upload(page, clips):
    page.execute_script("window.sent = []; const f = window.fetch; window.fetch = (u, o) => "
                        "{ window.sent.push((o && o.body || '').length); return f(u, o); };")
    _task(page, "cover")
    page.find_element("id", "source-file").send_keys(str(clips["big"]))
    box = page.find_element("id", "source-box")
    WebDriverWait(page, 10).until(lambda d: "limit" in box.find_element("css selector", ".err").text)
    message = box.find_element("css selector", ".err").text
    assert "over this server's limit of 6.0 MB" in message and "big.wav" in message, message
    assert "inputs" not in _request(page)
    _settle(page)
    assert max(page.execute_script("return window.sent") or [0]) < 2**20  # nothing large left the page


def test_field_errors_are_the_validators(page, clips):
    _task(page, "repaint")
    _upload(page, "source-file", clips["source"], "source-info")
    _fill(page, "wstart", "5")
    _fill(page, "wend", "4")
    _fill(page, "steps", "abc")
    _settle(page)
    request = _request(page)
    with pytest.raises(RequestError) as caught:
        parse_request(request)
    field = {"steps": "steps", "settings.repaintingEnd": "wend"}[caught.value.parameter]
    shown = page.find_element("id", field).find_element("xpath", "..").find_element("css selector", ".err").text
    assert shown == caught.value.message
    # Keyboard: the waveform takes the focus and the arrow keys move the window; fields follow.
    _fill(page, "steps", "2")
    _fill(page, "wend", "6")
    page.find_element("id", "wend").send_keys(Keys.TAB)
    page.find_element("id", "wave").send_keys(Keys.ARROW_RIGHT)
    assert page.find_element("id", "wstart").get_attribute("value") == "5.1"
    assert page.find_element("id", "wend").get_attribute("value") == "6.1"


def test_remix_from_a_result(page, server):
    _task(page, "text2music")
    _fill(page, "duration", "10")
    _fill(page, "bpm", "96")
    _common(page, seed=21)
    _render(page)
    _shot(page, "text2music")
    _fill(page, "prompt", "something else")
    _fill(page, "seed", "999")
    _fill(page, "bpm", "120")
    card = page.find_element("css selector", "#results-list li")
    card.find_element("xpath", ".//button[text()='load settings']").click()
    assert page.find_element("id", "prompt").get_attribute("value") == "studio test, warm synth"
    assert page.find_element("id", "seed").get_attribute("value") == "21"
    assert page.find_element("id", "bpm").get_attribute("value") == "96"
    assert page.find_element("id", "duration").get_attribute("value") == "10"
    # The result becomes the next task's source, fetched from the server, not downloaded by hand.
    src = card.find_element("css selector", "audio").get_attribute("src")
    card.find_element("xpath", ".//button[text()='use as source']").click()
    WebDriverWait(page, 90).until(lambda d: "10.00 s" in d.find_element("id", "source-info").text,
                                  "the result did not become the source")
    request = _request(page)
    assert request["settings"]["task"] == "cover"
    status, result_bytes, _ = server.request("GET", src.removeprefix(server.base))
    assert request["inputs"]["audio"] == "data:audio/wav;base64," + base64.b64encode(result_bytes).decode()


DROP_WAV = """
// A 1-s 440 Hz mono 16-bit WAV built in the page, dropped on the reference box as a file would be.
const rate = 48000, n = rate, view = new DataView(new ArrayBuffer(44 + 2 * n));
const text = (o, s) => [...s].forEach((c, i) => view.setUint8(o + i, c.charCodeAt(0)));
text(0, 'RIFF'); view.setUint32(4, 36 + 2 * n, true); text(8, 'WAVEfmt '); view.setUint32(16, 16, true);
view.setUint16(20, 1, true); view.setUint16(22, 1, true); view.setUint32(24, rate, true);
view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
text(36, 'data'); view.setUint32(40, 2 * n, true);
for (let i = 0; i < n; i++) view.setInt16(44 + 2 * i, 8000 * Math.sin(2 * Math.PI * 440 * i / rate), true);
const drop = new DataTransfer();
drop.items.add(new File([view.buffer], 'dropped.wav', {type: 'audio/wav'}));
document.getElementById('ref-box').dispatchEvent(new DragEvent('drop', {dataTransfer: drop, bubbles: true, cancelable: true}));
"""


def test_a_file_dropped_on_the_reference_box(page):
    page.execute_script(DROP_WAV)
    WebDriverWait(page, 30).until(lambda d: d.find_element("id", "ref-info").text.startswith("dropped.wav · "))
    assert "1.00 s" in page.find_element("id", "ref-info").text
    assert _request(page)["settings"]["referenceAudio"].startswith("data:audio/wav;base64,UklGR")


def test_adapter_picker(browser, tmp_path_factory):
    from test_lora_server import _peft  # the adapter writer of the server's adapter tests

    loras = tmp_path_factory.mktemp("loras")
    _peft(loras / "style")
    (loras / "old.bin").write_bytes(b"\x80\x04pickle")
    live = LiveServer(Pipeline.load(DEMO_BUNDLE, threads=1), tmp_path_factory.mktemp("lora-renders"),
                      lora_dir=str(loras))
    try:
        browser.get(live.base + "/")
        WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "lora-box").is_displayed(), "no adapter picker")
        rows = {r.get_attribute("data-name"): r for r in browser.find_elements("css selector", "#loras .lora")}
        assert set(rows) == {"style", "old.bin"}
        assert not rows["old.bin"].find_element("css selector", "input[type=checkbox]").is_enabled()  # pickle: refused
        rows["style"].find_element("css selector", "input[type=checkbox]").click()
        weight = rows["style"].find_element("css selector", ".weight")
        weight.clear()
        weight.send_keys("3")
        _fill(browser, "duration", "10")
        _common(browser, seed=31)
        _settle(browser)
        request = _request(browser)
        assert request["lora"] == [{"model": "style", "weight": 3}]
        with pytest.raises(RequestError) as caught:
            parse_request(request)
        box = browser.find_element("id", "lora-box")
        assert box.find_element("css selector", ".err").text == caught.value.message  # lora[0].weight's own words
        weight.clear()
        weight.send_keys("0.5")
        assert _request(browser)["lora"] == [{"model": "style", "weight": 0.5}]
        result = _render(browser)
        assert abs(result["seconds"] - 10.0) < 0.01
        status, listing, _ = live.request("GET", "/v1/renders")
        assert status == 200 and listing["data"][0]["status"] == "success"
    finally:
        live.close()
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_task_selector_from_the_keyboard(page):
    _task(page, "text2music")  # the click leaves the focus on the radio group
    for _ in range(2):
        page.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert page.execute_script("return document.querySelector('input[name=task]:checked').value") == "repaint"
    assert _shown(page, "source-box") and not _shown(page, "duration")
    page.switch_to.active_element.send_keys(Keys.TAB)  # on to the source's file picker
    assert page.switch_to.active_element.get_attribute("id") == "source-file"


def test_readable_at_1280_and_narrow(page):
    for width in (1280, 420):
        page.set_window_size(width, 800)
        page.execute_async_script("setTimeout(arguments[0], 200)")
        assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    page.set_window_size(1280, 800)
