"""`storm-hf demo --web` served on localhost and driven in headless Chromium through Playwright: upload a
generated clip, ask, read the answer, the token counts, the frame strip and the times off the page; a file that
is not a video; two pages asking at once; an example clip. Screenshots go to $STORM_SCREENSHOTS (default: the
test's temporary folder).

Needs gradio and playwright (both in the `dev` extra) and a Chromium binary: Debian's, installed by
`apt-get update && apt-get install -y chromium` (what .ci/run does where it can), or $STORM_CHROMIUM naming
another; skipped otherwise, with the reason."""

import os
import shutil
import sys

import pytest

from storm_hf.inference import ask, load
from storm_hf.miniature.temporal_qa import clip_rng, make_clip, write_video

from .test_web_demo import free_port, start_server, stop_server

pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -e '.[dev]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install -e '.[dev]'")

BROWSER = os.environ.get("STORM_CHROMIUM") or next(
    (path for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
     if (path := shutil.which(name))), None)
if BROWSER is None:
    pytest.skip("no Chromium: apt-get update && apt-get install -y chromium (or set STORM_CHROMIUM)",
                allow_module_level=True)

# As Chromium runs here: as root without a sandbox, and without the background connections a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000  # per wait: a busy two-core machine answers in seconds, but starts slowly

# Every text the status line shows, in order (the page's Markdown is replaced as the answer streams in).
RECORD_STATUS = """() => {
    window.statuses = [];
    const status = document.querySelector('#status');
    new MutationObserver(() => window.statuses.push(status.innerText))
        .observe(status, {subtree: true, childList: true, characterData: true});
}"""
# The request ended: the status line went through "Waiting for the model" and now shows an answer or an error.
REQUEST_ENDED = """() => {
    const now = document.querySelector('#status').innerText;
    return window.statuses.some(s => s.includes('Waiting for the model')) && !now.includes('Waiting') &&
        (now.includes('Answered in') || now.includes('⚠️'));
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The page as a user starts it: `storm-hf demo --web --port N`, in its own process."""
    port = free_port()
    with open(tmp_path_factory.mktemp("server") / "server.log", "w+") as log:
        process, url = start_server([sys.executable, "-m", "storm_hf", "demo", "--web", "--port", str(port)], log,
                                    {"GRADIO_SERVER_PORT": str(port)})
        try:
            yield url, log
        finally:
            stop_server(process)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=BROWSER, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def screenshots(tmp_path):
    folder = os.environ.get("STORM_SCREENSHOTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def generated_clip(tmp_path_factory):
    """A held-out benchmark clip written as a user's upload would be (4:2:0 H.264, 192 px), and the answer the
    model gives in this process: the page must show the same."""
    clip = make_clip(clip_rng("test", 11, 0), "direction")
    frames = clip.frames.repeat(4, axis=1).repeat(4, axis=2)
    path = write_video(tmp_path_factory.mktemp("upload") / "my clip.mp4", frames, pix_fmt="yuv420p", options={})
    model, processor = load()
    return str(path), clip.question, ask(model, processor, str(path), clip.question, max_new_tokens=64)


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#ask")
    page.evaluate(RECORD_STATUS)
    return page


def upload(page, path):
    clear = page.locator("#video button[aria-label='Clear']")
    if clear.count():  # a file is there already: take it away, as a user would, to drop the next one
        clear.click()
    page.locator("#video input[type=file]").set_input_files(path)
    name = os.path.basename(path)
    page.wait_for_function(f"() => document.querySelector('#status').innerText.includes({name!r})")


def ask_on(page, question):
    page.locator("#question textarea").fill(question)
    page.evaluate("() => { window.statuses = []; }")
    page.locator("#ask").click()


def test_upload_ask_and_read_the_answer_tokens_frames_and_times(server, browser, generated_clip, screenshots):
    url, _ = server
    path, question, expected = generated_clip
    page = open_page(browser, url)
    upload(page, path)
    assert page.locator("#status").inner_text().startswith("my clip.mp4: 2.0 s, 16 frames at 8 frames a second, 192×192.")
    ask_on(page, question)
    page.wait_for_function(REQUEST_ENDED)
    status = page.locator("#status").inner_text()
    assert "Sampled 16 of the video's 16 frames (2.0 s), 0.00 s to 1.88 s." in status and "Answered in" in status
    assert page.locator("#answer textarea").input_value() == expected.answer
    seen = page.evaluate("() => window.statuses")
    assert any(s.startswith("Decoding my clip.mp4") for s in seen)  # progress was on the page
    tokens = " ".join(page.locator("#tokens").inner_text().split())
    assert f"before reduction {expected.tokens_before} (16 frames × 16)" in tokens
    assert f"after reduction {expected.tokens_after} (temporal pool k = 4, spatial pool p = 1, sampling s = 1)" in tokens
    assert (expected.tokens_before, expected.tokens_after) == (256, 64)
    captions = page.locator("#frames").inner_text()
    assert "frame 0 · 0.00 s" in captions and "frame 15 · 1.88 s" in captions
    assert page.locator("#frames img").count() == 16
    page.locator("#frames").scroll_into_view_if_needed()  # the strip's images load lazily, once in view
    # Every image of the strip arrived whole (a broken one is complete with no width).
    page.wait_for_function("() => [...document.querySelectorAll('#frames img')].every(i => i.complete && i.naturalWidth > 0)")
    timings = page.locator("#timings").inner_text()
    for stage in ("video decode", "vision tower", "temporal encoder", "token reduction", "LLM prefill", "total"):
        assert stage in timings
    page.screenshot(path=os.path.join(screenshots, "web-demo-answer.png"), full_page=True)
    page.close()


def test_a_file_that_is_not_a_video_gets_a_message_and_the_page_keeps_working(server, browser, generated_clip,
                                                                               screenshots, tmp_path):
    url, log = server
    path, question, expected = generated_clip
    notes = tmp_path / "notes.mp4"
    notes.write_text("these are my notes, not a video")
    page = open_page(browser, url)
    upload(page, str(notes))
    message = "This file cannot be read as a video. notes.mp4: not a readable video container"
    assert message in page.locator("#status").inner_text()
    ask_on(page, question)
    page.wait_for_function(REQUEST_ENDED)
    status = page.locator("#status").inner_text()
    assert status.startswith("⚠️") and message in status and "Traceback" not in page.content()
    page.screenshot(path=os.path.join(screenshots, "web-demo-not-a-video.png"), full_page=True)
    upload(page, path)  # the next request on the same page is answered
    ask_on(page, question)
    page.wait_for_function(REQUEST_ENDED)
    assert page.locator("#answer textarea").input_value() == expected.answer
    page.close()


def test_two_pages_asking_at_once_are_both_answered_and_examples_fill_the_form(server, browser):
    from storm_hf.apps.web_demo import example_clips

    url, _ = server
    clips = example_clips()[:2]
    pages = [open_page(browser, url) for _ in clips]
    for page, clip in zip(pages, clips):
        page.get_by_text(clip["question"], exact=True).first.click()  # the example's row
        page.wait_for_function(f"() => document.querySelector('#status').innerText.includes({clip['task'] + '.mp4'!r})")
        assert page.locator("#question textarea").input_value() == clip["question"]
        page.evaluate("() => { window.statuses = []; }")
    for page in pages:
        page.locator("#ask").click()  # both before either is answered: the queue takes them in turn
    for page, clip in zip(pages, clips):
        page.wait_for_function(REQUEST_ENDED)
        assert page.locator("#answer textarea").input_value() == clip["answer"]
        page.close()
