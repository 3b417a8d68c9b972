"""End-to-end: headless Chromium (Debian's /usr/bin/chromium, driven by playwright) against a real server.

Opens the demo, answers ten queries with the keyboard, undoes one, reloads the page and checks the
state on the page and on the server. With CINCER_SCREENSHOT=1 it saves docs/images/query.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from apphelpers import ServerProcess, query_id, small_demo, wait_new_query

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "query.png"

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip("needs /usr/bin/chromium (scripts/setup.d/50-browser.sh installs it)", allow_module_level=True)


@pytest.fixture
def server(tmp_path):
    project = small_demo(tmp_path / "demo", size=300, n_known=60)
    with ServerProcess(project, log=tmp_path / "server.log") as srv:
        yield srv


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1100, "height": 820}, device_scale_factor=1)
        yield context.new_page()
        browser.close()


def test_keyboard_session_undo_and_reload(server, page):
    page.goto(server.url + "/")
    page.wait_for_selector(".card[data-role=suspicious] img")
    current = query_id(page)
    assert current
    answered = []
    for i in range(10):
        state = httpx.get(server.url + "/api/state").json()
        q = state["query"]
        assert q["id"] == current
        assert page.inner_text("#sentence") == q["sentence"]
        if i % 3 == 1:  # relabel the suspicious example as the model predicts
            page.keyboard.press(str(q["prediction"]))
            assert page.inner_text(".card[data-role=suspicious] .new-label") == q["prediction_name"]
        elif i % 3 == 2 and q["counter"]:  # relabel both: → moves the focus to the counter-example (Tab is the
            page.keyboard.press(str(q["prediction"]))  # browser's, to reach every control)
            page.keyboard.press("ArrowRight")
            page.keyboard.press(str((q["counter"]["label"] + 1) % 10))
        if i == 9:
            page.keyboard.press("s")  # skip
        else:
            page.keyboard.press("Enter")
        answered.append(q)
        current = wait_new_query(page, current)
    page.wait_for_function("() => document.querySelector('#n-answered').textContent === '10'")
    decisions = httpx.get(server.url + "/api/decisions").json()["decisions"]
    assert [d["query_id"] for d in decisions] == [q["id"] for q in answered]
    assert decisions[1]["suspicious_new"] == answered[1]["prediction"] and decisions[-1]["action"] == "skip"

    page.keyboard.press("u")  # undo the skip: that query comes back
    current = wait_new_query(page, current)
    page.wait_for_function("() => document.querySelector('#n-answered').textContent === '9'")
    assert page.get_attribute(".card[data-role=suspicious]", "data-example") == str(answered[-1]["suspicious"]["id"])

    page.keyboard.press("?")
    assert page.is_visible("#help") and "undo the last decision" in page.inner_text("#help")
    page.keyboard.press("Escape")

    page.reload()
    page.wait_for_selector(".card[data-role=suspicious] img")
    assert query_id(page) == current
    assert page.inner_text("#n-answered") == "9"
    state = httpx.get(server.url + "/api/state").json()
    assert state["query"]["id"] == current and state["progress"]["answered"] == 9
    live = [d for d in httpx.get(server.url + "/api/decisions").json()["decisions"] if d["undone_at"] is None]
    assert [d["query_id"] for d in live] == [q["id"] for q in answered[:9]]
    assert page.is_visible("#f1-chart")

    # the mouse works too: click a label button, then the primary button
    label = state["query"]["prediction"]
    page.click(f".card[data-role=suspicious] button[data-label='{label}']")
    if os.environ.get("CINCER_SCREENSHOT") == "1":
        page.click("button[data-cmd=alternatives]")
        page.wait_for_selector(".alt img")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.click("button[data-cmd=submit]")
    wait_new_query(page, current)
    page.wait_for_function("() => document.querySelector('#n-answered').textContent === '10'")
    last = httpx.get(server.url + "/api/state").json()["last_decision"]
    assert last["suspicious_new"] == label

    # another tab answers the shown query first: this page gets a clear 409 message and the new state
    shown = query_id(page)
    assert httpx.post(f"{server.url}/api/queries/{shown}/answer", json={"action": "confirm"}).status_code == 200
    page.keyboard.press("Enter")
    fresh = wait_new_query(page, shown)
    assert "already answered" in page.inner_text("#message") and "not applied" in page.inner_text("#message")
    assert fresh == httpx.get(server.url + "/api/state").json()["query"]["id"]
    assert page.inner_text("#n-answered") == "11"
