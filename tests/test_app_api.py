"""API tests of the annotation app (FastAPI TestClient over a real Session and SQLite store)."""

from __future__ import annotations

import copy
import csv
import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from apphelpers import small_demo
from cincer import Cleaner
from cincer.app import Session, load_project, write_export
from cincer.app.project import init_project
from cincer.app.server import MAX_BODY, create_app
from cincer.cli import main as cli_main
from cincer.errors import CincerError


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return small_demo(tmp_path_factory.mktemp("tpl") / "demo", size=240, n_known=60)


@pytest.fixture
def project_dir(template, tmp_path):
    return shutil.copytree(template, tmp_path / "demo")


def open_session(root, **kw) -> Session:
    return Session(load_project(root), who="tester", background=False, **kw).start()


@pytest.fixture
def app(project_dir):
    session = open_session(project_dir)
    with TestClient(create_app(session, allowed_hosts=("testserver",))) as client:
        client.session = session
        yield client
    session.close()


def labels_in_db(root) -> list[int]:
    with sqlite3.connect(root / "cincer.sqlite") as db:
        return [r[0] for r in db.execute("SELECT label FROM examples ORDER BY idx")]


def first_query(client) -> dict:
    q = client.get("/api/state").json()["query"]
    assert q is not None
    return q


# ---------------------------------------------------------------------- pages and state
def test_index_and_state_show_the_pair_with_a_reason(app):
    page = app.get("/")
    assert page.status_code == 200 and 'id="initial-state"' in page.text and "/static/app.js" in page.text
    state = app.get("/api/state").json()
    q = state["query"]
    assert q["suspicious"]["kind"] == "image" and q["suspicious"]["image_url"].endswith("/image.png")
    assert q["counter"] is not None and q["counter"]["label"] == q["prediction"] != q["suspicious"]["label"]
    P, L = q["prediction_name"], q["suspicious"]["label_name"]
    assert q["sentence"].startswith(f"The model thinks this is “{P}”, not “{L}”")
    assert "because of this example, labelled" in q["sentence"] and "you labelled" not in q["sentence"]
    assert 1 <= len(q["alternatives"]) <= 3 and q["alternatives"][0]["id"] == q["counter"]["id"]
    assert 0.5 / 10 < q["confidence"] <= 1.0
    p = state["progress"]
    assert p["answered"] == 0 and p["seen"] > 60 and p["total"] == 240 and len(p["f1"]) >= 1
    assert app.get("/static/app.js").status_code == 200 and app.get("/static/app.css").status_code == 200
    assert app.get("/healthz").json()["ok"] is True


def test_answer_relabels_both_and_commits(app, project_dir):
    q = first_query(app)
    s, c = q["suspicious"]["id"], q["counter"]["id"]
    new_s, new_c = q["prediction"], (q["counter"]["label"] + 1) % 10
    r = app.post(f"/api/queries/{q['id']}/answer", json={"suspicious_label": new_s, "counter_label": new_c})
    assert r.status_code == 200, r.text
    d = r.json()["decision"]
    assert (d["suspicious"], d["suspicious_old"], d["suspicious_new"]) == (s, q["suspicious"]["label"], new_s)
    assert (d["counter"], d["counter_old"], d["counter_new"]) == (c, q["counter"]["label"], new_c)
    assert d["who"] == "tester" and d["action"] == "label"
    db = labels_in_db(project_dir)  # committed before the response
    assert db[s] == new_s and db[c] == new_c
    state = r.json()["state"]
    assert state["progress"]["answered"] == 1 and state["progress"]["labels_changed"] >= 1
    assert state["query"]["id"] != q["id"] and state["last_decision"]["id"] == d["id"]


def test_answering_twice_is_409_and_changes_nothing(app, project_dir):
    q = first_query(app)
    assert app.post(f"/api/queries/{q['id']}/answer", json={"action": "confirm"}).status_code == 200
    before = labels_in_db(project_dir)
    r = app.post(f"/api/queries/{q['id']}/answer", json={"suspicious_label": (q["suspicious"]["label"] + 1) % 10})
    assert r.status_code == 409
    body = r.json()
    assert "already answered" in body["detail"] and body["decision"]["query_id"] == q["id"]
    assert body["state"]["progress"]["answered"] == 1
    assert labels_in_db(project_dir) == before
    assert len(app.get("/api/decisions").json()["decisions"]) == 1


