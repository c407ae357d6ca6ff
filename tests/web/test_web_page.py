"""The trial web page in a real headless Chromium against the real stack: upload a photo, see the
detected boxes, get a non-empty grid, tap another box, apply a filter; plus the HTTP bridge's
boundary checks."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from visual_search import client as vc
from visual_search.launcher import DEFAULT_MANIFEST, Stack, StackOptions, stack_missing
from visual_search.supervise import free_port
from visual_search.web.server import WebApp, make_handler

ROOT = Path(__file__).resolve().parents[2]
BUS = ROOT / "tests" / "data" / "bus.jpg"
LABELS = ("Oatly-Oat-Milk", "Arla-Sour-Milk")


def _needs() -> str | None:
    if (why := stack_missing()) is not None:
        return why
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        return "chromium/chromedriver not installed (scripts/install_browser.sh)"
    return None


pytestmark = pytest.mark.skipif(_needs() is not None, reason=str(_needs()))


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from visual_search.client_cli import iter_source

    with Stack(StackOptions(tmp_path_factory.mktemp("stack"), shards=1, precision="fp32")) as stack:
        rows = [r for r in iter_source(DEFAULT_MANIFEST, "catalog") if r[2] in LABELS]
        rows = [r for lbl in LABELS for r in rows if r[2] == lbl][:3] + [
            r for r in rows if r[2] == LABELS[1]
        ][:3]
        root = DEFAULT_MANIFEST.parent
        items = [
            vc.IndexItem(
                i,
                p.read_bytes(),
                category=lbl,
                price=3.0,
                available=True,
                region="eu",
                attributes={"image": str(p.relative_to(root))},
            )
            for i, p, lbl in rows
        ]
        with vc.Client(stack.gateway.address, timeout=120) as c:
            assert all(r.ok for r in c.index(items))
        app = WebApp(stack.gateway.address, str(root), None, 60.0)
        httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), make_handler(app))
        t = threading.Thread(target=httpd.serve_forever, daemon=True)
        t.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_page_upload_boxes_grid_tap_and_filter(web: str, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    drv = browser
    drv.get(web)  # type: ignore[attr-defined]
    wait = WebDriverWait(drv, 90)
    drv.find_element(By.ID, "file").send_keys(str(BUS))  # type: ignore[attr-defined]
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.result")) > 0)
    buttons = drv.find_elements(By.CSS_SELECTOR, "#boxes button")  # type: ignore[attr-defined]
    labels = [b.text for b in buttons]
    assert any("bus" in t for t in labels) and sum("person" in t for t in labels) >= 3, labels
    selected = [b.text for b in buttons if "sel" in (b.get_attribute("class") or "")]
    assert selected and "bus" in selected[0]  # the most salient box is the default
    cards = drv.find_elements(By.CSS_SELECTOR, ".card.result")  # type: ignore[attr-defined]
    assert len(cards) >= 3
    assert "model" in drv.find_element(By.ID, "summary").text  # type: ignore[attr-defined]
    # a bus against a milk catalog: the calibrated "no close match" banner, the grid faded
    banner = drv.find_element(By.ID, "noclose")  # type: ignore[attr-defined]
    assert banner.is_displayed() and "No close match" in banner.text
    assert all("far" in (c.get_attribute("class") or "") for c in cards)
    # result photos are served from the catalog folder
    img = cards[0].find_element(By.TAG_NAME, "img")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 0)
    drv.save_screenshot(str(tmp_path / "page.png"))  # type: ignore[attr-defined]
    assert (tmp_path / "page.png").stat().st_size > 10_000

    # tap another object: the summary names the newly searched class
    person = next(b for b in buttons if "person" in b.text)
    person.click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "summary"), "searched: person"))

    # a filter narrows the grid to the chosen category
    drv.find_element(By.ID, "f-category").send_keys(LABELS[0])  # type: ignore[attr-defined]
    drv.find_element(By.ID, "apply").click()  # type: ignore[attr-defined]
    wait.until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, ".card.result .md")
            and all(LABELS[0] in e.text for e in d.find_elements(By.CSS_SELECTOR, ".card.result .md"))
        )
    )


def test_bridge_maps_bad_input_to_http_errors(web: str) -> None:
    assert _post(web + "/api/search", b"[1, 2]")[0] == 400
    assert _post(web + "/api/search", json.dumps({"image": "!!not base64!!"}).encode())[0] == 400
    status, body = _post(
        web + "/api/search", json.dumps({"image": base64.b64encode(b"junk").decode()}).encode()
    )
    assert status == 400 and "decode" in body["error"]
    status, body = _post(
        web + "/api/search",
        json.dumps({"image": base64.b64encode(BUS.read_bytes()).decode(), "k": 0}).encode(),
    )
    assert status == 400, body
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(web + "/api/image?path=../../../etc/passwd", timeout=10)
    assert e.value.code == 400  # not an image file: refused before any path lookup
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(web + "/api/image?path=../../../etc/x.jpg", timeout=10)
    assert e.value.code == 404  # outside the catalog folder
