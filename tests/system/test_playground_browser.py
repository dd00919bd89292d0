"""The web playground in a real browser: Debian's Chromium driven by Playwright, against a real
``retouch serve`` on tiny weights. Screenshots go to benchmarks/out/playground/ (git-ignored)."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from server.store import SQLiteStore
from tests.conftest import PLAYGROUND_KEY, encode, make_photo
from tests.unit.test_metrics import start_long_job, worker_paused

CHROMIUM = os.environ.get("RETOUCH_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "benchmarks" / "out" / "playground"
STATIC = ROOT / "server" / "static"
API_KEY = PLAYGROUND_KEY

sync_api = pytest.importorskip("playwright.sync_api")

if not Path(CHROMIUM).exists():  # .ci/run installs it; a dev box without it skips with the reason
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def server(playground_serve):
    """The playground's server: ``playground_serve`` (tests/conftest.py), one for both playground
    modules (test_playground_browser_controls.py imports these fixtures)."""
    return playground_serve


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    script_errors = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    page.set_default_timeout(60_000)
    page.goto(server.base_url + "/")
    yield page
    context.close()
    assert not script_errors, f"the page's scripts failed: {script_errors}"


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _save_key(page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#save-key")


def _write_pictures(folder: Path) -> tuple[Path, Path]:
    first, second = folder / "photo.png", folder / "product.png"
    first.write_bytes(encode(make_photo(96, 64, seed=1)))
    second.write_bytes(encode(make_photo(64, 64, seed=2)))
    return first, second


@contextlib.contextmanager
def _frozen_while_processing(page, server):
    """The page's job, frozen mid-run (its worker SIGSTOPped) once the server says it runs: a job
    of the tiny set can end between two of the page's 400 ms polls, never while frozen."""
    page.wait_for_function("document.getElementById('job-id').textContent.length > 0")
    job_id = page.inner_text("#job-id")
    headers = {"X-API-Key": API_KEY}
    deadline = time.monotonic() + 120
    while (
        requests.get(f"{server.base_url}/edit/image/v1/status/{job_id}", headers=headers).json()["status"]
        != "processing"
    ):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    with worker_paused(server.data_dir, running=(server.base_url, headers, job_id)):
        page.wait_for_function("document.getElementById('job-status').textContent.startsWith('processing')")
        yield job_id


def _drag(page, box, points) -> None:
    page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=6)
    page.mouse.up()


def test_playground_shows_the_servers_error_for_a_wrong_key(page, server, tmp_path):
    first, _ = _write_pictures(tmp_path)
    _save_key(page, "not-the-right-key-000")
    page.set_input_files("#file-input", [str(first)])
    page.fill("#prompt", "make it warmer")
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    expected = requests.post(
        server.base_url + "/upload/image/v1",
        headers={"X-API-Key": "not-the-right-key-000"},
        files={"file": ("photo.png", first.read_bytes(), "image/png")},
    ).json()["message"]
    assert expected in page.inner_text("#error")
    assert "401" in page.inner_text("#error")
    _shot(page, "0-wrong-key")


def test_playground_shows_the_servers_validation_message(page, server, tmp_path):
    first, _ = _write_pictures(tmp_path)
    _save_key(page, API_KEY)
    page.set_input_files("#file-input", [str(first)])
    page.fill("#prompt", "make it warmer")
    page.check("input[name=speed][value=quality]")
    page.fill("#steps", "500")  # the contract allows 1-100
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    shown = page.inner_text("#error")
    assert "num_inference_steps" in shown and "INVALID_PARAMETERS" in shown and "422" in shown, shown
    assert page.is_enabled("#submit") and page.is_hidden("#job")