def test_confirm_and_skip_keep_labels(app, project_dir):
    before = labels_in_db(project_dir)
    q = first_query(app)
    d = app.post(f"/api/queries/{q['id']}/answer", json={"action": "confirm"}).json()["decision"]
    assert d["suspicious_old"] == d["suspicious_new"] and d["counter_old"] == d["counter_new"]
    q2 = first_query(app)
    d2 = app.post(f"/api/queries/{q2['id']}/answer", json={"action": "skip"}).json()["decision"]
    assert d2["action"] == "skip" and d2["suspicious_old"] == d2["suspicious_new"]
    assert labels_in_db(project_dir) == before
    p = app.get("/api/state").json()["progress"]
    assert p["answered"] == 2 and p["skipped"] == 1 and p["labels_changed"] == 0


def test_undo_restores_labels_and_reopens_under_a_new_id(app, project_dir):
    before = labels_in_db(project_dir)
    q = first_query(app)
    d = app.post(f"/api/queries/{q['id']}/answer",
                 json={"suspicious_label": q["prediction"], "counter_label": 0}).json()["decision"]
    assert labels_in_db(project_dir) != before
    r = app.post("/api/undo", json={"decision_id": d["id"]})
    assert r.status_code == 200, r.text
    assert labels_in_db(project_dir) == before
    state = r.json()["state"]
    assert state["query"]["id"] == r.json()["reopened"] != q["id"]
    assert state["query"]["suspicious"]["id"] == q["suspicious"]["id"] and state["query"]["reopens"] == q["id"]
    assert state["progress"]["answered"] == 0 and state["last_decision"] is None
    # replaying the undone answer or the undo itself is rejected and changes nothing
    assert app.post(f"/api/queries/{q['id']}/answer", json={"action": "confirm"}).status_code == 409
    assert app.post("/api/undo", json={"decision_id": d["id"]}).status_code == 409
    assert app.post("/api/undo", json={"decision_id": 9999}).status_code == 404
    assert labels_in_db(project_dir) == before
    decisions = app.get("/api/decisions").json()["decisions"]
    assert len(decisions) == 1 and decisions[0]["undone_at"] is not None  # the log keeps it


