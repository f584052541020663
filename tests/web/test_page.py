"""The web page in a real browser: Debian's Chromium driven by Playwright (its own browser download fails here).

Skips, saying why, when Chromium or Playwright is missing; CI sets GLIMPSE_REQUIRE_BROWSER=1 so it never skips.
Screenshots go to artifacts/screenshots/.
"""

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.framing import HTTP_ARG
from tests.worker.conftest import ROOT, checkpoints  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
API_KEY = "page-test-key"


def _need(reason: str) -> None:
    if os.environ.get("GLIMPSE_REQUIRE_BROWSER") == "1":  # as GLIMPSE_REQUIRE_DATA: "0" does not require it
        pytest.fail(f"browser test required but {reason}")
    pytest.skip(f"browser tests skipped: {reason}")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright package is not installed")
    if not Path(CHROMIUM).exists():
        _need("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text()
        time.sleep(0.3)
    pytest.fail(f"{url} never became ready: " + log.read_text()[-2000:])


def _glyph(rows: slice, cols: slice) -> str:
    """A 28×28 1-bit PNG, ink on rows × cols, base64 (as `python -m training examples` writes)."""
    from training.examples import png

    x = np.zeros((28, 28))
    x[rows, cols] = 1
    return png(x, "binary")


# two characters of three drawings each: a bar across at three heights, a post down at three places (the page must
# send the first two as the class and the third as the query, each where it belongs)
EXAMPLE_SETS = [{"name": "Bar/character01", "images": [_glyph(slice(r, r + 3), slice(4, 24)) for r in (8, 12, 16)]},
                {"name": "Old_Church_Slavonic_(Cyrillic)/character30",  # a long name: the layout must wrap it
                 "images": [_glyph(slice(4, 24), slice(c, c + 3)) for c in (8, 12, 16)]}]


@pytest.fixture(scope="module")
def served(checkpoints, tmp_path_factory) -> Path:  # noqa: F811
    """The suite's tiny checkpoints, tiny-iwae, an IWAE at MNIST's 28×28 (so the drawing box is 196×196 on screen)
    that offers reconstructions and walks, tiny-vaegan, a grey-level VAE/GAN of the same size, tiny-stat28, a
    Neural Statistician (new samples from a set of examples) of that size too, and a-prose-text, a text model few of
    whose words a drawer knows."""
    import torch

    from models.checkpoint import Checkpoint, save_checkpoint
    from models.iwae import IWAE, IWAEConfig
    from models.statistician import Statistician, StatisticianConfig
    from models.textvae import SPECIALS, TextVAE, TextVAEConfig
    from models.vaegan import VAEGAN, VAEGANConfig
    from models.vocab import Vocabulary

    d = tmp_path_factory.mktemp("served")
    shutil.copytree(checkpoints, d, dirs_exist_ok=True)
    torch.manual_seed(0)
    iwae = IWAE(IWAEConfig(height=28, width=28, layers=1, k=2, hidden=(16,), latent=(4,)))
    save_checkpoint(d / "tiny-iwae", Checkpoint(iwae, extra={"dataset": "mnist"}))
    vaegan = VAEGAN(VAEGANConfig(z_size=4, base=4))  # a grey model: uploads go as grey levels, not thresholded
    save_checkpoint(d / "tiny-vaegan", Checkpoint(vaegan.eval(), extra={"dataset": "fashion-mnist"}))
    stat = Statistician(StatisticianConfig(widths=(4, 4, 4), convs=1, hidden=16, layers=1, c_dim=8, z_dim=4))
    save_checkpoint(d / "tiny-stat28", Checkpoint(stat.eval(), extra={"dataset": "omniglot", "example_sets": {
        "split": "vinyals/test", "sets": EXAMPLE_SETS}}))  # a set model, 28×28, with sets to pick
    # a text model of another language (as textvae-ptb beside textvae-captions), listed before tiny-text
    news = Vocabulary([*SPECIALS, "the", "market", "fell", "shares", "of", "n", "cents", "a", "share"], max_length=12)
    prose = TextVAE(TextVAEConfig(vocab_size=len(news), max_length=13, embed=8, hidden=8, z_dim=3, preset="tiny"))
    save_checkpoint(d / "a-prose-text", Checkpoint(prose, vocab=news, extra={"dataset": "ptb"}))
    return d


@pytest.fixture(scope="module")
def stack_env(served, tmp_path_factory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded Redis, as on a fresh machine
    return env | {"GLIMPSE_CHECKPOINTS": str(served), "GLIMPSE_REDIS_DIR": str(tmp_path_factory.mktemp("redis")),
                  "GLIMPSE_DEFAULT_MODEL": "tiny-align", "GLIMPSE_STEP_DELAY": "0.25"}  # slow enough to see frames


@pytest.fixture(scope="module")
def server(stack_env, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "service.serve", "--port", str(port), "--ready-timeout", "120"],
                            cwd=ROOT, env=stack_env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, proc, log, 150)
    yield url
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def keyed_server(server, stack_env, tmp_path_factory):
    """A second API process with GLIMPSE_API_KEYS set, on the same embedded Redis (it joins the server of
    GLIMPSE_REDIS_DIR) and so the same worker: one stack is enough for both."""
    port = _free_port()
    log = tmp_path_factory.mktemp("keyed") / "api.log"
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app", "--http",
                             HTTP_ARG, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                            env=stack_env | {"GLIMPSE_API_KEYS": API_KEY}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, proc, log, 60)
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_draw_watch_scrub_and_unknown_words(browser, server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")

    # An unknown word is marked as it is typed, and the API's 422 is shown inline.
    page.fill("#caption", "the digit 3 is beside the cat .")
    assert page.locator("#marked .unknown").count() == 2
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    error = page.inner_text("#error")
    assert "Unknown words" in error and "“beside”, word 5" in error and "“cat”, word 7" in error
    assert "position" not in error  # the detail's 0-based positions are not repeated beside the page's word numbers
    page.screenshot(path=str(SHOTS / "unknown-words.png"))

    # A real caption: the canvas fills step by step, then the samples and the player appear.
    page.fill("#caption", "the digit 3 is at the top left of the image .")
    assert page.locator("#marked .unknown").count() == 0
    page.fill("#n", "2")
    page.click("#submit")
    frames: list[str] = []
    live_weights = 0
    deadline = time.monotonic() + 60
    while page.locator("#grid img").count() < 2 and time.monotonic() < deadline:
        src = page.get_attribute("#frame", "src")
        if src and "/frames/" in src and (not frames or frames[-1] != src):
            frames.append(src)
            live_weights = max(live_weights, page.locator("#words span[data-weight]").count())
        time.sleep(0.03)
    assert live_weights == 12  # words highlighted by their weight while the image was being drawn
    assert page.locator("#grid img").count() == 2, page.inner_text("#status")
    assert len(set(frames)) >= 2, frames  # at least two different canvases while it was drawn
    page.wait_for_selector("#player:not([hidden])")
    page.wait_for_function("document.querySelector('#grid img').naturalWidth > 0")  # the final image loaded
    assert page.get_attribute("#error", "hidden") is not None
    page.screenshot(path=str(SHOTS / "drawn.png"))

    # Scrub to the first step: its frame, its window and its word weights.
    page.eval_on_selector("#scrub", "e => { e.value = '1'; e.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#stepLabel").startswith("step 1 /")
    assert page.get_attribute("#frame", "src").endswith("/frames/1.png")
    weights = page.eval_on_selector_all("#words span", "spans => spans.map(s => Number(s.dataset.weight))")
    assert len(weights) == 12 and abs(sum(weights) - 1) < 1e-2
    downloads = page.eval_on_selector_all("#downloads a", "links => links.map(a => a.textContent)")
    assert downloads == ["PNG", "GIF", "WebP"]
    assert "curl -s -X POST" in page.text_content("#curl")  # inside a collapsed <details>
    page.close()


def test_an_unconditional_model_draws_without_a_caption(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 1")
    assert not page.is_visible("#modes")  # a caption model: no mode choice
    page.select_option("#model", "tiny-draw")
    assert not page.is_visible("#caption") and not page.is_visible("#example-lists")
    labels = page.eval_on_selector_all("#modes label:not([hidden])", "ls => ls.map(l => l.textContent.trim())")
    assert page.is_visible("#unconditional") and labels == ["Sample", "Score"]  # DRAW samples and scores
    page.fill("#n", "3")
    page.click("#submit")
    page.wait_for_function("document.querySelectorAll('#grid img').length === 3", timeout=60_000)
    assert page.get_attribute("#error", "hidden") is not None
    assert '"caption"' not in page.text_content("#curl")
    page.screenshot(path=str(SHOTS / "unconditional.png"))
    page.select_option("#model", "tiny-align")  # back to a captioned model: the caption box returns
    assert page.is_visible("#caption") and page.is_visible("#example-lists")
    page.close()


def test_with_api_keys_the_page_sends_the_key(browser, keyed_server):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(keyed_server)
    page.wait_for_selector("#key-note:not([hidden])")  # /v1/models was a 401: the page asks for a key
    assert "This service needs an API key" in page.inner_text("#key-note")
    assert page.locator("#model option").count() == 0
    assert page.get_attribute("#apikey", "type") == "password"
    page.screenshot(path=str(SHOTS / "needs-key.png"))

    page.fill("#apikey", API_KEY)
    page.press("#apikey", "Enter")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert page.get_attribute("#key-note", "hidden") is not None
    assert page.evaluate("sessionStorage.getItem('glimpse-api-key')") == API_KEY

    # The step events come through the fetch()-based stream; each frame through fetch() as a blob: URL.
    page.fill("#caption", "the digit 3 is at the top left of the image .")
    page.fill("#n", "2")
    page.click("#submit")
    shown: set[str] = set()
    deadline = time.monotonic() + 60
    while page.locator("#grid img").count() < 2 and time.monotonic() < deadline:
        src, api_url, width = page.eval_on_selector("#frame", "f => [f.src, f.dataset.src || '', f.naturalWidth]")
        if "/frames/" in api_url and src.startswith("blob:") and width > 0:
            shown.add(api_url)
        time.sleep(0.03)
    assert page.locator("#grid img").count() == 2, page.inner_text("#status")
    assert len(shown) >= 2, shown  # frames drawn while the job ran, loaded with the key
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.naturalWidth > 0)")
    assert all(s.startswith("blob:") for s in page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.src)"))
    page.wait_for_selector("#player:not([hidden])")
    page.eval_on_selector("#scrub", "e => { e.value = '1'; e.dispatchEvent(new Event('input')); }")
    page.wait_for_function("(f => f.dataset.src.endsWith('/frames/1.png') && f.src.startsWith('blob:') && "
                           "f.naturalWidth > 0)(document.querySelector('#frame'))")
    assert len(page.eval_on_selector_all("#words span[data-weight]", "s => s")) == 12  # attention.json, with the key
    with page.expect_download() as download:
        page.click("#downloads a:text('PNG')")
    assert download.value.suggested_filename == "0.png"
    assert page.get_attribute("#error", "hidden") is not None
    assert "Authorization: Bearer $GLIMPSE_API_KEY" in page.text_content("#curl")  # the key itself is never shown
    page.screenshot(path=str(SHOTS / "drawn-with-key.png"))
    page.close()


def test_a_dropped_event_stream_resumes_from_its_last_event_id(browser, keyed_server):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(keyed_server)
    page.fill("#apikey", API_KEY)
    page.press("#apikey", "Enter")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    streams: list[dict[str, str]] = []

    def drop_the_first(route):  # the first stream ends after one step event, as a dropped connection would
        streams.append(route.request.headers)
        if len(streams) > 1:
            return route.continue_()
        step = '{"step":1,"steps":5,"chunk":1,"frames":[]}'
        route.fulfill(status=200, content_type="text/event-stream",
                      body=f"retry: 100\n\n: a comment\nid: 1\nevent: step\ndata: {step}\n\n")

    page.route("**/events", drop_the_first)
    page.fill("#caption", "the digit 3 is at the top left of the image .")
    page.fill("#n", "1")
    page.click("#submit")
    page.wait_for_function("document.querySelectorAll('#grid img').length === 1", timeout=60_000)
    assert len(streams) == 2 and "last-event-id" not in streams[0], streams
    assert streams[1]["last-event-id"] == "1" and streams[1]["authorization"] == f"Bearer {API_KEY}"
    assert page.get_attribute("#error", "hidden") is not None
    page.close()


def _png_pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,"), data_url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L"))


