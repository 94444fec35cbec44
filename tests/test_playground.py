"""The web playground at `/`: public like /health, self-contained (no CDN), and in a real headless Chromium it shows
the API's own probabilities as bars, the classifier card, a batch table and CSV; an API key typed in the page is
sent to /v1/*."""

from __future__ import annotations

import re
import shutil
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from classlm import LMClassifier  # noqa: E402
from classlm.serving import ServeSettings, create_app  # noqa: E402
from conftest import ARTIFACTS, find_chromium, free_port, wait_until  # noqa: E402

LABELS = {"World": "world news", "Sports": "sport", "Business": "business", "Sci/Tech": "science and technology"}
TEXTS = ["Stocks fell sharply on Monday.", "The team won the match 3-1.", "A new <phone> & tablet were released."]
KEY = "s3cret-key"
EVALUATION = {"n": 40, "accuracy": 0.875, "macro_f1": 0.8612, "nll": 0.41, "ece": 0.031, "data": "demo/test"}


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    return LMClassifier(model=str(tiny_model_dir), labels=LABELS, batch_size=4).fit([])


def test_the_page_is_public_and_self_contained_and_the_card_data_is_served(clf):
    with TestClient(create_app(clf, ServeSettings(api_key=KEY), evaluation=EVALUATION)) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert c.get("/v1/model").status_code == 401  # the data behind it still needs the key
        info = c.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["evaluation"] == EVALUATION and info["classes"] == list(LABELS)
    html = page.text
    # Nothing from elsewhere: no external script, stylesheet, font or image, and fetch() only of this server's API.
    assert not re.findall(r"<link|<img|\bsrc=|@import|url\(|https?://", html)
    assert sorted(set(re.findall(r"fetch\(([^,)]+)", html))) == ["path"]
    assert sorted(set(re.findall(r'api\("([^"]+)"', html))) == ["/v1/classify", "/v1/model"]


class _Server:
    """``classlm serve``'s app and uvicorn set-up in a thread, on a free loopback port, with an API key."""

    def __init__(self, clf):
        import uvicorn

        from classlm.serving.protocol import uvicorn_config

        self.settings = ServeSettings(api_key=KEY, port=free_port())
        app = create_app(clf, self.settings, evaluation=EVALUATION)
        self.server = uvicorn.Server(uvicorn_config(app, self.settings, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=60, what="uvicorn to start")
        return f"http://127.0.0.1:{self.settings.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    browser = find_chromium()
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium and chromedriver found (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1300"):
        options.add_argument(arg)
    # The driver's path given: Selenium Manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def _wait(driver, condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition(driver)
        except Exception:  # noqa: BLE001 - the element may not exist yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}; page text: {driver.find_element('tag name', 'body').text[:800]}"
            )
        time.sleep(0.1)


def test_in_a_real_browser_the_bars_are_the_apis_probabilities(clf, tmp_path):
    driver = _browser()
    by = "css selector"
    try:
        with _Server(clf) as url:
            driver.get(url + "/")
            # The server wants a key: the page asks for it, then shows the classifier card.
            box = _wait(driver, lambda d: d.find_element(by, "#key-box:not(.hidden)"), "the API-key box")
            box.find_element(by, "#api-key").send_keys(KEY)
            driver.find_element(by, "#key-save").click()
            card = _wait(driver, lambda d: d.find_element(by, "#model-card"), "the classifier card").text
            assert "World, Sports, Business, Sci/Tech" in card and "label_tokens" in card
            assert "macro-F1 0.861" in card and "40 texts" in card

            driver.find_element(by, "#text").send_keys(TEXTS[0])
            driver.find_element(by, "#classify").click()
            bars = _wait(driver, lambda d: d.find_elements(by, "#results .bar"), "the bars")
            shown = {b.get_attribute("data-class"): float(b.get_attribute("data-prob")) for b in bars}
            expected = clf.predict_proba([TEXTS[0]])[0]
            assert list(shown) == [list(LABELS)[i] for i in np.argsort(-expected, kind="stable")]  # sorted by p
            np.testing.assert_allclose([shown[c] for c in LABELS], expected, atol=1e-6)
            # The percentage a person reads is that probability, and the longest bar is the top class.
            assert bars[0].find_element(by, ".p").text == f"{100 * expected.max():.1f}%"
            assert driver.find_element(by, "#results [data-truncated]").get_attribute("data-truncated") == "false"
            driver.save_screenshot(str(tmp_path / "playground.png"))

            # Batch mode: one text per line gives a table row per text and a CSV to download.
            driver.find_element(by, "#tab-batch").click()
            driver.find_element(by, "#batch-text").send_keys("\n".join(TEXTS))
            driver.find_element(by, "#batch-run").click()
            rows = _wait(driver, lambda d: d.find_elements(by, "#batch-results tr")[1:], "the batch table")
            assert len(rows) == len(TEXTS)
            expected = clf.predict_proba(TEXTS)
            for row, p, text in zip(rows, expected, TEXTS):
                cells = [c.text for c in row.find_elements(by, "td")]
                assert cells[1] == text and cells[2] == list(LABELS)[int(np.argmax(p))]
                assert cells[3:] == [f"{v:.3f}" for v in p]
            csv = driver.execute_script(
                "return fetch(document.getElementById('batch-download').href).then(r => r.text())"
            )
            lines = csv.strip().split("\n")
            assert lines[0] == "text,label," + ",".join(LABELS) and len(lines) == 1 + len(TEXTS)
            assert lines[3].startswith(f"{TEXTS[2]},")
    finally:
        driver.quit()
    from conftest import keep_artifact

    keep_artifact(tmp_path / "playground.png", "playground.png")
    assert ARTIFACTS.joinpath("playground.png").stat().st_size > 10_000
