"""The annotation app for a team (issue 15), API level: keys that join back to the input file, safe
embedding of hostile strings, the class keys people expect, a project's lifecycle (lock, --force,
all-or-nothing init), annotators with their own tokens, and the guidance the page gets."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from apphelpers import ServerProcess, breast_frame, digit_images, free_port, review_texts, small_demo
from cincer.app import Session, load_project
from cincer.app.export import export_rows
from cincer.app.lock import LOCK_FILE, ProjectLock
from cincer.app.markup import render_markdown
from cincer.app.project import PROJECT_FILE, SessionConfig, assign_hotkeys, init_project
from cincer.app.server import create_app, script_json
from cincer.app.users import Annotators
from cincer.cli import main as cli_main
from cincer.errors import CincerError
from cincer.models import TrainConfig

HOSTILE = "</script><!--<script>\"'&\u2028\u2029"
ALWAYS = SessionConfig(inspector="always", train=TrainConfig(epochs=5, lr=1e-2), seed=0)


def open_session(root, **kw) -> Session:
    return Session(load_project(root), who="tester", background=False, **kw).start()


def answer_some(session: Session, n: int, *, user: str | None = None) -> list[dict]:
    """Relabel, relabel both, keep, skip, in turn (the suspicious example gets the model's prediction)."""
    decisions = []
    for k in range(n):
        q = session.current_query(user)
        if q is None:
            break
        if k % 4 == 3:
            decisions.append(session.answer(q.id, action="skip", user=user))
        elif k % 4 == 2 and q.counter is not None:
            other = (int(session.loop.labels[q.counter]) + 1) % session.project.n_classes
            decisions.append(session.answer(q.id, action="label", suspicious_label=q.prediction,
                                            counter_label=other, user=user))
        elif k % 4 == 1:
            decisions.append(session.answer(q.id, action="confirm", user=user))
        else:
            decisions.append(session.answer(q.id, action="label", suspicious_label=q.prediction, user=user))
    return decisions


@pytest.fixture(scope="module")
def breast_csv(tmp_path_factory):
    """A user's CSV (key column ``patient``, two rows without a label) and a project made from it."""
    folder = tmp_path_factory.mktemp("breast")
    frame = breast_frame(200)
    frame.loc[[7, 50], "diagnosis"] = None  # not labelled: not in the project, the other keys unchanged
    path = folder / "patients.csv"
    frame.to_csv(path, index=False)
    assert cli_main(["project", "init", str(folder / "p"), "--data", str(path), "--labels", "diagnosis",
                     "--id", "patient", "--holdout", "0.2", "--known", "30", "--epochs", "10"]) == 0
    return path, folder / "p"


@pytest.fixture
def breast_project(breast_csv, tmp_path):
    return breast_csv[0], shutil.copytree(breast_csv[1], tmp_path / "p")


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory):
    return small_demo(tmp_path_factory.mktemp("tpl") / "demo", size=240, n_known=60)


@pytest.fixture
def demo(demo_template, tmp_path):
    return shutil.copytree(demo_template, tmp_path / "demo")