@pytest.mark.parametrize("body, status, word", [
    (b"{not json", 400, "JSON"),
    (b"[1, 2]", 400, "object"),
    (json.dumps({"suspicious_label": 10}).encode(), 422, "class index"),
    (json.dumps({"suspicious_label": -1}).encode(), 422, "class index"),
    (json.dumps({"suspicious_label": "3"}).encode(), 422, "integer"),
    (json.dumps({"suspicious_label": True}).encode(), 422, "integer"),
    (json.dumps({"suspicious_label": 1.5}).encode(), 422, "integer"),
    (json.dumps({"action": "delete"}).encode(), 422, "action"),
    (json.dumps({"label": 3}).encode(), 422, "unknown field"),
    (json.dumps({"action": "label", "counter_index": 0}).encode(), 422, "counter"),
    (b"{\"who\": \"" + b"x" * (MAX_BODY + 10) + b"\"}", 413, "too large"),
    (b"[" * 5000 + b"]" * 5000, 400, "JSON"),
    (b"\xff\xfe{}", 400, "JSON"),
    (json.dumps({"suspicious_label": 10**30}).encode(), 422, "range"),
    (json.dumps({"counter_index": -10**30}).encode(), 422, "range"),
])
def test_malformed_answers_are_4xx_and_change_nothing(app, project_dir, body, status, word):
    before = labels_in_db(project_dir)
    q = first_query(app)
    r = app.post(f"/api/queries/{q['id']}/answer", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert word.lower() in r.json()["detail"].lower()
    assert labels_in_db(project_dir) == before
    assert app.get("/api/decisions").json()["decisions"] == []
    assert first_query(app)["id"] == q["id"]  # still open


def test_unknown_ids_are_404(app):
    assert app.post("/api/queries/nope/answer", json={"action": "confirm"}).status_code == 404
    assert app.get("/api/queries/nope").status_code == 404
    assert app.get("/api/queries/nope/alternatives").status_code == 404
    assert app.get("/api/examples/100000").status_code == 404
    assert app.get("/api/examples/-1/image.png").status_code == 404
    assert app.get("/api/examples/abc").status_code == 422
    assert app.post("/api/undo", content=b"{}", headers={"Content-Type": "application/json"}).status_code == 422
    assert app.post("/api/undo", content=b"{}").status_code == 415  # no JSON content type
    assert app.post("/api/undo", json={"decision_id": 10**30}).status_code == 422


def test_cross_site_requests_are_refused(app, project_dir):
    q = first_query(app)
    form = app.post(f"/api/queries/{q['id']}/answer", content=b'{"action": "confirm"}',
                    headers={"Content-Type": "text/plain"})  # what a cross-site <form> could send
    assert form.status_code == 415
    rebound = app.get("/api/state", headers={"Host": "evil.example:8000"})  # DNS rebinding
    assert rebound.status_code == 403 and "localhost" in rebound.json()["detail"]
    assert app.get("/api/state", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert app.get("/api/state", headers={"Host": "[::1]:8000"}).status_code == 200
    assert app.get("/api/decisions").json()["decisions"] == []
    assert app.get("/nothing-here").status_code == 404


def test_no_file_outside_the_project_is_served(app):
    for url in ("/static/../project.json", "/static/..%2F..%2Fcli.py", "/static/%2Fetc%2Fpasswd",
                "/api/examples/..%2F..%2Fetc%2Fpasswd/image.png", "/api/examples/0%2F..%2F..%2Fproject.json"):
        r = app.get(url)
        assert r.status_code in (404, 422), url
        assert b"root:" not in r.content and b"class_names" not in r.content


def test_images_by_id_are_png(app):
    q = first_query(app)
    r = app.get(q["suspicious"]["image_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_alternatives_and_answering_about_another_counterexample(app, project_dir):
    state = app.get("/api/state").json()
    for _ in range(10):  # find a query with at least two candidates
        if len(state["query"]["alternatives"]) >= 2:
            break
        state = app.post(f"/api/queries/{state['query']['id']}/answer", json={"action": "skip"}).json()["state"]
    q = state["query"]
    alts = app.get(f"/api/queries/{q['id']}/alternatives").json()["alternatives"]
    assert [a["rank"] for a in alts] == list(range(1, len(alts) + 1)) and len(alts) <= 3
    assert [a["score"] for a in alts] == sorted((a["score"] for a in alts), reverse=True)
    other = alts[1]["id"]
    view = app.get(f"/api/queries/{q['id']}", params={"counter": other}).json()
    assert view["counter"]["id"] == other
    assert app.get(f"/api/queries/{q['id']}", params={"counter": q["suspicious"]["id"]}).status_code == 422
    r = app.post(f"/api/queries/{q['id']}/answer", json={"counter_index": other, "counter_label": 0})
    assert r.status_code == 200 and r.json()["decision"]["counter"] == other
    assert labels_in_db(project_dir)[other] == 0


def test_token_is_checked_on_every_request(project_dir):
    session = open_session(project_dir)
    try:
        with TestClient(create_app(session, token="s3cret-token")) as client:
            for url in ("/", "/api/state", "/static/app.js", "/api/examples/0/image.png", "/healthz"):
                assert client.get(url).status_code == 401, url
            assert client.post("/api/undo", json={"decision_id": 1}).status_code == 401
            assert client.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get("/api/state", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
            page = client.get("/?token=s3cret-token")  # the printed URL: sets a cookie for the page's fetches
            assert page.status_code == 200 and "cincer_token" in page.headers.get("set-cookie", "")
            assert client.get("/api/state").status_code == 200
    finally:
        session.close()


def test_restart_rebuilds_the_same_session(project_dir):
    session = open_session(project_dir)
    answered = []
    for _ in range(3):
        q = session.current_query()
        answered.append(session.answer(q.id, action="label", suspicious_label=q.prediction))
    open_id, labels = session.current_query().id, session.loop.labels.copy()
    session.close()
    again = open_session(project_dir)
    try:
        assert again.current_query().id == open_id
        assert np.array_equal(again.loop.labels, labels)
        assert again.store.counts()["answered"] == 3
        assert len(again.loop.known) == 60 + again.cursor
        with pytest.raises(Exception, match="already answered"):
            again.answer(answered[0]["query_id"], action="confirm")
    finally:
        again.close()


def test_background_retrain_swaps_the_model(project_dir):
    session = Session(load_project(project_dir), background=True).start()
    try:
        v0 = session.model_version
        q = session.current_query()
        session.answer(q.id, action="label", suspicious_label=q.prediction)
        session.wait_idle()
        assert session.model_version > v0
        assert session.progress()["f1"][-1]["n_decisions"] == 1
    finally:
        session.close()


def test_audit_mode_starts_with_the_most_suspicious(project_dir):
    project = load_project(project_dir)
    project.config.mode = "audit"
    session = Session(project, background=False).start()
    try:
        order = session.store.get_meta("audit_order")
        assert len(order) > 0 and len(session.loop.known) == project.n
        q = session.current_query()
        assert q.suspicious == order[0] and q.probs[q.prediction] - q.probs[q.label] > 0.2  # the margin's default
        assert session.progress()["total"] == len(order)
    finally:
        session.close()
    project.config.mode = "stream"
    with pytest.raises(CincerError, match="audit mode"):
        Session(project, background=False).start()


def test_the_app_and_the_library_audit_in_the_same_order(project_dir):
    """One audit ordering: the app's session and ``Cleaner.audit`` agree for the same model, inspector and
    threshold (here a stricter threshold than the default, which both must honour)."""
    project = load_project(project_dir)
    project.config.mode, project.config.threshold = "audit", 0.5
    session = Session(project, background=False).start()
    try:
        order = session.store.get_meta("audit_order")
        labels = session.loop.labels.copy()
        trained = copy.deepcopy(session.loop.learner.model)
    finally:
        session.close()
    probs = session.loop.learner.predict_proba(torch.as_tensor(project.X, dtype=torch.float32))
    assert len(order) > 0 and np.all(probs.max(1)[order] - probs[order, labels[order]] > 0.5)
    cleaner = Cleaner(trained, classes=range(project.n_classes), train_fn=lambda model, X, y: None,
                      threshold=0.5, retrain="defer")  # the session's model, kept as it is by a no-op trainer
    asked = [q.index for q in cleaner.audit(project.X, labels, budget=project.n)]
    assert asked == order


def test_export_csv_and_json(project_dir, tmp_path):
    session = open_session(project_dir)
    q = session.current_query()
    d = session.answer(q.id, action="label", suspicious_label=q.prediction)
    q2 = session.current_query()
    d2 = session.answer(q2.id, action="label", suspicious_label=(q2.label + 1) % 10)
    session.undo(d2["id"])
    session.close()
    paths = write_export(project_dir, fmt="csv", out=tmp_path / "out")
    with open(paths[0]) as f:
        labels = list(csv.DictReader(f))
    with open(paths[1]) as f:
        audit = list(csv.DictReader(f))
    pool = [r for r in labels if r["held_out"] == "False"]  # the demo's held-out rows are exported too, marked
    assert len(pool) == 240 and len(labels) == 240 + len(load_project(project_dir).y_test)
    assert [r for r in labels if r["changed"] == "True"] == [labels[q.suspicious]]
    assert labels[q.suspicious]["label"] == str(q.prediction)
    assert [r["role"] for r in audit] == ["suspicious", "counterexample"] * 2
    assert audit[0]["old_label"] == str(q.label) and audit[0]["new_label"] == str(q.prediction)
    assert audit[0]["counterexample_shown"] == str(d["counter"]) and audit[0]["who"] == "tester"
    assert audit[2]["undone_at"] != ""
    assert cli_main(["export", str(project_dir), "--format", "json"]) == 0
    data = json.loads((project_dir / "export" / "cleaned.json").read_text())
    assert sum(not r["held_out"] for r in data["labels"]) == 240 and len(data["audit"]) == 4
    assert cli_main(["export", str(tmp_path / "missing")]) == 2


# ---------------------------------------------------------------------- project formats
def _breast_frame():
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer()
    frame = pd.DataFrame(b.data[:150], columns=b.feature_names)
    frame["diagnosis"] = np.array(b.target_names)[b.target[:150]]
    return frame


def test_tabular_csv_project_highlights_differences(tmp_path):
    path = tmp_path / "breast.csv"
    _breast_frame().to_csv(path, index=False)
    assert cli_main(["project", "init", str(tmp_path / "p"), "--data", str(path), "--labels", "diagnosis",
                     "--holdout", "0.2", "--known", "30", "--epochs", "10"]) == 0
    project = load_project(tmp_path / "p")
    assert project.kind == "tabular" and project.class_names == ["malignant", "benign"]  # order of first appearance
    assert project.n == 120 and project.has_holdout and len(project.feature_names) == 30
    assert project.raw.shape == (120, 30) and abs(project.X.mean()) < 0.2  # raw values shown, standardised learnt
    project.y[40:60] = 1 - project.y[40:60]  # make some examples suspicious
    session = Session(project, background=False).start()
    try:
        q = session.current_query()
        assert q is not None
        view = session.query_view(q)
        assert len(view["suspicious"]["features"]) == 30 and len(view["highlight"]) == (3 if view["counter"] else 0)
    finally:
        session.close()


def test_parquet_npz_text_and_image_projects(tmp_path):
    frame = _breast_frame()
    frame.to_parquet(tmp_path / "b.parquet")
    init_project(tmp_path / "pq", data=tmp_path / "b.parquet", labels="diagnosis")
    assert load_project(tmp_path / "pq").n == 150

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "arr.npz", X=rng.normal(size=(50, 4)), y=rng.integers(0, 3, 50))
    assert load_project(init_project(tmp_path / "npz", data=tmp_path / "arr.npz", labels=None)).kind == "tabular"
    np.savez(tmp_path / "img.npz", X=rng.random((40, 8, 8)), y=rng.integers(0, 2, 40))
    img = load_project(init_project(tmp_path / "npzimg", data=tmp_path / "img.npz", labels=None))
    assert img.kind == "image" and img.X.shape == (40, 1, 8, 8) and img.image_png(0)[:4] == b"\x89PNG"

    import pandas as pd

    texts = [f"{w} movie, truly {w} acting and a {w} plot" for w in ["great", "awful"] * 20]
    pd.DataFrame({"review": texts, "sentiment": ["pos", "neg"] * 20}).to_csv(tmp_path / "t.csv", index=False)
    txt = load_project(init_project(tmp_path / "txt", data=tmp_path / "t.csv", labels="sentiment", text="review"))
    assert txt.kind == "text" and txt.texts[0] == texts[0] and txt.X.shape[0] == 40 and np.isfinite(txt.X).all()
    txt.y[30:] = 1 - txt.y[30:]  # flipped labels late in the stream: the model should query them
    txt.config.epochs, txt.n_known = 40, 20
    session = Session(txt, background=False).start()
    try:
        q = session.current_query()
        assert q is not None and q.suspicious >= 30
        view = session.query_view(q)
        assert view["suspicious"]["text"] == texts[q.suspicious] and "image_url" not in view["suspicious"]
    finally:
        session.close()

    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    rows = []
    for i in range(20):
        Image.fromarray((rng.random((12, 10)) * 255).astype(np.uint8)).save(folder / f"im{i}.png")
        rows.append({"file": f"im{i}.png", "label": "cat" if i % 2 else "dog"})
    pd.DataFrame(rows).to_csv(tmp_path / "pics.csv", index=False)
    pics = load_project(init_project(tmp_path / "imgp", data=tmp_path / "pics.csv", labels="label",
                                     images=folder, holdout=0.25))
    assert pics.kind == "image" and pics.n == 15 and pics.X.shape[1:] == (1, 28, 28)
    assert pics.image_png(14)[:4] == b"\x89PNG" and len(list((tmp_path / "imgp" / "images").glob("*.png"))) == 15

    pd.DataFrame([{"file": "../t.csv", "label": "a"}] * 12).to_csv(tmp_path / "evil.csv", index=False)
    with pytest.raises(CincerError, match="not a file inside"):
        init_project(tmp_path / "evil", data=tmp_path / "evil.csv", labels="label", images=folder)


@pytest.mark.parametrize("argv, word", [
    (["project", "init", "{d}/x", "--data", "{d}/missing.csv", "--labels", "y"], "no such file"),
    (["project", "init", "{d}/x", "--data", "{d}/bad.csv", "--labels", "nope"], "not in"),
    (["project", "init", "{d}/x", "--data", "{d}/bad.csv"], "--labels"),
    (["project", "init", "{d}/x", "--data", "{d}/bad.csv", "--labels", "a", "--known", "500"], "--known"),
    (["serve", "--project", "{d}"], "neither a cincer project nor empty"),
    (["serve", "--project", "{d}/p", "--port", "0"], "--port"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, word):
    (tmp_path / "bad.csv").write_text("a,b\n" + "\n".join(f"{i % 2},{i}" for i in range(20)))
    code = cli_main([a.replace("{d}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and word in err and "Traceback" not in err and err.count("\n") == 1


def test_loopback_detection():
    from cincer.commands.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_checked_examples_are_not_shown_again_even_after_a_restart(project_dir):
    shown = []

    def confirm_some(session, n):
        for _ in range(n):
            q = session.current_query()
            if q is None:
                return
            shown.extend(i for i in (q.suspicious, q.counter) if i is not None)
            session.answer(q.id, action="confirm")

    session = open_session(project_dir)
    try:
        confirm_some(session, 6)
        skipped = session.current_query()
        session.answer(skipped.id, action="skip")  # a skip checks nothing
        assert skipped.suspicious not in set(session.loop.checked)
    finally:
        session.close()
    again = open_session(project_dir)
    try:
        assert set(again.loop.checked) == set(shown)  # rebuilt from the store
        confirm_some(again, 6)
    finally:
        again.close()
    assert len(shown) > 12 and len(shown) == len(set(shown))
