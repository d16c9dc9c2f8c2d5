"""The upload page in headless Chromium (Debian's chromium, driven by Playwright).

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never
``playwright install``: no browser download). Skips with the reason when either is absent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agegender.infer.bench import make_photos
from agegender.serve import ServeSettings, create_app

CHROMIUM = os.environ.get("AGEGENDER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    from test_serve import LiveServer, make_predictor

    live = LiveServer(create_app(make_predictor(), ServeSettings()))
    yield live.url
    live.stop()


def test_upload_page_shows_boxes_and_table(
    browser, live_url: str, utkface_dir: Path, tmp_path: Path
) -> None:
    photos = make_photos(utkface_dir, tmp_path, n=2, seed=11)
    page = browser.new_page()
    external: list[str] = []
    page.on(
        "request",
        lambda req: None if req.url.startswith(live_url) else external.append(req.url),
    )
    page.goto(live_url + "/")
    assert page.title().startswith("agegender")
    page.set_input_files("#files", [str(p) for p in photos])
    page.wait_for_selector("#status[data-state='done']", timeout=30_000)
    status = page.inner_text("#status")
    assert status.startswith("done:") and "2 image(s)" in status
    rows = page.query_selector_all("#results tbody tr.face")
    assert len(rows) >= 1
    cells = [c.inner_text() for c in rows[0].query_selector_all("td")]
    assert cells[0] == photos[0].name or cells[0] == photos[1].name
    assert cells[3] in ("female", "male")
    assert 0.0 <= float(cells[4]) <= 1.0 and float(cells[5]) > 0
    assert cells[6] in ("0-2", "4-6", "8-13", "15-20", "25-32", "38-43", "48-53", "60+")
    # the aligned face the model saw is shown beside the result, as a decoded image
    crop = rows[0].query_selector("img.crop")
    assert crop is not None
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", crop)
    # the photo is drawn on a canvas at its own size, with a box over the face
    canvases = page.query_selector_all("canvas.result-canvas")
    assert len(canvases) == 2
    assert canvases[0].get_attribute("width") == "250"
    x, y, w, h = (int(v) for v in cells[7].split(", "))
    idx = 0 if cells[0] == photos[0].name else 1
    # the box's top edge has the drawn colour, the same pixels of the photo do not
    edge = page.evaluate(
        """([i, x, y, w]) => {
            const c = document.querySelectorAll('canvas.result-canvas')[i];
            const d = c.getContext('2d').getImageData(x + 2, y, Math.max(1, w - 4), 1).data;
            let red = 0;
            for (let k = 0; k < d.length; k += 4)
                if (d[k] > 200 && d[k + 1] < 60 && d[k + 2] < 100) red++;
            return red / (d.length / 4);
        }""",
        [idx, x, y, w],
    )
    assert edge > 0.5, f"no box drawn at {x},{y} ({edge:.2f} of the edge in box colour)"
    assert external == [], f"the page fetched external resources: {external}"
    page.close()


def test_upload_page_shows_errors(browser, live_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page = browser.new_page()
    page.goto(live_url + "/")
    page.set_input_files("#files", [str(bad)])
    page.wait_for_selector("#status[data-state='error']", timeout=30_000)
    assert "422" in page.inner_text("#status")
    assert "no image in the request could be decoded" in page.inner_text("#error")
    page.close()


def test_docs_render_offline_under_the_csp(browser, live_url: str) -> None:
    """/docs draws Swagger UI from the package's files, with no network and no CSP error."""
    page = browser.new_page()
    external: list[str] = []
    console: list[str] = []
    page.on(
        "request",
        lambda req: (
            None
            if req.url.startswith(live_url) or req.url.startswith("data:")
            else external.append(req.url)
        ),
    )
    page.on("console", lambda msg: console.append(msg.text))
    page.goto(live_url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert "/v1/predict" in page.inner_text(".swagger-ui")
    assert external == [], f"/docs fetched external resources: {external}"
    blocked = [m for m in console if "Content Security Policy" in m]
    assert blocked == [], blocked
    page.close()