MODE_LABELS = {"tiny-iwae": ["Sample", "Reconstruct", "Walk", "Score"],  # IWAE has an encoder: a likelihood
               "tiny-vaegan": ["Sample", "Reconstruct", "Walk"]}


def _choose(page, model: str, mode: str) -> None:
    page.wait_for_function("document.querySelectorAll('#model option').length > 2")
    page.select_option("#model", model)
    assert page.is_visible("#modes") and not page.is_visible("#caption")
    labels = page.eval_on_selector_all("#modes label:not([hidden])", "ls => ls.map(l => l.textContent.trim())")
    assert labels == MODE_LABELS[model]
    page.check(f"input[name=mode][value={mode}]")


def _upload(browser, server: str, model: str, pixels: np.ndarray, path: Path):
    """A page with `model` in Reconstruct mode and `pixels` saved as `path` and picked in its file input, fitted."""
    Image.fromarray(pixels).save(path)
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    page.goto(server)
    _choose(page, model, "images")
    page.set_input_files("#upload", str(path))
    page.wait_for_function(f"document.querySelector('#pad-note').textContent.includes('{path.name}')")
    return page


def _stroke(page, points: list[tuple[float, float]], pointer_type: str) -> None:
    """Synthesised pointer events on the drawing box, at points given in its CSS pixels."""
    page.eval_on_selector("#pad", """(pad, [points, type]) => {
        const box = pad.getBoundingClientRect();
        const at = ([x, y], kind) => pad.dispatchEvent(new PointerEvent(kind, { pointerId: 7, pointerType: type,
            isPrimary: true, bubbles: true, cancelable: true, button: kind === "pointermove" ? -1 : 0,
            buttons: kind === "pointerup" ? 0 : 1, clientX: box.left + x, clientY: box.top + y }));
        at(points[0], "pointerdown");
        points.slice(1).forEach((p) => at(p, "pointermove"));
        at(points[points.length - 1], "pointerup");
    }""", [points, pointer_type])


