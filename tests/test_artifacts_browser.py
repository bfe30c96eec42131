"""The backtest and grid artifacts as a person sees them: a real `prefect server` (the e2e stack: `ibkr up`, the
simulator as its own process), real flow runs created through the REST API the UI uses, and the Prefect UI opened
in headless Chromium (Debian's chromium and chromium-driver, installed by `make test`; driven with selenium).

From each flow run's page, the Artifacts tab leads to each artifact; on its page the test waits for the rendered
markdown or table and checks what is on screen against what the flow published: the summary tables' rows, every
trade, every image decoded with a non-zero natural size (its size that of the PNG in the markdown, its pixels not
blank), the heatmap's alt text. Screenshots go to build/screenshots/ (git-ignored);
IBKR_UPDATE_DOCS_SCREENSHOT=1 also rewrites the README's docs/images/backtest-artifact.png.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_e2e_deployments import Api, Stack, stack  # noqa: F401 - the module-scoped server stack fixture

pytestmark = pytest.mark.e2e

PROJECT_DIR = Path(__file__).resolve().parents[1]
SCREENSHOTS = PROJECT_DIR / "build" / "screenshots"
README_IMAGE = PROJECT_DIR / "docs" / "images" / "backtest-artifact.png"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# The machine's network is closed: everything Chromium would fetch or phone home at start is switched off.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1440,1000")  # wide enough for the artifact page's xl layout
WAIT_S = 60
START, END = "2024-07-11T00:00:00+00:00", "2024-07-13T00:00:00+00:00"
GRID = {"fast_period": [3, 6, 9], "slow_period": [10, 20, 30]}
HEADLINE_FIRST = ["total_return_pct", "buy_and_hold_return_pct", "annualized_return_pct"]
IMAGE = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")

ALL_IMAGES_SETTLED = "return [...document.images].every(i => i.complete)"
IMAGES = """return [...document.querySelectorAll('.artifact-data-markdown img')].map(i => {
    let distinct = 0;
    if (i.complete && i.naturalWidth > 0) {  // its pixels as the page decoded them: a blank image has one colour
        const c = document.createElement('canvas');
        c.width = i.naturalWidth; c.height = i.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(i, 0, 0);
        const px = g.getImageData(0, 0, c.width, c.height).data, seen = new Set();
        for (let k = 0; k < px.length && seen.size < 50; k += 4 * 97)
            seen.add(px[k] << 16 | px[k + 1] << 8 | px[k + 2]);
        distinct = seen.size;
    }
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
            shown: i.getBoundingClientRect().width, distinct};
})"""
TABLES = """return [...document.querySelectorAll(arguments[0] + ' table')].map(t =>
    [...t.querySelectorAll('tr')].map(r => [...r.querySelectorAll('th, td')].map(c => c.innerText.trim())))"""


# ----------------------------------------------------------------------------------------------------------- setup


@pytest.fixture(scope="module")
def runs(stack: Stack) -> dict[str, dict[str, Any]]:  # noqa: F811
    """Bars from the simulator through the ingest deployment, then one backtest and one grid run, as the UI's
    'Run' button creates them; the worker runs them in their own processes."""
    api = Api(stack.api_url)
    ingest = api.run("ingest-bars", "nightly-ingest", {
        "request": {"symbols": ["AAPL"], "start": START, "end": END},
        "data_dir": str(stack.data_dir), "tws": {"host": "127.0.0.1", "port": stack.sim_port, "client_id": 31}})
    assert ingest["state"]["type"] == "COMPLETED", ingest["state"]
    backtest = api.run("backtest", "adhoc-backtest", {
        "request": {"symbols": ["AAPL"], "start": START, "end": END, "params": {"fast_period": 5, "slow_period": 10}},
        "data_dir": str(stack.data_dir)})
    assert backtest["state"]["type"] == "COMPLETED", backtest["state"]
    grid = api.run("backtest-grid", "grid-backtest", {
        "request": {"symbol": "AAPL", "grid": GRID, "chunks": 2, "folds": 2, "start": START, "end": END},
        "data_dir": str(stack.data_dir)})
    assert grid["state"]["type"] == "COMPLETED", grid["state"]
    return {"backtest": backtest, "grid": grid}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian Chromium through its own chromedriver, with a fresh profile. Never skipped: `make test`
    installs both (its `browser` step); a machine without them fails here saying so."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make test` (it installs Debian's chromium and "
                    "chromium-driver) or `apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    log = tmp_path_factory.getbasetemp() / "chromedriver.log"
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER), log_output=str(log)))
    try:
        yield driver
    finally:
        driver.quit()


# --------------------------------------------------------------------------------------------------------- helpers


def _wait(driver: Any, script: str, what: str, *args: Any, timeout_s: float = WAIT_S, final: bool = True) -> Any:
    """An explicit wait on a condition in the page (never a fixed sleep); its truthy value is returned. Not
    `final`: None when the time is up, for a caller that tries again."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(lambda d: d.execute_script(script, *args))
    except TimeoutException:
        if not final:
            return None
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / "timeout.png"
        driver.save_screenshot(str(shot))
        pytest.fail(f"waited {timeout_s:g} s for {what} at {driver.current_url} (screenshot {shot})")


