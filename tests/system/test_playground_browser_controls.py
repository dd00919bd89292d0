"""The playground's own feedback in Chromium: the key is checked when saved, the job panel stays in
view beside a tall picture, the seed control offers "random". Fixtures and helpers are those of
tests/system/test_playground_browser.py (a real ``retouch serve`` on tiny weights)."""

from __future__ import annotations

from tests.conftest import encode, make_photo
from tests.system.test_playground_browser import API_KEY, _save_key, _shot, browser, page, server  # noqa: F401


def test_playground_says_a_saved_key_is_wrong_at_once(page, server):  # noqa: F811 (fixtures)
    _save_key(page, "not-the-right-key-000")
    page.wait_for_function("document.getElementById('key-state').classList.contains('bad')")
    shown = page.inner_text("#key-state")
    assert "refused" in shown and "401" in shown, shown
    _shot(page, "0-key-refused")
    _save_key(page, API_KEY)
    page.wait_for_function("document.getElementById('key-state').textContent.includes('accepted')")
    assert "bad" not in page.get_attribute("#key-state", "class")


def test_playground_keeps_the_job_in_view_and_offers_a_random_seed(page, server, tmp_path):  # noqa: F811
    tall = tmp_path / "tall.png"
    tall.write_bytes(encode(make_photo(96, 1000, seed=3)))
    _save_key(page, API_KEY)
    assert page.input_value("#seed") == "" and page.get_attribute("#seed", "placeholder") == "random"
    assert page.inner_text("#seed-random") == "random"
    page.fill("#seed", "7")
    page.click("#seed-random")
    assert page.input_value("#seed") == ""
    page.set_input_files("#file-input", [str(tall)])
    page.fill("#prompt", "make it warmer")
    with page.expect_request(lambda r: r.url.endswith("/edit/image/v1") and r.method == "POST") as sent:
        page.click("#submit")
    assert sent.value.post_data_json["seed"] == -1  # "random" asks the server to pick one
    page.wait_for_selector("#result:not([hidden]), #error:not([hidden])", timeout=120_000)
    assert page.is_hidden("#error"), page.inner_text("#error")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_timeout(200)
    box = page.evaluate("document.getElementById('job').getBoundingClientRect().toJSON()")
    top, bottom = box["top"], box["bottom"]
    assert page.evaluate("window.scrollY") > 2000  # the picture made the page that tall
    assert top >= 0 and bottom <= 900, (top, bottom)  # the job panel is still on screen
    assert page.inner_text("#result-seed") not in ("", "-1")
    _shot(page, "5-tall-picture-scrolled")


def test_playground_shows_the_demo_strip_only_while_the_demo_set_is_served(page, server):  # noqa: F811
    page.wait_for_selector("#demo-strip:not([hidden])", timeout=10_000)
    assert "demo weights: pictures are noise" in page.inner_text("#demo-strip")
    _shot(page, "6-demo-strip")
    # The same page in front of a server with real weights: /readyz says "registry", no strip.
    page.route(
        "**/readyz",
        lambda route: route.fulfill(
            status=200,
            content_type="application/json",
            body='{"status": "ready", "weights": {"set": "registry"}}',
        ),
    )
    page.reload()
    page.wait_for_function("document.getElementById('key-state').textContent.length > 0")
    page.wait_for_timeout(300)
    assert page.is_hidden("#demo-strip")