def test_a_drawing_is_reconstructed_beside_its_input(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    page.goto(server)
    _choose(page, "tiny-iwae", "images")
    assert page.is_visible("#pad") and page.is_visible("#upload") and not page.is_visible("#walk")
    assert not page.is_visible("#n") and not page.is_visible("#seed")  # n and seed apply to samples
    assert page.inner_text("#submit") == "Reconstruct"
    box = page.locator("#pad").bounding_box()
    assert round(box["width"]) == 196 and round(box["height"]) == 196  # 7 × 28
    assert page.inner_text("#pad-size") == "28 × 28"

    page.click("#submit")  # an empty box: said so, nothing sent
    page.wait_for_selector("#error:not([hidden])")
    assert "Nothing to reconstruct" in page.inner_text("#error")

    # A dash with the real (trusted) mouse, cleared; then a "7": the bar with a pen, the stem with a finger.
    page.mouse.move(box["x"] + 20, box["y"] + 180)
    page.mouse.down()
    page.mouse.move(box["x"] + 34, box["y"] + 180, steps=4)
    page.mouse.up()
    assert _png_pixels(page.get_attribute("#sent", "src"))[24:28, 1:7].any()
    page.click("#clear")
    bar = [(50 + 10 * i, 45) for i in range(11)]
    stem = [(150 - 5 * i, 45 + 13 * i) for i in range(11)]
    assert _png_pixels(page.get_attribute("#sent", "src")).max() == 0
    _stroke(page, bar, "pen")
    _stroke(page, stem, "touch")
    with page.expect_request("**/v1/generations") as posted:
        page.click("#submit")
    body = json.loads(posted.value.post_data)
    assert set(body) == {"model", "images"} and body["model"] == "tiny-iwae" and len(body["images"]) == 1
    sent = _png_pixels(body["images"][0])
    assert sent.shape == (28, 28) and set(np.unique(sent)) == {0, 255}  # binary pixels: what the model reads
    assert sent[6, 9:21].all() and sent[6, 23:].max() == 0 and sent[20:, :3].max() == 0  # the bar; no dot
    assert sent[:, 14:22].sum(axis=1)[10:24].all()  # the stem runs down the middle

    page.wait_for_function("document.querySelectorAll('#grid img').length === 1", timeout=60_000)
    assert page.get_attribute("#error", "hidden") is not None
    assert page.inner_text("#status") == "done: 1 reconstruction(s)"
    assert page.is_visible("#input-figure")  # the input beside its reconstruction
    assert page.get_attribute("#input-shown", "src") == body["images"][0]
    page.wait_for_function("(f => f.naturalWidth === 28 && f.src.endsWith('/images/0.png'))"
                           "(document.querySelector('#frame'))")
    page.screenshot(path=str(SHOTS / "reconstructed.png"))
    page.close()


def test_an_uploaded_image_is_fitted_into_the_models_size(browser, server, tmp_path):
    scan = np.full((60, 40), 230, np.uint8)  # dark ink on light paper, taller than wide
    scan[10:50, 18:22] = 20
    page = _upload(browser, server, "tiny-iwae", scan, tmp_path / "scan.png")
    assert page.inner_text("#pad-note") == "scan.png (40 × 60) scaled to 19 × 28, inverted: its background was light."
    sent = _png_pixels(page.get_attribute("#sent", "src"))
    assert sent.shape == (28, 28) and sent[:, :5].max() == 0 and sent[:, 23:].max() == 0  # fitted: black margins
    ink = sent[:, 11:16].any(axis=1)  # the stroke (40 × 60 -> 19 × 28 at 4 px from the left), now light on black
    assert ink[6:22].all() and not ink[:3].any() and not ink[26:].any() and sent[:, 16:].max() == 0
    with page.expect_request("**/v1/generations") as posted:
        page.click("#submit")
    assert json.loads(posted.value.post_data)["images"][0] == page.get_attribute("#sent", "src")
    page.wait_for_function("document.querySelectorAll('#grid img').length === 1", timeout=60_000)
    page.close()


def test_a_walk_plays_its_points(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    page.goto(server)
    _choose(page, "tiny-iwae", "walk")
    assert page.is_visible("#walk") and not page.is_visible("#pad") and not page.is_visible("#n")
    assert page.inner_text("#submit") == "Walk"
    page.fill("#points", "40")  # past the page's 32: the form refuses it
    page.click("#submit")
    assert not page.eval_on_selector("#points", "e => e.validity.valid") and not page.is_visible("#job")

    page.fill("#walk-from", "5")
    page.fill("#points", "6")
    with page.expect_request("**/v1/generations") as posted:
        page.click("#submit")
    body = json.loads(posted.value.post_data)
    to = int(page.input_value("#walk-to"))  # left blank: a random seed, written into its field
    assert body == {"model": "tiny-iwae", "walk": {"seeds": [5, to], "points": 6}}
    page.wait_for_selector("#player:not([hidden])", timeout=60_000)
    assert page.get_attribute("#scrub", "max") == "6" and page.inner_text("#stepLabel") == "point 6 / 6"
    assert page.inner_text("#status") == f"done: a walk of 6 points from seed 5 to seed {to}"
    assert not page.is_visible("#input-figure")
    downloads = page.eval_on_selector_all("#downloads a", "links => links.map(a => a.textContent)")
    assert downloads == ["PNG", "GIF", "WebP"]
    page.eval_on_selector("#scrub", "e => { e.value = '1'; e.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#stepLabel") == "point 1 / 6"
    page.wait_for_function("(f => f.src.endsWith('/frames/1.png') && f.naturalWidth === 28)"
                           "(document.querySelector('#frame'))")
    page.click("#play")  # plays the points through to the last
    page.wait_for_function("document.querySelector('#play').textContent === 'Play'")
    assert page.inner_text("#stepLabel") == "point 6 / 6"
    assert page.get_attribute("#error", "hidden") is not None
    page.screenshot(path=str(SHOTS / "walk.png"))
    page.select_option("#model", "tiny-align")  # a caption model: the mode choice goes, the caption returns
    assert not page.is_visible("#modes") and not page.is_visible("#walk") and page.is_visible("#caption")
    assert page.inner_text("#submit") == "Draw" and page.is_visible("#n")
    page.close()


def test_a_grey_model_is_sent_grey_levels(browser, server, tmp_path):
    """tiny-vaegan reads pixel / 255 (`pixels`: grey): the fitted upload keeps its grey levels, where a binary model's
    is thresholded, and the reconstruction comes back."""
    ramp = np.tile(np.linspace(0, 200, 28, dtype=np.uint8), (28, 1))  # a dark-bordered ramp: not inverted
    page = _upload(browser, server, "tiny-vaegan", ramp, tmp_path / "ramp.png")
    with page.expect_request("**/v1/generations") as posted:
        page.click("#submit")
    sent = _png_pixels(json.loads(posted.value.post_data)["images"][0])
    assert len(np.unique(sent)) > 10 and 0 < np.median(sent) < 255  # grey levels, not {0, 255}
    page.wait_for_function("document.querySelectorAll('#grid img').length === 1", timeout=60_000)
    assert page.inner_text("#status") == "done: 1 reconstruction(s)"
    page.close()


def test_examples_drawn_one_by_one_give_new_samples_of_that_symbol(browser, server):
    """A set model: draw an example, add it, draw the next; the box's last drawing counts too; n samples come back
    from the examples (POST /v1/generations with `images` and `n`)."""
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 2")
    page.select_option("#model", "tiny-stat28")
    labels = page.eval_on_selector_all("#modes label:not([hidden])", "ls => ls.map(l => l.textContent.trim())")
    assert labels == ["Sample", "From examples", "Classify"]
    page.check("input[name=mode][value=image_set]")
    assert page.is_visible("#pad") and page.is_visible("#set-row") and page.is_visible("#n")
    assert page.inner_text("#submit") == "Draw new samples"
    assert page.inner_text("#pad-legend") == "Examples of one symbol"

    page.click("#submit")  # nothing drawn: said so, nothing sent
    page.wait_for_selector("#error:not([hidden])")
    assert "No examples" in page.inner_text("#error")

    for i, pointer in enumerate(("mouse", "pen")):  # two examples of a "T", added one by one
        _stroke(page, [(40 + 10 * j, 40 + 3 * i) for j in range(12)], pointer)
        _stroke(page, [(95, 40 + 12 * j) for j in range(12)], "touch")
        page.click("#add-example")
        assert page.inner_text("#set-count") == f"{i + 1} example" + ("s" if i else "")
        assert _png_pixels(page.get_attribute("#sent", "src")).max() == 0  # the box is cleared for the next one
    page.click("#set img[data-index='0']")  # a click removes an example
    assert page.inner_text("#set-count") == "1 example"
    _stroke(page, [(30 + 10 * j, 60) for j in range(14)], "pen")  # left in the box: sent as one more example
    page.fill("#n", "3")
    page.fill("#seed", "11")
    with page.expect_request("**/v1/generations") as posted:
        page.click("#submit")
    body = json.loads(posted.value.post_data)
    assert set(body) == {"model", "images", "n", "seed"} and body["n"] == 3 and body["seed"] == 11
    assert len(body["images"]) == 2 and all(_png_pixels(x).shape == (28, 28) for x in body["images"])
    assert _png_pixels(body["images"][1])[8, 5:15].all()  # the box's last stroke: row 60 / 7 px
    page.wait_for_function("document.querySelectorAll('#grid img').length === 3", timeout=60_000)
    assert page.inner_text("#status") == "done: 3 new sample(s) of 2 example(s), seeds 11, 12, 13"
    page.wait_for_function("(f => f.naturalWidth === 28)(document.querySelector('#frame'))")
    page.screenshot(path=str(SHOTS / "examples.png"))
    page.close()


PATH_FROM = "the digit 3 is at the top left of the image"
PATH_TO = "the digit 8 is at the bottom right of the image"


def _finished_job(url: str, body: dict) -> dict:
    """POST a generation to the API and long-poll it to its end."""
    req = urllib.request.Request(f"{url}/v1/generations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        job = json.loads(r.read())
    deadline = time.monotonic() + 60
    while job["status"] not in ("succeeded", "failed", "canceled", "expired") and time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/v1/generations/{job['id']}?wait=30", timeout=40) as r:
            job = json.loads(r.read())
    assert job["status"] == "succeeded", job
    return job


def test_a_caption_path_is_written_by_the_text_model_then_drawn_and_played(browser, server):
    """The caption path: tiny-text writes the sentences between two captions (never offered in the model picker;
    chosen over a-prose-text, whose words tiny-align does not know), tiny-align draws each from one seed; a strip in
    path order and an animation stepping through it. An unknown word is the interpolate job's 422, marked under its
    input, and nothing is drawn."""
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    posts: list[dict] = []
    page.on("request", lambda r: posts.append(json.loads(r.post_data or "{}"))
            if r.method == "POST" and r.url.endswith("/v1/generations") else None)
    page.goto(server)
    page.wait_for_selector("#path:not([hidden])")
    picker = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert "tiny-text" not in picker and "tiny-align" in picker and page.input_value("#model") == "tiny-align"
    # two text models: the one whose words the drawer knows is chosen, not the first listed (a-prose-text)
    assert page.is_visible("#path-models")
    assert page.eval_on_selector_all("#path-text-model option", "os => os.map(o => o.value)") == [
        "a-prose-text", "tiny-text"]
    assert page.input_value("#path-text-model") == "tiny-text" and page.input_value("#path-draw-model") == "tiny-align"

    # An unknown word in "from": marked as typed; the interpolate job's 422 names it; no drawing job is sent.
    page.fill("#path-from", "the digit 3 is beside the image")
    page.fill("#path-to", PATH_TO)
    assert page.locator("#path-from-marked .unknown").count() == 1
    page.click("#path-submit")
    page.wait_for_selector("#path-error:not([hidden])")
    error = page.inner_text("#path-error")
    assert "Unknown words (422)" in error and "“beside”, word 5 in “from”" in error, error
    assert page.inner_text("#path-from-marked .unknown") == "beside"
    assert page.locator("#path-to-marked .unknown").count() == 0
    page.wait_for_function("!document.querySelector('#path-submit').disabled")
    assert [set(p) for p in posts] == [{"model", "interpolate"}] and not page.is_visible("#path-result")
    page.screenshot(path=str(SHOTS / "caption-path-unknown-words.png"), full_page=True)

    # Two real captions, 5 points: the path's sentences, drawn in order from one seed.
    page.fill("#path-from", PATH_FROM)
    page.fill("#path-points", "5")
    page.click("#path-submit")
    page.wait_for_function("document.querySelectorAll('#path-strip figure').length === 5", timeout=90_000)
    page.wait_for_function("[...document.querySelectorAll('#path-strip img')].every(i => i.naturalWidth > 0)")
    assert page.get_attribute("#path-error", "hidden") is not None
    assert page.inner_text("#path-from-marked") == ""  # every word known: nothing marked, nothing repeated
    interpolate, draw = posts[1:]
    assert interpolate == {"model": "tiny-text", "interpolate": {"from": PATH_FROM, "to": PATH_TO, "points": 5}}
    texts = [o["text"] for o in _finished_job(server, interpolate)["outputs"]]  # deterministic: the page's texts
    seed = int(page.input_value("#path-seed"))  # left blank: a random seed, written into its field
    assert draw == {"model": "tiny-align", "captions": texts, "n": 1, "seeds": [seed] * 5}  # one noise for all
    assert page.eval_on_selector_all("#path-strip figcaption", "cs => cs.map(c => c.textContent)") == texts
    strip = page.eval_on_selector_all("#path-strip img", "imgs => imgs.map(i => i.src)")
    assert [s.rsplit("/", 1)[-1] for s in strip] == [f"{i}.png" for i in range(5)]
    status = page.inner_text("#path-status")
    assert status.startswith("done: 5 captions written by tiny-text") and f"from seed {seed}" in status, status

    # The animation steps through the strip's images in order, its caption beside it, and loops.
    shown: list[int] = []
    deadline = time.monotonic() + 30  # 7 points at 700 ms, with room for a loaded CI machine
    while len(shown) < 7 and time.monotonic() < deadline:
        src, caption = page.eval_on_selector("#path-anim", "a => [a.src, "
                                             "document.querySelector('#path-anim-caption').textContent]")
        i = strip.index(src)
        assert caption == texts[i]
        if not shown or shown[-1] != i:
            shown.append(i)
        time.sleep(0.05)
    assert len(shown) == 7 and all((b - a) % 5 == 1 for a, b in zip(shown, shown[1:], strict=False)), shown
    assert page.eval_on_selector("#path-anim", "a => a.naturalWidth") > 0
    page.screenshot(path=str(SHOTS / "caption-path.png"), full_page=True)

    # A point chosen in the strip (by the keyboard here) holds the animation there; the animation's own click plays.
    page.locator("#path-strip figure").nth(2).focus()
    page.keyboard.press("Enter")
    time.sleep(1.5)  # two points' time: it stays
    assert page.get_attribute("#path-anim", "src") == strip[2] and page.get_attribute("#path-anim", "title") == "play"
    page.click("#path-anim")
    page.wait_for_function(f"document.querySelector('#path-anim').src !== {json.dumps(strip[2])}")

    # A failure of the drawing job shows its problem (here a refusal made up in the browser).
    problem = {"type": "https://glimpse.example/problems/unknown-words", "title": "Unknown words", "status": 422,
               "detail": "'zebra' (captions[2], position 1) is not in the vocabulary",
               "unknown_words": [{"caption": 2, "word": "zebra", "position": 1, "start": 4, "end": 9}]}
    page.route("**/v1/generations", lambda route: route.fulfill(
        status=422, content_type="application/problem+json", body=json.dumps(problem))
        if "captions" in (route.request.post_data or "") else route.continue_())
    page.click("#path-submit")
    page.wait_for_selector("#path-error:not([hidden])", timeout=60_000)
    error = page.inner_text("#path-error")
    assert error.startswith("Drawing the path: Unknown words (422): the model does not know"), error
    assert f"“zebra”, word 2 in point 3 (“{texts[2]}”)" in error and not page.is_visible("#path-result")
    page.close()


def _job_status(server: str, job_id: str) -> str:
    with urllib.request.urlopen(f"{server}/v1/generations/{job_id}") as r:
        return json.load(r)["status"]


def _wait_status(server: str, job_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _job_status(server, job_id) != status:
        assert time.monotonic() < deadline, f"job {job_id} never became {status}: {_job_status(server, job_id)}"
        time.sleep(0.1)


def test_a_narrow_window_keeps_every_control_in_reach(browser, server):
    """At a phone's width (390 px) nothing scrolls sideways and the player, the samples and the downloads are each
    the element under their own centre, so a finger reaches them (once they overlapped the canvas)."""
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.fill("#caption", "the digit 3 is at the top left of the image .")
    page.fill("#n", "2")
    page.click("#submit")
    page.wait_for_selector("#player:not([hidden])", timeout=60_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # a shipped model's long id (a select is as wide as its widest option) does not widen the page either
    page.evaluate("document.querySelector('#model').add(new Option('aligndraw-mnist-captions-blind-keys (aligndraw)'))")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ["#model", "#caption", "#submit", "#play", "#scrub", "#downloads a", "#grid img"]:
        reached = page.eval_on_selector(selector, """e => {
            e.scrollIntoView({ block: "center" });
            const r = e.getBoundingClientRect();
            const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
            return r.width > 0 && (hit === e || e.contains(hit));
        }""")
        assert reached, selector
    page.screenshot(path=str(SHOTS / "narrow.png"), full_page=True)
    page.close()


def _drawing(browser, server: str):
    """A page whose default model (tiny-align, 0.25 s a step) is drawing one image: the page and the job's id."""
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 2")
    page.fill("#caption", "the digit 3 is at the top left of the image .")
    page.fill("#n", "1")
    page.click("#submit")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('drawing')", timeout=60_000)
    return page, page.evaluate("state.job.id")


def test_a_running_job_is_canceled_by_its_button_or_by_the_next_job(browser, server):
    page, first = _drawing(browser, server)
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('canceled')", timeout=30_000)
    assert _job_status(server, first) == "canceled" and not page.is_visible("#cancel")
    assert page.get_attribute("#error", "hidden") is not None  # a cancel asked for is no error

    page.click("#submit")  # a job, then another before it ends: the page follows the second, the first is canceled
    page.wait_for_function(f"state.job && state.job.id !== '{first}'")
    second = page.evaluate("state.job.id")
    page.click("#submit")
    page.wait_for_function(f"state.job && state.job.id !== '{second}'")
    _wait_status(server, second, "canceled")
    page.wait_for_function("document.querySelectorAll('#grid img').length === 1", timeout=60_000)
    assert not page.is_visible("#cancel")
    page.close()


def test_the_keyboard_reaches_examples_and_samples(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#examples li').length > 0")
    example = page.locator("#examples li").nth(1)
    example.focus()
    page.keyboard.press("Enter")
    assert page.input_value("#caption") == example.inner_text()
    assert page.evaluate("document.activeElement.id") == "caption"  # back in the caption, ready to submit
    page.fill("#n", "2")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#grid img').length === 2", timeout=60_000)
    page.locator("#grid img").nth(1).focus()
    page.keyboard.press(" ")
    assert page.get_attribute("#grid img >> nth=1", "class") == "selected"
    page.close()


def test_switching_model_clears_the_last_models_error_and_job(browser, server):
    page, running = _drawing(browser, server)  # a running job, then another model: its panel goes, it is canceled
    page.select_option("#model", "tiny-draw")
    assert not page.is_visible("#job") and page.is_disabled("#reuse")
    _wait_status(server, running, "canceled")
    page.select_option("#model", "tiny-align")
    page.fill("#caption", "the digit 3 is beside the cat .")
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#marked .unknown").count() == 2  # a copy of the caption with its unknown words marked
    page.fill("#caption", "the digit 3 is at the top left of the image .")
    assert page.inner_text("#marked") == ""  # no copy while every word is known
    page.select_option("#model", "tiny-draw")
    assert not page.is_visible("#error") and not page.is_visible("#job")
    assert "glimpses" in page.inner_text("#tagline") and "caption" not in page.inner_text("#tagline")
    page.select_option("#model", "tiny-stat28")
    assert "few-shot classification" in page.inner_text("#tagline")
    page.close()


def test_a_drawing_is_scored_by_its_likelihood(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    page.goto(server)
    _choose(page, "tiny-iwae", "likelihood")
    assert page.inner_text("#submit") == "Score" and page.is_visible("#k") and not page.is_visible("#n")
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "Nothing to score" in page.inner_text("#error")
    _stroke(page, [(98, 30 + 12 * i) for i in range(12)], "mouse")
    page.fill("#k", "50")
    with page.expect_request("**/v1/likelihoods") as posted:
        page.click("#submit")
    body = json.loads(posted.value.post_data)
    assert set(body) == {"model", "images", "k"} and body["k"] == 50 and body["model"] == "tiny-iwae"
    page.wait_for_selector("#score:not([hidden])", timeout=60_000)
    job = page.evaluate("state.result")
    out = job["outputs"][0]
    assert out["k"] == 50 and out["nll"] <= -out["elbo"]
    assert page.inner_text("#score") == (f"−log p(x) ≤ {out['nll']:.2f} nats (−L_50); −ELBO {-out['elbo']:.2f} "
                                         "from the same samples")
    assert page.is_visible("#input-figure") and not page.is_visible("#player") and not page.is_visible("#frame")
    page.screenshot(path=str(SHOTS / "scored.png"))
    page.close()


def test_drawn_classes_and_queries_are_classified(browser, server):
    """Few-shot classification on the page: two named classes of one drawing each, two queries that are those very
    drawings; each query's label is its own class, whose score is exactly 0 (the same posterior over c), the other's
    below (POST /v1/classifications with `support` and `query`)."""
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 2")
    page.select_option("#model", "tiny-stat28")
    page.check("input[name=mode][value=few_shot]")
    assert page.is_visible("#classes-row") and not page.is_visible("#set-row") and not page.is_visible("#n")
    assert page.inner_text("#submit") == "Classify"
    page.click("#submit")  # nothing given: said so, nothing sent
    page.wait_for_selector("#error:not([hidden])")
    assert "Too few classes" in page.inner_text("#error")

    bar = [(40 + 10 * j, 50) for j in range(12)]  # class "bar": a stroke across
    post = [(98, 30 + 12 * j) for j in range(12)]  # class "post": a stroke down
    _stroke(page, bar, "mouse")
    page.click("#add-shot")
    assert page.inner_text("#pad-note") == "Name the class first."
    page.fill("#class-label", "bar")
    page.click("#add-shot")
    page.fill("#class-label", "post")
    _stroke(page, post, "pen")
    page.click("#submit")  # one class so far: said so, and the box's drawing (the next class's) stays in the box
    page.wait_for_selector("#error:not([hidden])")
    assert "Too few classes" in page.inner_text("#error") and page.inner_text("#query-count") == "0 queries"
    page.press("#class-label", "Enter")  # Enter in the name adds the box's drawing to that class
    assert page.eval_on_selector_all(".class-row", "rs => rs.map(r => [r.dataset.label, r.querySelectorAll('img')"
                                                   ".length])") == [["bar", 1], ["post", 1]]
    _stroke(page, post, "mouse")
    page.click("#add-query")
    assert page.inner_text("#query-count") == "1 query"
    _stroke(page, bar, "touch")  # left in the box: sent as one more query
    with page.expect_request("**/v1/classifications") as posted:
        page.click("#submit")
    body = json.loads(posted.value.post_data)
    assert set(body) == {"model", "support", "query"} and body["model"] == "tiny-stat28"
    assert [c["label"] for c in body["support"]] == ["bar", "post"]
    assert body["query"] == [body["support"][1]["images"][0], body["support"][0]["images"][0]]
    assert _png_pixels(body["query"][1])[7, 5:15].all()  # the across stroke: row 50 / 7 px
    page.wait_for_selector("#labels-wrap:not([hidden])", timeout=60_000)
    assert page.inner_text("#status") == "done: 2 queries classified"
    assert page.eval_on_selector_all("#labels > li", "ls => ls.map(l => l.dataset.label)") == ["post", "bar"]
    outputs = page.evaluate("state.result.outputs")
    assert [o["scores"][o["label"]] for o in outputs] == [0.0, 0.0]
    assert outputs[0]["scores"]["bar"] < 0 and outputs[1]["scores"]["post"] < 0
    assert page.inner_text("#labels > li:first-child").startswith("post")
    assert page.eval_on_selector_all("#labels > li > img", "is => is.map(i => i.src)") == body["query"]  # each its own
    assert not page.is_visible("#canvas-wrap")
    page.focus("#queries img[data-index='0']")
    page.keyboard.press("Enter")  # the keyboard removes a drawing, and stays on the one that took its place
    assert page.inner_text("#query-count") == "1 query"
    assert page.evaluate("document.activeElement.closest('#queries') !== null")
    page.click(".class-row[data-label='bar'] img")  # a class's last drawing: the class goes with it
    assert page.eval_on_selector_all(".class-row", "rs => rs.map(r => r.dataset.label)") == ["post"]
    page.screenshot(path=str(SHOTS / "classified.png"))
    page.close()


def test_characters_never_seen_in_training_are_picked_as_examples_or_classes(browser, server):
    """A set model's example sets (GET /v1/models `example_sets`) as pickable thumbnails: in From examples a pick
    becomes the examples (all its drawings but the last); in Classify a class named after it, its last drawing a
    query; each query comes back labelled with its own character."""
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#model option').length > 2")
    page.select_option("#model", "tiny-stat28")
    assert not page.is_visible("#picks")  # Sample mode reads no drawings
    page.check("input[name=mode][value=image_set]")
    titles = page.eval_on_selector_all("#pick-list img", "is => is.map(i => i.title)")
    assert titles == [s["name"] for s in EXAMPLE_SETS]
    page.click("#pick-list img[data-index='1']")
    assert page.inner_text("#set-count") == "2 examples"
    assert page.inner_text("#pad-note") == f"The examples are 2 drawings of {EXAMPLE_SETS[1]['name']}."
    assert page.eval_on_selector_all("#set img", "is => is.map(i => i.src)") == [
        "data:image/png;base64," + x for x in EXAMPLE_SETS[1]["images"][:2]]

    page.check("input[name=mode][value=few_shot]")
    page.click("#pick-list img[data-index='0']")
    page.click("#pick-list img[data-index='1']")
    page.click("#pick-list img[data-index='1']")  # twice: said so, not added again
    assert page.inner_text("#pad-note") == f"{EXAMPLE_SETS[1]['name']} is a class already."
    assert page.eval_on_selector_all(".class-row", "rs => rs.map(r => [r.dataset.label, r.querySelectorAll('img')"
                                                   ".length])") == [[s["name"], 2] for s in EXAMPLE_SETS]
    assert page.inner_text("#query-count") == "2 queries"
    with page.expect_request("**/v1/classifications") as posted:
        page.click("#submit")
    body = json.loads(posted.value.post_data)
    url = [["data:image/png;base64," + x for x in s["images"]] for s in EXAMPLE_SETS]
    assert body["support"] == [{"label": s["name"], "images": url[i][:2]} for i, s in enumerate(EXAMPLE_SETS)]
    assert body["query"] == [url[0][2], url[1][2]]
    page.wait_for_selector("#labels-wrap:not([hidden])", timeout=60_000)
    outputs = page.evaluate("state.result.outputs")  # an untrained model: right or wrong, the page must say which
    assert [o["input"] for o in outputs] == [0, 1]
    right = [o["label"] == EXAMPLE_SETS[o["input"]]["name"] for o in outputs]
    assert page.eval_on_selector_all("#labels > li", "ls => ls.map(l => l.dataset.label)") == [
        o["label"] for o in outputs]
    assert page.inner_text("#status") == (f"done: 2 queries classified; {sum(right)} of the 2 picked ones labelled "
                                          "with their own character")
    assert page.eval_on_selector_all("#labels .label-head span", "ss => ss.map(s => s.className)") == [
        "right" if r else "wrong" for r in right]
    page.screenshot(path=str(SHOTS / "picked.png"))
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: long names wrap, nothing scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(SHOTS / "picked-narrow.png"), full_page=True)
    page.check("input[name=mode][value=image_set]")  # another mode: the classification's result goes
    assert not page.is_visible("#job")
    page.close()