def _artifact_links(driver: Any, ui_url: str, flow_run_id: str, keys: set[str]) -> dict[str, str]:
    """The flow run's page, its Artifacts tab clicked: {artifact key: the link a person follows}.

    The page is loaded again, as a person would, if the links have not appeared after a third of the wait: the UI
    asks for the run's artifacts once and does not ask again. Seen once in CI (2026-12-06, a busy 2-core machine):
    the tab listed the flow run's own artifact and not its tasks' for the whole 60 s, while the run had completed
    and its timeline showed them; a request of the UI's that failed (the server's SQLite answers 503 "database is
    locked" to a second writer) would explain it. The callers check first that the API lists the artifacts."""
    from selenium.webdriver.common.by import By

    found = """const found = {};
        for (const a of document.querySelectorAll('a[href*="/artifacts/artifact/"]'))
            for (const key of arguments[0]) if (a.innerText.includes(key)) found[key] = a.href;
        return Object.keys(found).length === arguments[0].length ? found : null"""
    for attempt in range(3):
        driver.get(f"{ui_url}/runs/flow-run/{flow_run_id}")
        _wait(driver, "return document.querySelector('li.p-tab#artifacts')", "the flow run's Artifacts tab")
        driver.find_element(By.CSS_SELECTOR, "li.p-tab#artifacts").click()
        links = _wait(driver, found, f"links to the artifacts {sorted(keys)}", sorted(keys), timeout_s=WAIT_S / 3,
                      final=attempt == 2)
        if links:
            return links
    raise AssertionError("unreachable: the last attempt fails in _wait")


def _open_markdown(driver: Any, url: str, images: int) -> None:
    driver.get(url)
    _wait(driver, "return document.querySelector('.artifact-data-markdown h1')", "the rendered markdown")
    _wait(driver, f"return document.querySelectorAll('.artifact-data-markdown img').length >= {images}",
          f"{images} image(s) in the markdown")
    _wait(driver, ALL_IMAGES_SETTLED, "every image loaded or failed")


def _open_table(driver: Any, url: str) -> None:
    driver.get(url)
    _wait(driver, "return document.querySelector('.artifact-data-table tbody tr td')", "the table's rows")


