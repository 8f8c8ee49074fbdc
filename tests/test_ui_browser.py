"""The app in Debian chromium (playwright, never `playwright install`): load the page, move
a block slider, and check the chart gained a point; move a second slider at once (the newer
edit supersedes the running evaluation) and check the table ends with the newest
configuration; no console error and no HTTP error response at any time (gradio `cancels=`
once made every edit POST /cancel and /reset with event_id null: HTTP 422). A screenshot goes
to test-artifacts/."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from ui_fixtures import make_tiny_engine

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.browser


def n_points(page) -> int:
    """Markers of the 'current' and 'this session' traces in the plotly chart."""
    return page.evaluate("""() => {
        const el = document.querySelector('#plot .js-plotly-plot');
        if (!el || !el.data) return 0;
        return el.data.filter(t => t.name === 'current' || t.name === 'this session')
                      .reduce((n, t) => n + t.x.length, 0);
    }""")


@contextmanager
def app_in_chromium(engines, tmp_path, screenshot: str, settle_ms: int = 500):
    """Serve build_app(engines), open it in Debian chromium -> (page, errors) once the chart is
    there; at the end no console error and no HTTP error response was seen, and a full-page
    screenshot goes to test-artifacts/`screenshot`. Skips without chromium or playwright."""
    if not os.path.exists(CHROMIUM) and shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from ui.layout import build_app

    demo = build_app(engines)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(  # a fresh user-data dir per run
                str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS, viewport={"width": 1400, "height": 1100})
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.request.method} {r.url} "
                                                        f"{r.request.post_data}") if r.status >= 400 else None)
            page.goto(demo.local_url)
            page.wait_for_selector("#plot .js-plotly-plot", timeout=60_000)
            yield page, errors
            page.wait_for_timeout(settle_ms)
            assert errors == []
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
            browser.close()
    finally:
        demo.close()


def test_moving_a_slider_adds_a_point_to_the_chart(tmp_path):
    engine = make_tiny_engine(tmp_path, n_rows=24)
    with app_in_chromium(engine, tmp_path, "app-browser-test.png", settle_ms=1000) as (page, _):
        assert n_points(page) == 0
        size_before = page.inner_text("#size-line")
        slider = page.locator("#block-0 input[type=range]")
        box = slider.bounding_box()  # click the track's left end: 4 -> 2 bits, released
        page.mouse.click(box["x"] + 2, box["y"] + box["height"] / 2)
        page.wait_for_function("() => document.querySelector('#size-line').innerText.length > 0")
        page.wait_for_function(
            """() => { const el = document.querySelector('#plot .js-plotly-plot');
                       return el && el.data && el.data.some(t => t.name === 'current'); }""", timeout=120_000)
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('final')", timeout=120_000)
        assert n_points(page) >= 1
        assert page.inner_text("#size-line") != size_before  # avg bits moved with the slider
        for b in (1, 0):  # two more edits in quick succession: block 1 to 8 bits, then block 0 to 8 bits
            box = page.locator(f"#block-{b} input[type=range]").bounding_box()
            page.mouse.click(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
        page.wait_for_function(  # the newest configuration's final point reaches the table
            """() => { const m = document.querySelector('#size-line').innerText.match(/configuration ([0-9a-f]{16})/);
                       return m && document.querySelector('#points').innerText.includes(m[1])
                              && document.querySelector('#status').innerText.includes('final'); }""",
            timeout=120_000)
        page.click("#report-btn")  # the reportable score, on every test row, shown on its own
        page.wait_for_function("() => document.querySelector('#report').innerText.includes('final')",
                               timeout=120_000)
        assert "Reportable" in page.inner_text("#report") and "test rows" in page.inner_text("#report")
        # a deployment target: its default format applied and evaluated, then a slider speaks its formats
        page.get_by_text("Deployment target: a format a runtime loads").click()
        page.get_by_label("torchao: transformers + torchao").check()
        page.wait_for_function("() => document.querySelector('#size-line').innerText.includes('torchao')",
                               timeout=60_000)
        assert "int4-g32 x" in page.inner_text("#size-line")
        page.wait_for_function(
            """() => { const m = document.querySelector('#size-line').innerText.match(/configuration ([0-9a-f]{16})/);
                       return m && document.querySelector('#points').innerText.includes(m[1]); }""", timeout=120_000)
        box = page.locator("#block-0 input[type=range]").bounding_box()
        page.mouse.click(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)  # block 0 -> 8 bits
        page.wait_for_function("() => document.querySelector('#size-line').innerText.includes('int8-g32')",
                               timeout=60_000)


def test_the_checkpoint_selector_switches_task_front_and_points(tmp_path):
    """Two checkpoints on one tiny model (lambada, then an sst2 one alongside): the selector
    shows both; picking the second evaluates the same configuration on its task (accuracy),
    its labels say so, and picking the first again brings its bits-per-byte point back."""
    from coalora.models import load_model
    from coalora.space import ConfigSpace
    from ui_fixtures import save_adapter_checkpoint

    first = make_tiny_engine(tmp_path, n_rows=24, task="lambada", with_costs=False)
    base, _ = load_model(str(tmp_path / "tiny-base"), quiet=True)
    path = save_adapter_checkpoint(base, ConfigSpace.from_model(base, str(tmp_path / "tiny-base")), tmp_path / "sst",
                                   seed=9, training={"task": "sst2", "recipe": "task", "method": "coalora"})
    final = "() => document.querySelector('#status').innerText.includes('final')"
    engines = {"ckpt": first, "sst": first.alongside(path)}
    with app_in_chromium(engines, tmp_path, "app-checkpoint-selector.png") as (page, _):
        page.get_by_role("button", name="Evaluate current configuration").click()
        page.wait_for_function(final, timeout=120_000)
        assert "bits_per_byte" in page.inner_text("#status") and "token perplexity" in page.inner_text("#status")
        page.locator("#checkpoint input").click()
        page.get_by_role("option", name="sst: sst2 (accuracy; coalora, task recipe)").click()
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('accuracy')"
                               " && document.querySelector('#status').innerText.includes('final')", timeout=120_000)
        assert page.evaluate("() => document.querySelector('#plot .js-plotly-plot').layout.yaxis.title.text")\
            .startswith("sst2 accuracy")
        page.locator("#checkpoint input").click()
        page.get_by_role("option", name="ckpt: lambada (bits_per_byte; coalora, task recipe)").click()
        page.wait_for_function(final + " && document.querySelector('#status').innerText.includes('bits_per_byte')",
                               timeout=120_000)
        assert page.evaluate("() => document.querySelector('#plot .js-plotly-plot').layout.yaxis.title.text")\
            .startswith("lambada bits_per_byte (lower is better)")