# ---------------------------------------------------------------------- 1. keys and exports
def read_export(folder, fmt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if fmt == "csv":
        return pd.read_csv(folder / "labels.csv"), pd.read_csv(folder / "audit.csv")
    if fmt == "json":
        data = json.loads((folder / "cleaned.json").read_text())
        return pd.DataFrame(data["labels"]), pd.DataFrame(data["audit"])
    return pd.read_parquet(folder / "labels.parquet"), pd.read_parquet(folder / "audit.parquet")


@pytest.mark.slow
def test_export_round_trip_joins_on_the_key(breast_project, tmp_path):
    """init from a CSV with an id column and a holdout, answer, export (csv, json, parquet), join on the
    key with the input file: every row is there once, on the right row, and every change is found."""
    path, root = breast_project
    project = load_project(root)
    assert project.key_column == "patient" and project.has_holdout
    assert len(project.keys) + len(project.keys_test) == 198
    session = open_session(root)
    try:
        decisions = answer_some(session, 10)
        last = session.store.last_decision()
        if last is not None and last["action"] != "skip":
            session.undo(last["id"])  # an undone change must not be exported as a change
        final = {project.key(i): project.class_names[c] for i, c in enumerate(session.loop.labels)}
        changed = {project.key(i) for i in np.flatnonzero(session.loop.labels != project.y)}
    finally:
        session.close()
    assert changed and any(d["suspicious_old"] != d["suspicious_new"] for d in decisions)
    frame = pd.read_csv(path).reset_index()  # "index": the 0-based row number
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / fmt
        assert cli_main(["export", str(root), "--format", fmt, "--out", str(out)]) == 0
        labels, audit = read_export(out, fmt)
        assert len(labels) == 198 and labels["key"].is_unique
        merged = frame.merge(labels, left_on="patient", right_on="key", how="inner", validate="one_to_one")
        assert len(merged) == 198, fmt
        assert (merged["row"] == merged["index"]).all() and list(labels["row"]) == sorted(labels["row"])
        assert (merged["original_name"] == merged["diagnosis"]).all(), fmt  # the join lands on the right rows
        assert int(merged["held_out"].sum()) == len(project.keys_test)
        assert set(merged.loc[merged["name"] != merged["diagnosis"], "patient"]) == changed, fmt
        assert dict(zip(merged.loc[~merged["held_out"].astype(bool), "patient"],
                        merged.loc[~merged["held_out"].astype(bool), "name"])) == final
        assert merged.loc[merged["held_out"].astype(bool), "id"].isna().all()
        assert set(audit["key"]) <= set(frame["patient"]) and len(audit) > 0
        for _, row in audit.iterrows():
            assert row["key"] == project.key(int(row["example"]))


def test_keys_are_row_numbers_or_image_file_names(tmp_path):
    texts, labels = review_texts(40, flip=0)
    labels[5] = None
    pd.DataFrame({"review": texts, "sentiment": labels}).to_csv(tmp_path / "reviews.csv", index=False)
    p = load_project(init_project(tmp_path / "txt", data=tmp_path / "reviews.csv", labels="sentiment",
                                 text="review", holdout=0.25))
    assert p.key_column is None and sorted(p.keys + p.keys_test) == [i for i in range(40) if i != 5]
    assert p.rows == p.keys and all(p.texts[i] == texts[k] for i, k in enumerate(p.keys))
    assert all(p.class_names[p.y[i]] == labels[k] for i, k in enumerate(p.keys))

    from PIL import Image

    rows = digit_images(tmp_path / "pics", 30, flip=0)
    pd.DataFrame(rows).to_csv(tmp_path / "pics.csv", index=False)
    img = load_project(init_project(tmp_path / "img", data=tmp_path / "pics.csv", labels="label",
                                    images=tmp_path / "pics", holdout=0.2))
    assert img.key_column == "file" and len(img.keys) == 24 and len(img.keys_test) == 6
    for i, key in enumerate(img.keys):  # example i shows the file named by its key, with that file's label
        assert key == rows[img.rows[i]]["file"] and img.class_names[img.y[i]] == rows[img.rows[i]]["label"]
        with Image.open(tmp_path / "pics" / key) as original, Image.open(img.root / "images" / f"{i:06d}.png") as shown:
            assert np.array_equal(np.asarray(original.convert("RGB")), np.asarray(shown.convert("RGB")))
    pd.DataFrame(rows[:12] + rows[:1]).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(CincerError, match="listed twice"):
        init_project(tmp_path / "twice", data=tmp_path / "twice.csv", labels="label", images=tmp_path / "pics")
    assert not (tmp_path / "twice").exists()


@pytest.mark.parametrize("problem, word", [("missing", "missing value"), ("repeated", "repeats"),
                                           ("absent", "not in")])
def test_a_bad_key_column_is_a_one_line_error(tmp_path, capsys, problem, word):
    frame = breast_frame(40, flip=0)
    if problem == "missing":
        frame.loc[4, "patient"] = None
    elif problem == "repeated":
        frame.loc[4, "patient"] = frame.loc[3, "patient"]
    frame.to_csv(tmp_path / "t.csv", index=False)
    column = "nope" if problem == "absent" else "patient"
    assert cli_main(["project", "init", str(tmp_path / "p"), "--data", str(tmp_path / "t.csv"),
                     "--labels", "diagnosis", "--id", column]) == 2
    err = capsys.readouterr().err
    assert word in err and err.count("\n") == 1 and not (tmp_path / "p").exists()


def test_the_app_shows_keys_and_serves_the_exports(breast_project):
    path, root = breast_project
    session = open_session(root)
    try:
        with TestClient(create_app(session, allowed_hosts=("testserver",))) as client:
            q = client.get("/api/state").json()["query"]
            assert q["suspicious"]["key"] == session.project.key(q["suspicious"]["id"])
            assert str(q["suspicious"]["key"]).startswith("P-")
            client.post(f"/api/queries/{q['id']}/answer", json={"suspicious_label": q["prediction"]})
            r = client.get("/api/export/labels.csv")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            assert r.headers["content-disposition"] == 'attachment; filename="patients-labels.csv"'
            lines = r.text.splitlines()
            assert lines[0].startswith("key,row,held_out,id,") and len(lines) == 199
            assert client.get("/api/export/labels.parquet").content[:4] == b"PAR1"
            assert json.loads(client.get("/api/export/cleaned.json").content)["audit"][0]["key"] == \
                q["suspicious"]["key"]
            assert client.get("/api/export/..%2Fproject.json").status_code == 404
            assert client.get("/api/export/secrets.txt").status_code == 404
    finally:
        session.close()


# ---------------------------------------------------------------------- 2. escaping
def embedded_state(page: str) -> str:
    m = re.search(r'<script id="initial-state" type="application/json">(.*?)</script>', page, re.S)
    assert m is not None
    return m.group(1)


def test_script_json_escapes_what_ends_or_breaks_a_script():
    text = script_json({"a": HOSTILE, "b": ["<!--", "-->", "]]>"]})
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}
    assert json.loads(text) == {"a": HOSTILE, "b": ["<!--", "-->", "]]>"]}