def _markdown_tables(markdown: str) -> list[list[list[str]]]:
    """The pipe tables of the published markdown, as rows of cells (the separator line dropped)."""
    tables: list[list[list[str]]] = []
    previous = False
    for line in markdown.splitlines():
        is_row = line.startswith("|")
        if is_row and not re.fullmatch(r"\|(-+\|)+", line):
            if not previous:
                tables.append([])
            tables[-1].append([c.strip() for c in line.strip("|").split("|")])
        previous = is_row
    return tables


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _check_images(driver: Any, markdown: str, what: str) -> list[dict[str, Any]]:
    """Every <img> on the page loaded; the artifact's images are the markdown's PNGs, decoded at their size."""
    every = driver.execute_script("return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
    broken = [alt for alt, complete, width in every if not (complete and width > 0)]
    assert not broken, f"{what}: images that did not load: {broken}"
    shown = driver.execute_script(IMAGES)
    published = IMAGE.findall(markdown)
    assert [i["alt"] for i in shown] == [alt for alt, _ in published], what
    for image, (alt, data) in zip(shown, published, strict=True):
        assert (image["width"], image["height"]) == _png_size(base64.b64decode(data)), f"{what}: {alt}"
        assert image["shown"] > 100, f"{what}: {alt} is laid out {image['shown']} px wide"
        assert image["distinct"] > 5, f"{what}: {alt} decoded blank ({image['distinct']} colours)"
    return shown


def _same(cell: str, value: Any) -> bool:
    if value is None:
        return cell == ""
    if isinstance(value, float):
        return cell != "" and float(cell) == value
    return cell == str(value)


def _check_table(driver: Any, rows: list[dict[str, Any]], what: str) -> None:
    """The table artifact's count, header and every row on screen equal the published rows."""
    count = driver.find_element("css selector", ".artifact-data-table__count").text
    assert count == str(len(rows)), f"{what}: the page says {count} items, {len(rows)} were published"
    [table] = driver.execute_script(TABLES, ".artifact-data-table")
    header, *body = table
    assert header == list(rows[0]), what
    assert len(body) == len(rows), f"{what}: {len(body)} rows shown of {len(rows)}"
    for shown, row in zip(body, rows, strict=True):
        assert all(_same(c, v) for c, v in zip(shown, row.values(), strict=True)), f"{what}: {shown} != {row}"


MARKDOWN_BOX = """const m = document.querySelector('.artifact-data-markdown'), r = m.getBoundingClientRect();
    const bottom = Math.max(r.bottom, ...[...m.querySelectorAll('*')].map(e => e.getBoundingClientRect().bottom));
    return [r.left - 16, 0, r.right + 16, bottom + 16].map(Math.round)"""


def _screenshot(driver: Any, name: str, *, full: bool = True) -> tuple[Path, list[int] | None]:
    """The page as shown; `full`: the viewport stretched to the scrolling view's height, so all of it shows, and
    the box of the rendered markdown in it (if any)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if not full:
        driver.save_screenshot(str(path))
        return path, None
    width, height = driver.execute_script(
        "const v = document.querySelector('.app-router-view') || document.documentElement;"
        "return [window.innerWidth, window.innerHeight + v.scrollHeight - v.clientHeight]")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        _wait(driver, f"return window.innerHeight >= {height}", "the taller viewport")
        driver.save_screenshot(str(path))
        box = driver.execute_script(f"if (!document.querySelector('.artifact-data-markdown')) return null; "
                                    f"{MARKDOWN_BOX}")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path, box


def _readme_image(shot: Path, box: list[int]) -> Path:
    """The summary's own column (title to chart) cut from the full screenshot, in 128 colours: small enough to
    commit. Written next to the screenshots; IBKR_UPDATE_DOCS_SCREENSHOT=1 also updates the README's copy."""
    from PIL import Image

    left, top, right, bottom = box
    with Image.open(shot) as full:
        crop = full.crop((max(left, 0), top, min(right, full.width), min(bottom, full.height)))
        small = crop.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        buffer = io.BytesIO()
        small.save(buffer, format="PNG", optimize=True)
    path = SCREENSHOTS / "backtest-artifact-readme.png"
    path.write_bytes(buffer.getvalue())
    assert path.stat().st_size < 300_000, f"{path}: {path.stat().st_size} bytes"
    if os.environ.get("IBKR_UPDATE_DOCS_SCREENSHOT") == "1":
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_IMAGE)
    return path


# ----------------------------------------------------------------------------------------------------------- tests


