"""The annotation app for a team (issue 15) in headless Chromium (Debian's /usr/bin/chromium via playwright):
hostile strings in every user-controlled field, the class keys people expect, two annotators in two
browser contexts, the export round trip through the download button, and the guidance of the page.

Each test serves its project from a thread of the test process (``ThreadServer``) over a real session.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from apphelpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ThreadServer,
    breast_frame,
    digit_images,
    query_id,
    review_texts,
    small_demo,
    wait_new_query,
)
from cincer.app import Session, load_project
from cincer.app.project import SessionConfig, init_project
from cincer.app.server import create_app
from cincer.app.users import Annotators
from cincer.models import TrainConfig

pytestmark = pytest.mark.slow

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip("needs /usr/bin/chromium (scripts/setup.d/50-browser.sh installs it)", allow_module_level=True)

HOSTILE = "</script><!--<script>\"'&\u2028\u2029"
ALWAYS = SessionConfig(inspector="always", train=TrainConfig(epochs=5, lr=1e-2), seed=0)
QUICK = SessionConfig(train=TrainConfig(epochs=10, lr=1e-2), seed=0)


@contextlib.contextmanager
def serving(root, *, annotators: Annotators | None = None):
    session = Session(load_project(root), who="tester", background=True).start()
    try:
        with ThreadServer(create_app(session, annotators=annotators)) as server:
            server.session = session
            yield server
    finally:
        session.close()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def new_page(browser, **kw):
    context = browser.new_context(viewport={"width": 1100, "height": 820}, device_scale_factor=1, **kw)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.on("dialog", lambda dialog: (page.errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    return page


def text_of(page, selector: str) -> str:
    """textContent (inner_text would normalise the U+2028 the tests plant)."""
    return page.eval_on_selector(selector, "e => e.textContent")


def texts_of(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")


# ---------------------------------------------------------------------- 2. hostile strings
def hostile_projects(tmp_path: Path) -> dict[str, Path]:
    texts, labels = review_texts(40)
    names = {"positive": f"pos{HOSTILE}", "negative": "neg\"\u2028<b>"}
    data = tmp_path / "<!--<script>&'\u2028 reviews.csv"
    pd.DataFrame({"review": [f"{HOSTILE} {t} <img src=x onerror=alert(1)>" for t in texts],
                  f"label{HOSTILE}": [names[c] for c in labels]}).to_csv(data, index=False)
    out = {"text": init_project(tmp_path / "txt", data=data, labels=f"label{HOSTILE}", text="review",
                                config=ALWAYS, n_known=20)}
    frame = breast_frame(60, flip=0)[["mean radius", "mean area", "clinic", "diagnosis"]]
    frame = frame.rename(columns={"mean radius": f"radius{HOSTILE}"})
    frame["clinic"] = HOSTILE
    frame["diagnosis"] = frame["diagnosis"].map({"benign": f"benign{HOSTILE}", "malignant": "malignant"})
    frame.to_csv(tmp_path / "t.csv", index=False)
    out["table"] = init_project(tmp_path / "tab", data=tmp_path / "t.csv", labels="diagnosis", config=ALWAYS,
                                n_known=20)
    rows = digit_images(tmp_path / "pics", 40, names=lambda j: f"<!--<script>'\"&\u2028 {j}.png")
    pd.DataFrame(rows).to_csv(tmp_path / "pics.csv", index=False)
    out["image"] = init_project(tmp_path / "img", data=tmp_path / "pics.csv", labels="label",
                                images=tmp_path / "pics", config=ALWAYS, n_known=20)
    return out


def test_hostile_strings_in_every_field_load_and_answer(tmp_path, browser):
    for kind, root in hostile_projects(tmp_path).items():
        with serving(root) as server:
            page = new_page(browser)
            page.goto(server.url + "/")
            page.wait_for_selector(".card[data-role=suspicious] .labels button", timeout=20000)
            state = httpx.get(server.url + "/api/state").json()
            q = state["query"]
            assert query_id(page) == q["id"] and "Loading" not in text_of(page, "#main"), kind
            assert texts_of(page, ".card[data-role=suspicious] .labels button") == \
                [f"{k} {n}" if k != n else n for k, n in zip(state["project"]["hotkeys"],
                                                              state["project"]["class_names"])], kind
            assert text_of(page, ".project") == state["project"]["name"]
            if kind == "text":
                assert text_of(page, ".card[data-role=suspicious] blockquote") == q["suspicious"]["text"]
                assert HOSTILE in state["project"]["class_names"][0]
            elif kind == "table":
                assert f"radius{HOSTILE}" in texts_of(page, ".card[data-role=suspicious] th")
                assert HOSTILE in texts_of(page, ".card[data-role=suspicious] td")
            else:
                assert text_of(page, ".card[data-role=suspicious] .key") == f"key {q['suspicious']['key']}"
                assert q["suspicious"]["key"].startswith("<!--<script>")
            page.keyboard.press("Enter")
            wait_new_query(page, q["id"])
            page.wait_for_function("() => document.querySelector('#n-answered').textContent === '1'")
            assert page.errors == [], (kind, page.errors)
            assert server.session.store.counts()["answered"] == 1
            page.context.close()


# ---------------------------------------------------------------------- 3. class keys, and table cells
def test_digit_keys_pick_the_class_of_that_name_and_hotkeys_are_configurable(tmp_path, browser):
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({"area": rng.uniform(1000, 2500, n).round(1), "width": rng.normal(size=n),
                          "gap": [1.5] + [None] * (n - 1), "clinic": rng.choice(["north", "south"], n),
                          "y": rng.choice([3, 1, 2], n)})
    frame.to_csv(tmp_path / "ints.csv", index=False)
    ints = init_project(tmp_path / "ints", data=tmp_path / "ints.csv", labels="y", config=ALWAYS, n_known=20)
    with serving(ints) as server:
        page = new_page(browser)
        page.goto(server.url + "/")
        page.wait_for_selector(".card[data-role=suspicious] .labels button")
        assert texts_of(page, ".card[data-role=suspicious] .labels button") == ["1", "2", "3"]
        for key in ("1", "3", "2"):
            page.keyboard.press(key)
            assert text_of(page, ".card[data-role=suspicious] .new-label") == key
        # a table shows values as given: a gap as "missing", categories by name, no scientific notation
        cells = dict(zip(texts_of(page, ".card[data-role=suspicious] tbody th"),
                         texts_of(page, ".card[data-role=suspicious] tbody td:nth-of-type(1)")))
        example = server.session.project.rows[int(page.get_attribute(".card[data-role=suspicious]", "data-example"))]
        assert cells["gap"] == "missing" and cells["clinic"] == frame.loc[example, "clinic"]
        assert cells["area"] == f"{frame.loc[example, 'area']:g}" and "e+" not in cells["area"]
        assert not any("=" in name for name in cells)
        page.context.close()

    frame["y"] = rng.choice(["eight", "two", "six"], n)
    frame.to_csv(tmp_path / "words.csv", index=False)
    words = init_project(tmp_path / "words", data=tmp_path / "words.csv", labels="y", config=ALWAYS, n_known=20,
                         classes=["two", "six", "eight"], hotkeys={"eight": "e"})
    with serving(words) as server:
        page = new_page(browser)
        page.goto(server.url + "/")
        page.wait_for_selector(".card[data-role=suspicious] .labels button")
        assert texts_of(page, ".card[data-role=suspicious] .labels button") == ["1 two", "2 six", "e eight"]
        for key, name in (("e", "eight"), ("1", "two"), ("2", "six"), ("E", "eight")):
            page.keyboard.press(key)
            assert text_of(page, ".card[data-role=suspicious] .new-label") == name
        page.keyboard.press("?")
        assert "label “eight” for the focused example" in text_of(page, "#help")
        assert page.errors == []
        page.context.close()


# ---------------------------------------------------------------------- 5. two annotators
def test_two_annotators_in_two_browser_contexts(tmp_path, browser):
    root = small_demo(tmp_path / "demo", size=240, n_known=60)
    annotators = Annotators(root)
    tokens = {name: annotators.add(name) for name in ("alice", "bob")}
    with serving(root, annotators=annotators) as server:
        pages = {}
        for name in ("alice", "bob"):
            pages[name] = new_page(browser)
            pages[name].goto(f"{server.url}/?token={tokens[name]}")
            pages[name].wait_for_selector(".card[data-role=suspicious] img")
            assert "token=" not in pages[name].url  # the link's token moved into a cookie
            assert text_of(pages[name], ".who b") == name
        shown = {name: query_id(p) for name, p in pages.items()}
        assert shown["alice"] != shown["bob"]
        anonymous = new_page(browser)
        assert anonymous.goto(server.url + "/").status == 401
        q = httpx.get(server.url + "/api/state", headers={"Authorization": f"Bearer {tokens['alice']}"}).json()
        assert q["query"]["id"] == shown["alice"]
        pages["alice"].keyboard.press(str(q["query"]["prediction"]))
        pages["alice"].keyboard.press("Enter")
        pages["bob"].keyboard.press("Enter")
        after = {name: wait_new_query(p, shown[name]) for name, p in pages.items()}
        assert after["alice"] != after["bob"] and not set(after.values()) & set(shown.values())
        who = {d["query_id"]: d["who"] for d in server.session.store.decisions()}
        assert who == {shown["alice"]: "alice", shown["bob"]: "bob"}
        decisions = {d["who"]: d for d in server.session.store.decisions()}
        assert decisions["alice"]["suspicious_new"] == q["query"]["prediction"]
        assert all(p.errors == [] for p in pages.values())


# ---------------------------------------------------------------------- 1. the export round trip
def test_answer_download_and_join_on_the_key(tmp_path, browser):
    frame = breast_frame(160)
    path = tmp_path / "patients.csv"
    frame.to_csv(path, index=False)
    root = init_project(tmp_path / "p", data=path, labels="diagnosis", id_column="patient", holdout=0.2,
                        n_known=30, config=QUICK)
    with serving(root) as server:
        page = new_page(browser, accept_downloads=True)
        page.goto(server.url + "/")
        page.wait_for_selector(".card[data-role=suspicious] table")
        current = query_id(page)
        for i in range(4):
            page.keyboard.press("a" if i % 2 == 0 else "Enter")  # accept the model's suggestion / keep both
            current = wait_new_query(page, current)
        page.wait_for_function("() => document.querySelector('#n-answered').textContent === '4'")
        with page.expect_download() as download:
            page.click("#export-labels-csv")
        saved = tmp_path / "downloaded.csv"
        download.value.save_as(saved)
        assert download.value.suggested_filename == "patients-labels.csv"
        project, labels = server.session.project, server.session.loop.labels.copy()
    exported = pd.read_csv(saved)
    merged = frame.merge(exported, left_on="patient", right_on="key", how="inner", validate="one_to_one")
    assert len(merged) == len(frame) == len(exported)
    assert (merged["original_name"] == merged["diagnosis"]).all()
    changed = {project.key(i) for i in np.flatnonzero(labels != project.y)}
    assert changed and set(merged.loc[merged["name"] != merged["diagnosis"], "patient"]) == changed
    assert int(merged["held_out"].sum()) == len(project.keys_test)


# ---------------------------------------------------------------------- 6. guidance
def test_instructions_keys_tab_conflicts_skips_and_the_end_of_the_queue(tmp_path, browser):
    texts, labels = review_texts(60, flip=12)
    pd.DataFrame({"review": texts, "sentiment": labels}).to_csv(tmp_path / "reviews.csv", index=False)
    (tmp_path / "guide.md").write_text("# How to label\n\nLabel the **opinion** of the review, not the film.\n")
    root = init_project(tmp_path / "p", data=tmp_path / "reviews.csv", labels="sentiment", text="review",
                        n_known=20, config=ALWAYS, instructions=tmp_path / "guide.md")
    with serving(root) as server:
        api = httpx.Client(base_url=server.url)
        page = new_page(browser)
        page.goto(server.url + "/")
        page.wait_for_selector(".card[data-role=suspicious] blockquote")
        assert page.is_visible("#instructions") and "Label the opinion" in page.inner_text("#instructions")
        assert page.inner_html("#instructions strong") == "opinion"
        page.keyboard.press("Escape")
        assert not page.is_visible("#help")
        page.reload()
        page.wait_for_selector(".card[data-role=suspicious] blockquote")
        assert not page.is_visible("#help")  # shown on the first open only
        page.keyboard.press("?")
        assert page.is_visible("#instructions")
        page.keyboard.press("Escape")
        assert "you labelled" not in page.inner_text("body")
        assert page.is_visible(".card[data-role=counter] .model") or not page.query_selector(".card[data-role=counter]")

        # Tab and Shift+Tab go through every control, in order, both ways
        name = ("e => e.getAttribute('href') || e.dataset.cmd || "
                "`${e.dataset.role}:${e.dataset.label === undefined ? 'card' : e.dataset.label}`")
        controls = page.eval_on_selector_all("button:not([disabled]), a[href], [tabindex='0']",
                                             f"els => els.filter(e => e.offsetParent !== null).map({name})")
        assert {"submit", "skip", "skipped", "help", "/api/export/labels.csv", "suspicious:card", "suspicious:0",
                "suspicious:1"} <= set(controls)
        reached = []
        for _ in range(len(controls)):
            page.keyboard.press("Tab")
            reached.append(page.evaluate(f"() => ({name})(document.activeElement)"))
        assert reached == controls  # in page order, none skipped, none captured
        page.keyboard.press("Shift+Tab")
        assert page.evaluate(f"() => ({name})(document.activeElement)") == reached[-2]
        page.keyboard.press("Escape")

        # a accepts the model's suggestion for the suspicious example
        q = api.get("/api/state").json()["query"]
        while q["prediction"] == q["suspicious"]["label"]:  # nothing to accept: keep both
            page.keyboard.press("Enter")
            wait_new_query(page, q["id"])
            q = api.get("/api/state").json()["query"]
        page.keyboard.press("a")
        current = wait_new_query(page, q["id"])
        last = api.get("/api/state").json()["last_decision"]
        assert last["query_id"] == q["id"] and last["suspicious_new"] == q["prediction"]

        # a skipped query comes back from the skipped list
        skipped_example = page.get_attribute(".card[data-role=suspicious]", "data-example")
        page.keyboard.press("s")
        current = wait_new_query(page, current)
        page.click("button[data-cmd=skipped]")
        page.wait_for_selector("#skipped-list button[data-cmd=revisit]")
        page.click("#skipped-list button[data-cmd=revisit]")
        current = wait_new_query(page, current)
        assert page.get_attribute(".card[data-role=suspicious]", "data-example") == skipped_example
        page.wait_for_function("() => document.querySelector('#n-skipped').textContent === '0'")

        # a stale tab: someone else answers first; the page explains it in plain words and keeps the picks
        q = api.get("/api/state").json()["query"]
        pick = (q["suspicious"]["label"] + 1) % 2
        page.keyboard.press(str(pick + 1))
        assert api.post(f"/api/queries/{q['id']}/answer", json={"action": "confirm"}).status_code == 200
        page.keyboard.press("Enter")
        current = wait_new_query(page, current)
        note = page.inner_text("#message")
        assert "already answered" in note and "not applied" in note and "Your picks" in note
        assert server.session.project.class_names[pick] in note

        # the live status follows the server
        page.wait_for_function("() => /model v\\d/.test(document.querySelector('#live-status').textContent)",
                               timeout=20000)

        # the end of the queue: a summary with the export buttons
        for _ in range(100):
            state = api.get("/api/state").json()
            if state["done"]:
                break
            api.post(f"/api/queries/{state['query']['id']}/answer", json={"action": "skip"})
        page.wait_for_selector("#summary", timeout=20000)  # the poll notices
        summary = state["summary"]
        assert page.inner_text("#sum-answered") == str(summary["answered"])
        assert page.inner_text("#sum-skipped") == str(summary["skipped"]) != "0"
        assert page.is_visible("#summary-labels-csv")
        assert page.errors == []