def test_playground_cancel_stops_the_running_job(page, server, tmp_path):
    first, _ = _write_pictures(tmp_path)
    _save_key(page, API_KEY)
    page.set_input_files("#file-input", [str(first)])
    page.fill("#prompt", "a long edit to cancel")
    page.check("input[name=speed][value=quality]")
    page.fill("#steps", "100")
    page.click("#submit")
    with _frozen_while_processing(page, server) as job_id:
        page.click("#cancel")  # asked while the job runs: the worker stops at its next step
        store = SQLiteStore(server.data_dir / "retouch.sqlite3")
        deadline = time.monotonic() + 30
        while not store.get_job(job_id).cancel_requested:
            assert time.monotonic() < deadline, "the page's cancel never reached the server"
            time.sleep(0.02)
    page.wait_for_selector("#job-note:not([hidden])", timeout=60_000)
    assert page.inner_text("#job-status").startswith("cancelled")
    # The user's own cancel is a state of the job, not the red error box.
    assert "cancelled" in page.inner_text("#job-note").lower() and page.is_hidden("#error")
    assert page.is_hidden("#result") and page.is_hidden("#cancel") and page.is_enabled("#submit")
    _shot(page, "0-cancelled")


def test_playground_edit_with_painted_mask_end_to_end(page, server, tmp_path):
    first, second = _write_pictures(tmp_path)
    original = np.asarray(Image.open(first).convert("RGB"))

    # The key is typed once and survives a reload (kept in localStorage).
    _save_key(page, API_KEY)
    page.reload()
    assert page.input_value("#api-key") == API_KEY
    assert "saved" in page.inner_text("#key-state")

    page.set_input_files("#file-input", [str(first), str(second)])
    assert page.locator("#thumbs li").count() == 2
    page.wait_for_function("document.getElementById('mask-canvas').width === 96")

    # Paint a band on the left and a stroke on the right, then erase the right stroke: only the
    # left band may change, so the result proves both the brush and the eraser reached the server.
    box = page.locator("#mask-canvas").bounding_box()
    page.fill("#brush-size", "120")
    _drag(page, box, [(0.15, 0.1), (0.15, 0.9)])
    _drag(page, box, [(0.85, 0.2), (0.85, 0.8)])
    page.click("#tool-eraser")
    page.fill("#brush-size", "200")
    _drag(page, box, [(0.85, 0.05), (0.85, 0.95)])
    page.click("#tool-brush")
    assert "painted" in page.inner_text("#mask-state")
    _shot(page, "1-mask-painted")

    page.fill("#prompt", "make the left side red, image 2 is a product")
    page.check("input[name=speed][value=quality]")
    assert page.is_enabled("#steps")
    page.fill("#steps", "60")
    page.fill("#seed", "7")
    page.select_option("#format", "png")
    page.fill("#refine", "0.2")
    page.dispatch_event("#refine", "input")
    assert page.input_value("#refine") == "0.2"

    # Record every status the page shows, so short-lived states are not missed between checks.
    page.evaluate(
        """() => {
        window.seen = [];
        new MutationObserver(() => {
            const bars = {};
            for (const bar of document.querySelectorAll('#stages progress'))
                bars[bar.dataset.stage] = bar.value;
            window.seen.push({
                status: document.getElementById('job-status').textContent,
                queue: document.getElementById('queue-position').textContent,
                eta: document.getElementById('eta').textContent,
                bars,
            });
        }).observe(document.getElementById('job'), {subtree: true, childList: true, characterData: true});
    }"""
    )
    # A long job runs, frozen, until the page has shown ours waiting behind it in the queue.
    busy = start_long_job(server.base_url, {"X-API-Key": API_KEY})
    with worker_paused(server.data_dir, running=(server.base_url, {"X-API-Key": API_KEY}, busy)):
        started = time.monotonic()
        page.click("#submit")
        page.wait_for_selector("#queue-position:not([hidden])")
        assert page.inner_text("#queue-position") == "Position in queue: 1"
        assert page.inner_text("#eta").startswith("ETA: about ")
        _shot(page, "2-queued")
    frozen_s = time.monotonic() - started
    # Frozen mid-job, the page must show exactly the server's progress: earlier stages full, the
    # current one at step/total.
    with _frozen_while_processing(page, server):
        page.wait_for_timeout(1200)  # a few of the page's polls
        status = requests.get(
            f"{server.base_url}/edit/image/v1/status/{page.inner_text('#job-id')}",
            headers={"X-API-Key": API_KEY},
        ).json()
        assert status["status"] == "processing", status
        detail = status["progress_detail"]
        bars = {
            b.get_attribute("data-stage"): int(b.get_attribute("value"))
            for b in page.query_selector_all("#stages progress")
        }
        stages = list(bars)
        assert bars[detail["stage"]] == math.floor(
            100 * detail["step"] / detail["total"] + 0.5
        )  # Math.round, (bars, detail)
        assert all(bars[s] == 100 for s in stages[: stages.index(detail["stage"])]), (bars, detail)
        assert all(bars[s] == 0 for s in stages[stages.index(detail["stage"]) + 1 :]), (bars, detail)
        assert page.inner_text("#job-status") == f"processing - {status['progress']}%"
        _shot(page, "3-progress")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    page.wait_for_selector("#download[data-ready='true']")
    shown_after_s = time.monotonic() - started
    _shot(page, "4-result")
    assert page.is_hidden("#cancel") and page.is_enabled("#submit")

    seen = page.evaluate("window.seen")
    assert any(s["status"].startswith("queued") and s["queue"] == "Position in queue: 1" for s in seen), seen
    assert any(s["status"].startswith("processing") for s in seen), seen
    final = {
        b.get_attribute("data-stage"): b.get_attribute("value")
        for b in page.query_selector_all("#stages progress")
    }
    assert final and set(final.values()) == {"100"}, final
    assert "refine" in final

    # Seed and timings of the job are shown.
    assert page.inner_text("#result-seed") == "7"
    for cell in ("#t-queue", "#t-inference", "#t-total"):
        assert page.inner_text(cell).endswith(" s")
    assert float(page.inner_text("#t-queue").split()[0]) > 0  # it waited while the worker was frozen
    assert page.evaluate("document.getElementById('after-image').naturalWidth") == 96

    # The before/after slider uncovers the original on the left.
    page.fill("#compare-slider", "20")
    page.dispatch_event("#compare-slider", "input")
    assert page.evaluate("document.getElementById('before-image').style.clipPath") == "inset(0px 80% 0px 0px)"

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename.endswith(".png")
    saved = ARTIFACTS / "result.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    download.save_as(saved)
    result = np.asarray(Image.open(io.BytesIO(saved.read_bytes())).convert("RGB"))
    assert result.shape == original.shape
    # The painted mask reached the server: the unpainted right side is the input's exact pixels,
    # the painted left side was edited.
    assert np.array_equal(result[:, 48:], original[:, 48:])
    assert not np.array_equal(result[8:56, 8:22], original[8:56, 8:22])

    status = requests.get(f"{server.base_url}/edit/image/v1/status/{busy}", headers={"X-API-Key": API_KEY})
    assert status.json()["status"] == "completed"
    engine = os.environ.get("RETOUCH_ENGINE_FACTORY", "pipelines:EditEngine")
    (ARTIFACTS / "timing.txt").write_text(
        f"submit to result shown: {shown_after_s:.1f} s, of which {frozen_s:.1f} s frozen on purpose"
        f" behind a 60-step job; the rest includes finishing that job (engine {engine})\n"
    )


def test_playground_page_is_served_without_a_build_step(server):
    """Every asset the page loads is a file committed under server/static, served as written."""
    page = requests.get(server.base_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="/playground/([^"]+)"', page.text)
    assert sorted(assets) == ["app.js", "mask.js", "style.css"]
    for asset in assets:
        served = requests.get(f"{server.base_url}/playground/{asset}")
        assert served.status_code == 200
        assert served.content == (STATIC / asset).read_bytes()
    assert '<link rel="icon" href="/favicon.ico"' in page.text
    icon = requests.get(server.base_url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(icon.content)).format == "ICO"