def hostile_text_project(tmp_path) -> tuple:
    texts, labels = review_texts(40)
    texts = [f"{HOSTILE} {t} <img src=x onerror=alert(1)>" for t in texts]
    names = {"positive": f"pos{HOSTILE}", "negative": 'neg"\u2028<b>'}
    data = tmp_path / "<!--<script>&'\u2028 reviews.csv"
    pd.DataFrame({"review": texts, f"label{HOSTILE}": [names[c] for c in labels]}).to_csv(data, index=False)
    root = init_project(tmp_path / "txt", data=data, labels=f"label{HOSTILE}", text="review", config=ALWAYS,
                        n_known=20)
    return root, texts, names


def hostile_table_project(tmp_path):
    frame = breast_frame(60, flip=0)[["mean radius", "mean area", "clinic", "diagnosis"]]
    frame = frame.rename(columns={"mean radius": f"radius{HOSTILE}"})
    frame["clinic"] = frame["clinic"].map({"north": HOSTILE, "south": "<i>south</i>", "east": "east"})
    frame.to_csv(tmp_path / "t.csv", index=False)
    return init_project(tmp_path / "tab", data=tmp_path / "t.csv", labels="diagnosis", config=ALWAYS, n_known=20)


def test_the_page_embeds_hostile_strings_safely(tmp_path):
    states = []
    for root in (hostile_text_project(tmp_path)[0], hostile_table_project(tmp_path)):
        session = open_session(root)
        try:
            with TestClient(create_app(session, allowed_hosts=("testserver",))) as client:
                page = client.get("/").text
                raw = embedded_state(page)
                assert not set(raw) & {"<", ">", "&", "\u2028", "\u2029"}
                state = json.loads(raw)
                assert state == client.get("/api/state").json()
                assert "<!--" not in page.split("<title>")[1].split("</title>")[0]
                assert page.count("<script") == 2 and page.count("</script>") == 2  # the state and app.js
                states.append(state)
        finally:
            session.close()
    text, table = states
    assert text["project"]["class_names"] == [f"pos{HOSTILE}", "neg\"\u2028<b>"]
    assert text["project"]["name"] == "<!--<script>&'\u2028 reviews"
    assert text["query"]["suspicious"]["text"].startswith(HOSTILE)
    assert table["query"]["suspicious"]["features"][0]["name"] == f"radius{HOSTILE}"


# ---------------------------------------------------------------------- 3. class keys
def test_hotkeys_follow_the_class_names_then_the_class_order():
    assert assign_hotkeys(["1", "2", "3"]) == ["1", "2", "3"]
    assert assign_hotkeys(["3", "1", "2"]) == ["3", "1", "2"]  # a digit class gets its digit, wherever it is
    assert assign_hotkeys(["cat", "dog", "bird"]) == ["1", "2", "3"]
    assert assign_hotkeys(["0", "1", "other"]) == ["0", "1", "2"]
    assert assign_hotkeys(["1", "2", "other"]) == ["1", "2", "3"]
    assert assign_hotkeys([str(i) for i in range(10)] + ["x", "y"])[10:] == ["b", "c"]  # then letters, no commands
    assert assign_hotkeys(["cat", "dog", "bird"], {"dog": "d", "bird": "1"}) == ["2", "d", "1"]
    assert assign_hotkeys([f"c{i}" for i in range(40)]).count(None) == 40 - 10 - len("bcdefghijklmopqrtvwxyz")
    for config, word in (({"cat": "a"}, "command key"), ({"cat": "x", "dog": "X"}, "both"),
                         ({"cow": "c"}, "no class"), ({"cat": "ab"}, "one printable")):
        with pytest.raises(CincerError, match=word):
            assign_hotkeys(["cat", "dog"], config)