def test_backtest_artifacts_render_in_the_browser(stack: Stack, runs: dict[str, dict[str, Any]],  # noqa: F811
                                                  browser: Any) -> None:
    api = Api(stack.api_url)
    run = runs["backtest"]
    published = api.artifacts(run["id"])
    assert {"backtest-summary", "backtest-trades"} <= set(published), sorted(published)
    links = _artifact_links(browser, stack.state["ui_url"], run["id"], {"backtest-summary", "backtest-trades"})
    assert {key: link.rsplit("/", 1)[1] for key, link in links.items()} == {
        key: published[key]["id"] for key in links}

    summary = published["backtest-summary"]["data"]
    _open_markdown(browser, links["backtest-summary"], images=1)
    heading = browser.find_element("css selector", ".artifact-data-markdown h1").text
    assert heading.startswith("Backtest sma_crossover") and '"fast_period": 5' in heading, heading
    items = browser.execute_script(
        "return [...document.querySelectorAll('.artifact-data-markdown li')].map(li => li.innerText)")
    assert any(i.startswith("Symbols: AAPL") for i in items), items
    assert any(i.startswith("Fills: signal on bar close, fill at the next bar's open") for i in items), items
    [metrics] = browser.execute_script(TABLES, ".artifact-data-markdown")
    assert metrics == _markdown_tables(summary)[0]  # every row and cell of the metrics table, as published
    assert metrics[0] == ["metric", "AAPL"]
    assert [row[0] for row in metrics[1:4]] == HEADLINE_FIRST
    assert all(row[1] for row in metrics[1:]), metrics
    [chart] = _check_images(browser, summary, "backtest-summary")
    assert chart["alt"] == "AAPL equity and drawdown"
    shot, box = _screenshot(browser, "backtest-summary")
    assert box is not None
    _readme_image(shot, box)

    trades = json.loads(published["backtest-trades"]["data"])
    assert len(trades) > 5 and {t["symbol"] for t in trades} == {"AAPL"}
    _open_table(browser, links["backtest-trades"])
    _check_table(browser, trades, "backtest-trades")
    assert {"entry_time", "exit_time", "entry_price", "exit_price", "pnl"} <= set(trades[0])
    _check_images(browser, "", "backtest-trades")
    _screenshot(browser, "backtest-trades", full=False)


def test_grid_artifacts_render_in_the_browser(stack: Stack, runs: dict[str, dict[str, Any]],  # noqa: F811
                                              browser: Any) -> None:
    api = Api(stack.api_url)
    run = runs["grid"]
    published = api.artifacts(run["id"])
    assert {"grid-summary", "grid-top"} <= set(published), sorted(published)
    links = _artifact_links(browser, stack.state["ui_url"], run["id"], {"grid-summary", "grid-top"})
    assert {key: link.rsplit("/", 1)[1] for key, link in links.items()} == {
        key: published[key]["id"] for key in links}

    summary = published["grid-summary"]["data"]
    _open_markdown(browser, links["grid-summary"], images=1)
    heading = browser.find_element("css selector", ".artifact-data-markdown h1").text
    assert heading == "Grid sma_crossover on AAPL", heading
    text = browser.find_element("css selector", ".artifact-data-markdown").text
    assert "Combinations: 9 backtested" in text and "Deflated Sharpe ratio:" in text and "Plateau score:" in text
    assert "Walk-forward (2 folds)" in text
    [samples] = browser.execute_script(TABLES, ".artifact-data-markdown")
    assert samples == _markdown_tables(summary)[0]
    assert samples[0] == ["sample", "return", "sharpe", "max drawdown", "trades", "bars"]
    assert [row[0] for row in samples[1:]] == ["in-sample (best cell)", "out-of-sample holdout"]
    [heatmap] = _check_images(browser, summary, "grid-summary")
    # The axis names are drawn inside the PNG (matplotlib labels); on the page the image is known by its alt text.
    assert "heatmap" in heatmap["alt"].lower(), heatmap
    assert "fast_period" in heatmap["alt"] and "slow_period" in heatmap["alt"], heatmap
    _screenshot(browser, "grid-summary")

    top = json.loads(published["grid-top"]["data"])
    assert len(top) == 9 and {"fast_period", "slow_period", "sharpe"} <= set(top[0])
    assert sorted((r["fast_period"], r["slow_period"]) for r in top) == [
        (f, s) for f in GRID["fast_period"] for s in GRID["slow_period"]]
    _open_table(browser, links["grid-top"])
    _check_table(browser, top, "grid-top")
    _check_images(browser, "", "grid-top")
    _screenshot(browser, "grid-top", full=False)
