"""The web page at `GET /` in a real headless Chromium (Debian's, driven by Playwright) against a real
`gpuvision serve` with an API key: it asks for the key and keeps it for the tab, shows the class `gpuvision predict`
prints for an uploaded test image, and a click on a feedback label moves the monitor panel's count. A screenshot
(at a phone's width) is kept as a test artifact; its path is printed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import serve_process

from gpuvision.cli import main

pytest.importorskip("fastapi")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY = "page-test-key-0123456789"
SECONDS = 30_000  # ms Playwright waits for a change on the page


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (it is in the dev "
                                   "extra: pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium; .ci/run does)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file()
                                             else shutil.which("chromium"), args=ARGS)
        yield browser
        browser.close()


def test_the_page_classifies_takes_feedback_and_shows_the_monitor(browser, digits_model, tmp_path, capsys):
    from PIL import Image
    from playwright.sync_api import expect

    from gpuvision.data import load_images
    from gpuvision.data.split import load_split

    images = load_images("digits")
    first = load_split(digits_model / "split.json", images).test[0]
    image = tmp_path / "digit.png"
    Image.fromarray(images.images[first, 0]).save(image)
    truth = images.classes[images.labels[first]]
    assert main(["predict", str(digits_model), str(image), "--no-tta", "--device", "cpu", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"][0]["top"][0]["class"]

    (tmp_path / "key").write_text(KEY)
    args = [f"digits={digits_model}", "--device", "cpu", "--runtime", "eager", "--api-key-file", str(tmp_path / "key")]
    with serve_process(args, tmp_path / "stderr.txt") as (_, info):
        context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone's width
        page = context.new_page()
        page.goto(info["url"] + "/")
        key = page.get_by_label("This server needs an API key")
        expect(key).to_be_focused()
        key.fill(KEY)
        page.keyboard.press("Enter")  # the keyboard alone
        expect(page.locator("#classify")).to_be_visible()
        labelled = page.locator('[data-field="labelled"]')
        expect(labelled).to_have_text("0", timeout=SECONDS)

        page.locator("#files").set_input_files(str(image))
        expect(page.locator("[data-top]").first).to_have_text(expected, timeout=SECONDS)
        page.locator(f'.feedback button[data-label="{truth}"]').first.click()
        expect(labelled).to_have_text("1", timeout=SECONDS)
        expect(page.locator('[data-field="accuracy"]')).to_contain_text("(1)")
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")

        page.reload()  # the key is kept for the tab...
        expect(page.locator("#classify")).to_be_visible()
        expect(page.locator("#key-form")).to_be_hidden()
        other = context.browser.new_context().new_page()  # ...and only for it
        other.goto(info["url"] + "/")
        expect(other.locator("#key-form")).to_be_visible()
        context.close()
    assert shot.stat().st_size > 10_000