def test_class_order_from_the_data_or_from_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame["y"] = [3, 1, 2] * 10
    frame.loc[4, "y"] = None  # a gap makes pandas read the labels as floats: still the integers 1..3
    frame.to_csv(tmp_path / "ints.csv", index=False)
    ints = load_project(init_project(tmp_path / "ints", data=tmp_path / "ints.csv", labels="y"))
    assert ints.class_names == ["1", "2", "3"] and ints.hotkeys == ["1", "2", "3"]
    frame["y"] = ["eight", "two", "six"] * 10
    frame.to_csv(tmp_path / "words.csv", index=False)
    words = load_project(init_project(tmp_path / "words", data=tmp_path / "words.csv", labels="y"))
    assert words.class_names == ["eight", "two", "six"] and words.hotkeys == ["1", "2", "3"]  # first appearance
    assert cli_main(["project", "init", str(tmp_path / "given"), "--data", str(tmp_path / "words.csv"),
                     "--labels", "y", "--classes", "two, six,eight,none", "--hotkeys", "eight=e,none=0"]) == 0
    given = load_project(tmp_path / "given")
    assert given.class_names == ["two", "six", "eight", "none"] and given.hotkeys == ["1", "2", "e", "0"]
    assert given.n_classes == 4 and set(given.y.tolist()) == {0, 1, 2}
    assert json.loads((tmp_path / "given" / PROJECT_FILE).read_text())["hotkeys"] == {"eight": "e", "none": "0"}
    capsys.readouterr()
    for extra, word in ((["--classes", "two,six"], "not in"), (["--classes", "two,two,six,eight"], "each class once"),
                        (["--hotkeys", "six=s"], "command key"), (["--hotkeys", "six"], "CLASS=KEY")):
        assert cli_main(["project", "init", str(tmp_path / "bad"), "--data", str(tmp_path / "words.csv"),
                         "--labels", "y", *extra]) == 2
        err = capsys.readouterr().err
        assert word in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()
    meta = json.loads((tmp_path / "given" / PROJECT_FILE).read_text())
    meta["hotkeys"] = {"two": "t", "six": "t"}  # edited by hand
    (tmp_path / "given" / PROJECT_FILE).write_text(json.dumps(meta))
    with pytest.raises(CincerError, match="both"):
        load_project(tmp_path / "given")


