"""The page at / in a real headless browser: Debian's chromium driven by Playwright, on loopback only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

from serve_helpers import LABELS, running_server, save_tiny_classifier  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# headless and offline: nothing but the server on loopback may be contacted
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium; without it a developer's run skips, but CI (which installs it) fails."""
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install -y chromium)", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium to run the browser test")
    return CHROMIUM


def test_page_shows_labels_with_score_bars(chromium, tmp_path):
    from hfcompress.serving.app import create_app
    from hfcompress.serving.config import ServeConfig

    model = save_tiny_classifier(tmp_path / "tiny")
    with running_server(create_app(model, ServeConfig())) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            playwright_api.expect(page.locator("#about")).to_contain_text("text-classification")
            page.fill("#text", "a gripping, beautifully shot film")
            page.click("#predict")
            rows = page.locator(".result")
            playwright_api.expect(rows).to_have_count(len(LABELS))
            labels = rows.locator(".label").all_inner_texts()
            scores = [float(s) for s in rows.locator(".score").all_inner_texts()]
            widths = [bar.evaluate("e => e.style.width") for bar in rows.locator(".bar > div").all()]
            page.fill("#text", "")
            page.click("#predict")
            playwright_api.expect(page.locator("#error")).to_contain_text("Type some text")
        finally:
            browser.close()
    assert sorted(labels) == sorted(LABELS.values())
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=2e-3)
    assert [float(w.rstrip("%")) for w in widths] == pytest.approx([100 * s for s in scores], abs=0.1)


def test_api_docs_render_offline(chromium, tmp_path):
    """Swagger UI at /docs and ReDoc at /redoc draw the /predict operation from scripts and styles of this server alone.

    The one request elsewhere is ReDoc's own logo (an image from Redocly's CDN, in its sidebar): offline it stays blank."""
    from hfcompress.serving.app import create_app
    from hfcompress.serving.config import ServeConfig

    model = save_tiny_classifier(tmp_path / "tiny")
    elsewhere = []

    def only_this_server(route, url):
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            elsewhere.append((route.request.resource_type, route.request.url))
            route.abort()

    with running_server(create_app(model, ServeConfig())) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: only_this_server(route, url))
            page.goto(url + "/docs")
            playwright_api.expect(page.locator(".opblock-summary-path", has_text="/predict")).to_be_visible()
            playwright_api.expect(page.locator(".opblock-summary-method", has_text="POST").first).to_be_visible()
            page.goto(url + "/redoc")
            playwright_api.expect(page.locator("h2", has_text="Predict").first).to_be_visible()
        finally:
            browser.close()
    assert [kind for kind, _ in elsewhere if kind != "image"] == [], elsewhere


def test_page_streams_a_generation(chromium, tmp_path):
    import httpx

    from hfcompress.serving.app import create_app
    from hfcompress.serving.config import ServeConfig
    from test_serve_generation import PROMPT, save_tiny_lm

    model = save_tiny_lm(tmp_path / "lm", "llama")
    with running_server(create_app(model, ServeConfig())) as url, playwright_api.sync_playwright() as p:
        expected = httpx.post(f"{url}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 8}}).json()["generated_text"]
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            playwright_api.expect(page.locator("#about")).to_contain_text("text-generation")
            playwright_api.expect(page.locator("#predict")).to_be_hidden()
            page.fill("#prompt", PROMPT)
            page.fill("#max-new-tokens", "8")
            page.click("#generate")
            playwright_api.expect(page.locator("#generated")).to_have_text(PROMPT + expected)  # the prompt, then the streamed tokens
            playwright_api.expect(page.locator("#generate")).to_be_enabled()
            page.fill("#prompt", "")
            page.click("#generate")
            playwright_api.expect(page.locator("#error")).to_contain_text("Type a prompt")
        finally:
            browser.close()
