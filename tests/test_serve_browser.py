"""The web demo in Debian's headless Chromium, driven by Playwright: upload, streamed answers, a `[refer]` answer's
boxes on the picture, and clear errors. The browser is the system's; nothing here downloads one.

Needs the `serve` extra (gradio), the `playwright` package and `/usr/bin/chromium` (`apt-get install chromium`);
without them these tests fail, since CI installs them.
"""

import importlib
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from tinygptv_hf.chat import ModelStream, load_chat_model
from tinygptv_hf.checkpoint import init_checkpoint
from tinygptv_hf.grounding import PALETTE

CHROMIUM = "/usr/bin/chromium"
# As the machine notes prescribe: no sandbox (root), and no background traffic to a network that is not there.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLE = resources.files("tinygptv_hf") / "resources" / "example_shapes.png"
REFER_PIECES = ["<p>red", " square</p> ", "{<10>", "<20>", "<40>", "<70>}", "###", "Human: never shown"]
REFER_TEXT = "<p>red square</p> {<10><20><40><70>}"
RED_SQUARE = (40, 60, 160, 210)  # where the example picture has it, in pixels; 10, 20, 40, 70 of 400 x 300


def require(module: str, install: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        pytest.fail(f"The web demo tests need {module}: {install}", pytrace=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout: float, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return init_checkpoint("tiny", tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def browser():
    sync_api = require(
        "playwright.sync_api", "pip install playwright (Debian's chromium is used, none is downloaded)"
    )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"The web demo tests need Debian's Chromium at {CHROMIUM}: apt-get install -y chromium",
            pytrace=False,
        )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class Answers:
    """The checkpoint answers; a `[refer]` question instead gets a known grounded answer, piece by piece, so the
    boxes are certain. Finished answers are counted, so the test knows when the model has stopped."""

    def __init__(self, stream):
        self.stream = stream
        self.finished = 0
        self.changed = threading.Condition()

    def __call__(self, messages, images, settings):
        try:
            if messages[-1]["content"][-1]["text"].startswith("[refer]"):
                for piece in REFER_PIECES:
                    time.sleep(0.25)
                    yield piece
            else:
                # The tiny model answers in milliseconds; a pause between pieces lets a busy browser see each one.
                for piece in self.stream(messages, images, settings):
                    time.sleep(0.1)
                    yield piece
        finally:
            with self.changed:
                self.finished += 1
                self.changed.notify_all()

    def wait(self, count: int, timeout: float = 120) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.finished >= count, timeout), "the answer never finished"


@pytest.fixture(scope="module")
def demo(checkpoint):
    require("gradio", "pip install 'tinygptv-hf[serve]'")
    from tinygptv_hf.chat.web import build_app, launch

    stream = ModelStream(*load_chat_model(str(checkpoint)))
    answers = Answers(stream)
    app = build_app(answers, stream.end_symbol)
    port = free_port()
    launch(app, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/", answers
    app.close()


def bot_messages(page) -> list[str]:
    return page.locator("#chatbot .message-row.bot-row").all_inner_texts()


def watch_answer(page, number: int, until, timeout: float = 120) -> list[str]:
    """Every distinct text the `number`th answer bubble showed, until `until()` holds and the text settles."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = bot_messages(page)
        text = messages[number - 1].strip() if len(messages) >= number else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        elif seen and until():
            return seen
        time.sleep(0.03)
    raise AssertionError(f"answer {number} did not finish; it showed {seen}")


def toast_text(page) -> str:
    toast = page.locator("[data-testid=toast-body]").last
    toast.wait_for(timeout=30000)
    text = toast.inner_text()
    page.locator("[data-testid=toast-close]").first.click()
    return text


@pytest.mark.slow
def test_web_demo_in_chromium(demo, browser, tmp_path):
    url, answers = demo
    expect = require("playwright.sync_api", "pip install playwright").expect
    page = browser.new_page(viewport={"width": 1280, "height": 960})
    page.goto(url)
    upload = page.locator("#upload input[type=file]")

    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"this is not a picture")
    upload.set_input_files(str(broken))
    assert "Cannot read holiday.png as a picture" in toast_text(page)
    expect(page.locator("#picture img")).to_have_count(0)

    page.locator("#upload button[aria-label=Clear]").click()
    upload.set_input_files(str(EXAMPLE))
    expect(page.locator("#picture img")).to_be_visible(timeout=30000)
    page.get_by_text("Generation settings").click()
    tokens = page.locator("#max-new-tokens input[type=number]")
    tokens.fill("24")
    tokens.press("Enter")

    question = page.locator("#question textarea")
    question.fill("What is in the picture?")
    question.press("Enter")
    expect(question).to_have_value("")
    streamed = watch_answer(page, 1, lambda: answers.finished >= 1)
    assert len(streamed) >= 2, f"the answer appeared at once, not streamed: {streamed}"
    assert all(later.startswith(earlier) for earlier, later in zip(streamed, streamed[1:], strict=False))

    page.locator("#task-refer").click()
    expect(question).to_have_value("[refer] ")
    question.press_sequentially("the red square")
    expect(question).to_have_value("[refer] the red square")
    page.locator("#send").click()
    streamed = watch_answer(page, 2, lambda: answers.finished >= 2)
    assert len(streamed) >= 3 and streamed[-1] == REFER_TEXT, streamed
    assert not any("#" in text or "never shown" in text for text in streamed)

    annotated = page.locator("#annotated img")
    expect(annotated).to_be_visible(timeout=30000)
    drawn = Image.open(io.BytesIO(page.request.get(annotated.get_attribute("src")).body())).convert("RGB")
    original = Image.open(EXAMPLE).convert("RGB")
    assert drawn.size == original.size
    x1, y1, x2, y2 = RED_SQUARE
    for point in [(x1, (y1 + y2) // 2), (x2 - 1, (y1 + y2) // 2), ((x1 + x2) // 2, y2 - 1)]:
        assert drawn.getpixel(point) == PALETTE[0], point
    assert drawn.getpixel((300, 20)) == original.getpixel((300, 20))

    screenshot = tmp_path / "web-demo.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10000
    if os.environ.get("TINYGPTV_DEMO_SCREENSHOT"):  # refreshes docs/web-demo.png on request
        shutil.copy(screenshot, os.environ["TINYGPTV_DEMO_SCREENSHOT"])

    question.fill("word " * 600)
    page.locator("#send").click()
    assert "context" in toast_text(page)
    assert len(bot_messages(page)) == 2

    page.locator("#clear").click()
    expect(page.locator("#chatbot .message-row")).to_have_count(0)
    expect(annotated).to_have_count(0)
    page.close()


def test_tinygptv_serve_listens_on_localhost(checkpoint):
    require("gradio", "pip install 'tinygptv-hf[serve]'")
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("tinygptv")), "serve", str(checkpoint), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", timeout=150, process=server)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as response:
            assert b"TinyGPT-V" in response.read()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    from tinygptv_hf.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["serve", "any-model"]) == 2  # the one exit status of a user error
    assert "pip install 'tinygptv-hf[serve]'" in capsys.readouterr().err