# ---------------------------------------------------------------------- 4. lifecycle
def test_the_lock_names_its_holder_and_a_dead_holder_frees_it(tmp_path):
    first = ProjectLock(tmp_path).acquire()
    with pytest.raises(CincerError, match=f"process {os.getpid()}"):
        ProjectLock(tmp_path).acquire()
    assert ProjectLock(tmp_path).holder()["pid"] == os.getpid()
    first.release()
    assert ProjectLock(tmp_path).holder() is None
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999_999_999, "since": "long ago"}))  # stale: nobody locks
    with ProjectLock(tmp_path) as again:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid() and again.held
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('ok', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / LOCK_FILE)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"ok"
        with pytest.raises(CincerError, match="in use"):
            ProjectLock(tmp_path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: the kernel drops its lock
        holder.wait()
    ProjectLock(tmp_path).acquire().release()


def test_one_session_per_project_and_serve_names_the_pid(demo, capsys):
    session = open_session(demo)
    try:
        with pytest.raises(CincerError, match=f"process {os.getpid()}"):
            open_session(demo)
        code = cli_main(["serve", "--project", str(demo), "--port", str(free_port())])
        err = capsys.readouterr().err
        assert code == 2 and f"process {os.getpid()}" in err and err.count("\n") == 1
    finally:
        session.close()
    open_session(demo).close()  # free again


def test_init_force_moves_the_old_project_aside_and_never_reuses_its_session(breast_project, tmp_path, capsys):
    path, root = breast_project
    session = open_session(root)
    answer_some(session, 2)
    try:  # refused while served
        assert cli_main(["project", "init", str(root), "--data", str(path), "--labels", "diagnosis", "--force"]) == 2
        assert "being served by process" in capsys.readouterr().err
    finally:
        session.close()
    frame = pd.read_csv(path).iloc[:120]
    frame.to_csv(tmp_path / "fewer.csv", index=False)
    assert cli_main(["project", "init", str(root), "--data", str(tmp_path / "fewer.csv"), "--labels", "diagnosis",
                     "--force", "--epochs", "10"]) == 0
    out = capsys.readouterr().out
    old = next(root.parent.glob("p.old-*"))
    assert str(old) in out and (old / "cincer.sqlite").is_file() and load_project(old).n == 158
    assert not (root / "cincer.sqlite").exists() and load_project(root).n == 118
    fresh = open_session(root)
    try:
        assert fresh.store.counts()["answered"] == 0
    finally:
        fresh.close()
    shutil.copy(old / "cincer.sqlite", root / "cincer.sqlite")  # a session of other data
    with pytest.raises(CincerError, match="other data"):
        open_session(root)
    assert ProjectLock(root).holder() is None  # the failed start let go of the lock


def test_a_failed_init_leaves_nothing(tmp_path):
    rows = digit_images(tmp_path / "pics", 30, flip=0)
    (tmp_path / "pics" / rows[20]["file"]).write_bytes(b"not a png")
    pd.DataFrame(rows).to_csv(tmp_path / "pics.csv", index=False)
    target = tmp_path / "deep" / "er" / "p"
    with pytest.raises(CincerError, match="cannot read image"):
        init_project(target, data=tmp_path / "pics.csv", labels="label", images=tmp_path / "pics")
    assert not (tmp_path / "deep").exists()  # no folder, no half-copied images, no parent made for it
    digit_images(tmp_path / "pics", 30, flip=0)
    with pytest.raises(CincerError, match="--known"):  # fails after every image was copied
        init_project(tmp_path / "q", data=tmp_path / "pics.csv", labels="label", images=tmp_path / "pics", n_known=500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pics", "pics.csv"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(CincerError, match="neither a cincer project nor empty"):
        init_project(tmp_path / "full", data=tmp_path / "pics.csv", labels="label", images=tmp_path / "pics")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_a_second_cincer_serve_exits_2_naming_the_pid(demo, tmp_path):
    with ServerProcess(demo, log=tmp_path / "server.log") as first:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        second = subprocess.run([sys.executable, "-m", "cincer.cli", "serve", "--project", str(demo), "--port",
                                 str(free_port())], capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode == 2, second.stderr
        assert f"process {first.proc.pid}" in second.stderr and second.stderr.count("\n") == 1
        first.kill()  # kill -9 leaves the lock file behind, not the lock: the next start takes it over
        assert json.loads((demo / LOCK_FILE).read_text())["pid"] == first.proc.pid
        first.start()
        assert json.loads((demo / LOCK_FILE).read_text())["pid"] == first.proc.pid


# ---------------------------------------------------------------------- 5. annotators
def test_user_add_list_revoke(demo, capsys):
    assert cli_main(["project", "user", "add", str(demo), "alice"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert re.fullmatch(r"[0-9a-f]{8}\.[\w-]{32}", token) and f"?token={token}" in err
    stored = (demo / "users.json").read_text()
    assert token.split(".")[1] not in stored and "pbkdf2" not in stored
    user = json.loads(stored)["users"][0]
    assert user["name"] == "alice" and len(user["salt"]) == 32 and len(user["hash"]) == 64
    assert Annotators(demo).authenticate(token) == "alice"
    assert Annotators(demo).authenticate(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    assert cli_main(["project", "user", "add", str(demo), "alice"]) == 2
    assert cli_main(["project", "user", "add", str(demo), "bob"]) == 0
    capsys.readouterr()
    assert cli_main(["project", "user", "list", str(demo)]) == 0
    listing = capsys.readouterr().out
    assert "alice\tactive" in listing and "bob\tactive" in listing and token not in listing
    assert cli_main(["project", "user", "revoke", str(demo), "alice"]) == 0
    assert Annotators(demo).authenticate(token) is None
    assert cli_main(["project", "user", "revoke", str(demo), "alice"]) == 2
    assert cli_main(["project", "user", "add", str(demo / "nothing"), "carol"]) == 2
    capsys.readouterr()
    cli_main(["project", "user", "list", str(demo)])
    assert "alice\trevoked" in capsys.readouterr().out


@pytest.fixture
def team(demo):
    """The demo in token mode: alice's and bob's clients."""
    annotators = Annotators(demo)
    tokens = {name: annotators.add(name) for name in ("alice", "bob")}
    session = Session(load_project(demo), background=False).start()
    app = create_app(session, annotators=annotators)
    with TestClient(app) as alice, TestClient(app) as bob, TestClient(app) as anon:
        alice.headers["Authorization"] = f"Bearer {tokens['alice']}"
        bob.headers["X-Cincer-Token"] = tokens["bob"]
        yield {"alice": alice, "bob": bob, "anon": anon, "tokens": tokens, "session": session,
               "annotators": annotators, "root": demo}
    session.close()


def test_token_mode_decides_who_answered(team):
    alice, bob, anon, session = team["alice"], team["bob"], team["anon"], team["session"]
    assert anon.get("/api/state").status_code == 401 and "missing token" in anon.get("/").json()["detail"]
    assert anon.get("/api/state", headers={"Authorization": "Bearer 0123abcd.nope"}).status_code == 401
    assert anon.get("/favicon.ico").status_code == 401
    a, b = alice.get("/api/state").json(), bob.get("/api/state").json()
    assert a["project"]["user"] == "alice" and b["project"]["user"] == "bob" and a["project"]["per_user"]
    qa, qb = a["query"], b["query"]
    assert qa["id"] != qb["id"] and qa["assignee"] == "alice" and qb["assignee"] == "bob"
    assert alice.get("/api/state").json()["query"]["id"] == qa["id"]  # hers until she answers
    # answering someone else's query, or claiming to be someone else, changes nothing
    r = alice.post(f"/api/queries/{qb['id']}/answer", json={"action": "confirm"})
    assert r.status_code == 409 and "shown to bob" in r.json()["detail"]
    r = alice.post(f"/api/queries/{qa['id']}/answer", json={"action": "confirm", "who": "bob"})
    assert r.status_code == 422 and "set by your token" in r.json()["detail"]
    da = alice.post(f"/api/queries/{qa['id']}/answer", json={"suspicious_label": qa["prediction"]}).json()
    db = bob.post(f"/api/queries/{qb['id']}/answer", json={"action": "confirm", "who": "bob"}).json()
    assert da["decision"]["who"] == "alice" and db["decision"]["who"] == "bob"
    assert da["state"]["query"]["id"] not in (qa["id"], qb["id"], db["state"]["query"]["id"])
    # undo is per annotator: alice undoes her own decision although bob answered after her (unless bob's
    # query showed one of the same examples: then his answer may rest on hers and the undo is refused)
    assert da["state"]["last_decision"]["id"] == da["decision"]["id"]
    r = alice.post("/api/undo", json={"decision_id": db["decision"]["id"]})
    assert r.status_code == 409
    r = alice.post("/api/undo", json={"decision_id": da["decision"]["id"]})
    shared = {qa["suspicious"]["id"], qa["counter"]["id"]} & {qb["suspicious"]["id"], qb["counter"]["id"]}
    if shared:
        assert r.status_code == 409 and "same example" in r.json()["detail"]
    else:
        assert r.status_code == 200 and r.json()["state"]["query"]["suspicious"]["id"] == qa["suspicious"]["id"]
    who = {d["query_id"]: d["who"] for d in alice.get("/api/decisions").json()["decisions"]}
    assert who == {qa["id"]: "alice", qb["id"]: "bob"}
    # the cookie set by the printed link identifies the annotator on later requests
    with TestClient(anon.app) as browser:
        assert browser.get(f"/?token={team['tokens']['bob']}").status_code == 200
        assert browser.get("/api/state").json()["project"]["user"] == "bob"
    # revoked while serving: refused from the next request on
    team["annotators"].revoke("bob")
    assert bob.get("/api/state").status_code == 401 and "revoked" in bob.get("/api/state").json()["detail"]
    assert session.store.counts()["answered"] == (2 if shared else 1)


def test_two_annotators_at_once_never_share_an_open_query(team):
    alice, bob, session = team["alice"], team["bob"], team["session"]
    seen: dict[str, list[str]] = {"alice": [], "bob": []}
    barrier = threading.Barrier(2)

    def work(name, client):
        for _ in range(5):
            barrier.wait()
            q = client.get("/api/state").json()["query"]
            seen[name].append(q["id"])
            barrier.wait()  # both hold their query now
            r = client.post(f"/api/queries/{q['id']}/answer", json={"action": "confirm"})
            assert r.status_code == 200, r.text

    threads = [threading.Thread(target=work, args=item) for item in (("alice", alice), ("bob", bob))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(seen["alice"]) & set(seen["bob"]) and len(set(seen["alice"] + seen["bob"])) == 10
    decisions = session.store.decisions()
    assert {d["query_id"]: d["who"] for d in decisions} == {**dict.fromkeys(seen["alice"], "alice"),
                                                             **dict.fromkeys(seen["bob"], "bob")}


def test_a_query_left_by_someone_away_goes_to_the_next(demo, monkeypatch):
    now = [1000.0]  # the session's clock, moved by the test: a loaded machine cannot make anyone look away
    monkeypatch.setattr("cincer.app.session.time", SimpleNamespace(**{**vars(time), "monotonic": lambda: now[0]}))
    session = Session(load_project(demo), background=False, per_user=True, lease_seconds=60).start()
    try:
        left = session.current_query("alice")
        assert session.current_query("bob").id != left.id
        now[0] += 61
        session.touch("bob")
        carol = session.current_query("carol")  # alice is away: her open query is handed on
        assert carol.id == left.id and carol.assignee == "carol"
        with pytest.raises(CincerError, match="shown to carol"):
            session.answer(left.id, action="confirm", user="alice")
    finally:
        session.close()


# ---------------------------------------------------------------------- 6. guidance
def test_instructions_are_markdown_rendered_safely(tmp_path):
    html = render_markdown("# Task\nLabel **every** review.\n\n- *pos*: liked\n- neg: `disliked`\n\n"
                           "<script>alert(1)</script> [bad](javascript:alert(1)) [guide](https://example.org/a?b=1&c=2)"
                           "\n\n```\n<b>code</b>\n```")
    assert "<h3>Task</h3>" in html and "<strong>every</strong>" in html and "<em>pos</em>" in html
    assert "<ul><li>" in html and "<code>disliked</code>" in html and "&lt;b&gt;code&lt;/b&gt;" in html
    assert "<script" not in html and "&lt;script&gt;" in html and 'href="javascript' not in html
    assert '<a href="https://example.org/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer">guide</a>' in html
    texts, labels = review_texts(40)
    pd.DataFrame({"review": texts, "sentiment": labels}).to_csv(tmp_path / "r.csv", index=False)
    (tmp_path / "guide.md").write_text("Read the **whole** review <img src=x onerror=alert(1)>.")
    assert cli_main(["project", "init", str(tmp_path / "p"), "--data", str(tmp_path / "r.csv"), "--labels",
                     "sentiment", "--text", "review", "--instructions", str(tmp_path / "guide.md")]) == 0
    session = open_session(tmp_path / "p")
    try:
        info = session.state()["project"]
        assert info["instructions"] == ("<p>Read the <strong>whole</strong> review "
                                        "&lt;img src=x onerror=alert(1)&gt;.</p>")
    finally:
        session.close()
    assert cli_main(["project", "init", str(tmp_path / "q"), "--data", str(tmp_path / "r.csv"), "--labels",
                     "sentiment", "--instructions", str(tmp_path / "missing.md")]) == 2


def test_both_cards_carry_the_model_and_the_wording_fits_given_labels(demo):
    session = open_session(demo)
    try:
        with TestClient(create_app(session, allowed_hosts=("testserver",))) as client:
            q = client.get("/api/state").json()["query"]
            for role in ("suspicious", "counter"):
                m = q[role]["model"]
                assert set(m) == {"prediction", "prediction_name", "confidence", "label_confidence"}
                assert 0 < m["label_confidence"] <= m["confidence"] <= 1
            assert q["suspicious"]["model"]["prediction"] == q["prediction"]
            assert "you labelled" not in q["sentence"] and "labelled" in q["sentence"]
            alts = client.get(f"/api/queries/{q['id']}/alternatives").json()["alternatives"]
            assert all("model" in a for a in alts)
            page = client.get("/").text
            assert '<link rel="icon" href="/static/favicon.svg"' in page and "you labelled" not in page
            icon = client.get("/favicon.ico")
            assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
            r = client.post(f"/api/queries/{q['id']}/answer", content=b'{"action": "confirm"}',
                            headers={"Content-Type": "Application/JSON; Charset=UTF-8"})
            assert r.status_code == 200, r.text  # the media type is case-insensitive
            status = client.get("/api/status").json()
            assert status["query_id"] == r.json()["state"]["query"]["id"]
            assert {"retraining", "model_version", "train_seconds", "open"} <= set(status["progress"])
    finally:
        session.close()


def test_tables_show_missing_values_and_categories_as_given(breast_project):
    path, root = breast_project
    project = load_project(root)
    assert [c["name"] for c in project.columns][-1] == "clinic" and "patient" not in project.feature_names
    assert any(n.startswith("clinic=") for n in project.feature_names)  # one-hot for the model only
    session = open_session(root)
    try:
        frame = pd.read_csv(path)
        for row, column in ((5, "mean texture"), (3, "clinic")):
            if row not in project.rows:
                continue
            cells = {f["name"]: f for f in session.example(project.rows.index(row))["features"]}
            assert cells[column]["missing"] and cells[column]["value"] is None
        row = project.rows[0]
        cells = {f["name"]: f for f in session.example(0)["features"]}
        assert len(cells) == 9 and cells["clinic"]["value"] == frame.loc[row, "clinic"]
        assert cells["mean area"]["value"] == frame.loc[row, "mean area"] and cells["clinic"]["kind"] == "category"
        q = session.current_query()
        view = session.query_view(q)
        if view["counter"] is not None:
            assert len(view["highlight"]) == 3 and max(view["highlight"]) < 9
    finally:
        session.close()


def test_skipped_queries_can_be_revisited(demo):
    session = open_session(demo)
    try:
        with TestClient(create_app(session, allowed_hosts=("testserver",))) as client:
            q = client.get("/api/state").json()["query"]
            client.post(f"/api/queries/{q['id']}/answer", json={"action": "skip"})
            q2 = client.get("/api/state").json()["query"]
            d2 = client.post(f"/api/queries/{q2['id']}/answer", json={"action": "confirm"}).json()["decision"]
            skipped = client.get("/api/skipped").json()["skipped"]
            assert len(skipped) == 1 and skipped[0]["suspicious"]["id"] == q["suspicious"]["id"]
            assert skipped[0]["suspicious"]["key"] == session.project.key(q["suspicious"]["id"])
            r = client.post(f"/api/skipped/{skipped[0]['decision_id']}/revisit", json={})
            assert r.status_code == 200, r.text
            state = r.json()["state"]
            assert state["query"]["reopens"] == q["id"] and state["query"]["suspicious"]["id"] == q["suspicious"]["id"]
            assert state["progress"]["answered"] == 1 and state["progress"]["skipped"] == 0
            assert client.get("/api/skipped").json()["skipped"] == []
            assert client.post(f"/api/skipped/{skipped[0]['decision_id']}/revisit", json={}).status_code == 409
            assert client.post(f"/api/skipped/{d2['id']}/revisit", json={}).status_code == 422
            assert client.post("/api/skipped/999/revisit", json={}).status_code == 404
            assert client.post(f"/api/skipped/{d2['id']}/revisit", json={"x": 1}).status_code == 422
            assert client.post(f"/api/queries/{q['id']}/answer", json={"action": "confirm"}).status_code == 409
            r = client.post(f"/api/queries/{state['query']['id']}/answer", json={"action": "confirm"})
            assert r.status_code == 200 and r.json()["state"]["last_decision"]["query_id"] == state["query"]["id"]
    finally:
        session.close()


@pytest.mark.slow
def test_the_end_of_the_queue_has_a_summary(tmp_path):
    root = small_demo(tmp_path / "d", size=90, n_known=45)
    session = open_session(root)
    try:
        for k in range(60):
            q = session.current_query()
            if q is None:
                break
            session.answer(q.id, action="skip" if k % 3 == 0 else "label", suspicious_label=q.prediction)
        state = session.state()
        assert state["done"] and state["query"] is None
        s, p = state["summary"], state["progress"]
        assert s["answered"] == p["answered"] > 0 and s["skipped"] == p["skipped"] > 0
        assert s["changed"] == p["labels_changed"] and s["open_elsewhere"] == 0
        assert s["f1_first"] == p["f1"][0]["f1"] and s["f1_last"] == p["f1"][-1]["f1"]
    finally:
        session.close()


# ---------------------------------------------------------------------- earlier projects
OLD_SCHEMA_QUERIES = """CREATE TABLE queries (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, suspicious INTEGER NOT NULL, counter INTEGER,
    label INTEGER NOT NULL, prediction INTEGER NOT NULL, probs TEXT NOT NULL, ranking TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'answered', 'undone')), created TEXT NOT NULL,
    reopens TEXT);"""


def test_a_project_and_store_of_an_earlier_version_still_load(breast_project):
    path, root = breast_project
    meta = json.loads((root / PROJECT_FILE).read_text())
    for key in ("hotkeys", "key_column", "columns", "feature_columns", "version"):
        meta.pop(key)
    meta["version"], meta["config"] = 1, {"epochs": 10, "lr": 0.01}  # flat training settings, as before 0.2
    (root / PROJECT_FILE).write_text(json.dumps(meta))
    (root / "keys.json").unlink()
    with np.load(root / "data.npz") as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("shown_")}
    np.savez(root / "data.npz", **arrays)
    with sqlite3.connect(root / "cincer.sqlite") as db:  # a store without queries.assignee
        db.executescript(OLD_SCHEMA_QUERIES)
        db.execute("CREATE TABLE examples (idx INTEGER PRIMARY KEY, original INTEGER NOT NULL, "
                   "label INTEGER NOT NULL)")
        db.executemany("INSERT INTO examples VALUES (?, ?, ?)",
                       [(i, int(v), int(v)) for i, v in enumerate(arrays["y"])])
    project = load_project(root)
    assert project.keys is None and project.key(7) == 7 and project.columns is None
    assert project.config.train.epochs == 10
    session = Session(project, background=False).start()
    try:
        q = session.current_query()
        view = session.query_view(q)
        assert view["suspicious"]["key"] == q.suspicious and len(view["suspicious"]["features"]) > 9
        session.answer(q.id, action="label", suspicious_label=q.prediction)
    finally:
        session.close()
    labels, audit = export_rows(root)
    assert len(labels) == 198 and labels[0]["key"] == 0 and audit[0]["key"] == q.suspicious
    assert sum(r["held_out"] for r in labels) == len(project.y_test) and labels[-1]["key"] is None
    assert cli_main(["export", str(root), "--format", "parquet"]) == 0
    assert len(pd.read_parquet(root / "export" / "labels.parquet")) == 198
