"""Helpers for the app's tests and crash drills: small projects (the demo; CSV, text and image projects
made from scikit-learn data), a real server subprocess, and an in-process server thread."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from cincer.app.project import SessionConfig, create_demo
from cincer.models import TrainConfig

QUICK = SessionConfig(model="fullnet", train=TrainConfig(epochs=10, lr=1e-2), seed=0)
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; playwright drives it through executable_path
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def small_demo(root: str | Path, *, size: int = 300, n_known: int = 60, dataset: str = "digits",
               config: SessionConfig | None = None) -> Path:
    """A quick demo project (digits, 20% noise, ``size`` examples, few epochs)."""
    return create_demo(root, dataset=dataset, limit=size, n_known=n_known, config=config or QUICK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``cincer serve`` in a subprocess on a loopback port; ``kill()`` is SIGKILL, ``start()`` restarts."""

    def __init__(self, project: Path, *, port: int | None = None, extra: list[str] | None = None,
                 log: Path | None = None) -> None:
        self.project, self.port = Path(project), port or free_port()
        self.extra = extra or []
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "cincer.cli", "serve", "--project", str(self.project),
                   "--port", str(self.port), *self.extra]
        if self.log:
            with open(self.log, "ab") as out:  # the child keeps its own handle
                self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        else:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cincer serve exited with {self.proc.returncode} (log: {self.log})")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"cincer serve did not answer within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ThreadServer:
    """uvicorn serving ``app`` in a thread of this process on a free loopback port (no start-up of a new
    interpreter: the browser tests' servers start in the time the first model takes to train)."""

    def __init__(self, app, *, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def breast_frame(n: int = 200, *, flip: int = 30, seed: int = 0):
    """Breast-cancer rows as a user's table: a string key column ``patient`` (not in file order), a
    categorical ``clinic`` with gaps, a missing value, large numbers, and ``flip`` wrong diagnoses."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer()
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(b.data[:n, :8], columns=list(b.feature_names[:8]))
    frame.insert(0, "patient", [f"P-{(7919 * i) % 10007:05d}" for i in range(n)])
    frame["clinic"] = rng.choice(["north", "south", "east"], size=n)
    frame.loc[3, "clinic"] = None
    frame.loc[5, "mean texture"] = np.nan
    diagnosis = np.array(b.target_names)[b.target[:n]].astype(object)
    wrong = rng.choice(np.arange(20, n), size=flip, replace=False)
    diagnosis[wrong] = np.where(diagnosis[wrong] == "malignant", "benign", "malignant")
    frame["diagnosis"] = diagnosis
    return frame


def review_texts(n: int = 80, *, flip: int = 10, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short film reviews, half positive and half negative, ``flip`` of them labelled the wrong way."""
    rng = np.random.default_rng(seed)
    good = ["great", "wonderful", "moving", "superb", "delightful", "brilliant"]
    bad = ["awful", "boring", "dull", "clumsy", "tedious", "painful"]
    things = ["acting", "plot", "soundtrack", "script", "camera work", "ending"]
    texts, labels = [], []
    for i in range(n):
        pos = i % 2 == 0
        words = good if pos else bad
        texts.append(f"A {rng.choice(words)} film: the {rng.choice(things)} is {rng.choice(words)} and the "
                     f"{rng.choice(things)} {'lifts' if pos else 'sinks'} it. {rng.choice(words).capitalize()}.")
        labels.append("positive" if pos else "negative")
    for i in rng.choice(np.arange(20, n), size=flip, replace=False):
        labels[i] = "negative" if labels[i] == "positive" else "positive"
    return texts, labels


def digit_images(folder: Path, n: int = 80, *, flip: int = 10, seed: int = 0, names=None) -> list[dict]:
    """PNG files of scikit-learn digits 0-3 in ``folder`` and the rows of a labels CSV (file, label)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.flatnonzero(d.target < 4)[:n]
    rng = np.random.default_rng(seed)
    labels = [str(int(d.target[i])) for i in keep]
    for i in rng.choice(np.arange(20, len(keep)), size=flip, replace=False):
        labels[i] = str((int(labels[i]) + 1) % 4)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for j, i in enumerate(keep):
        name = names(j) if names else f"digit-{j:03d}.png"
        pixels = (255 - d.images[i] * 16).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((64, 64), Image.NEAREST).save(folder / name)
        rows.append({"file": name, "label": labels[j]})
    return rows


def query_id(page) -> str:
    """The id of the query a browser page shows."""
    return page.get_attribute("#main", "data-query-id") or ""


def wait_new_query(page, old: str, *, timeout: int = 20000) -> str:
    """Wait until the page shows a query other than ``old``; its id."""
    page.wait_for_function("(old) => { const m = document.querySelector('#main');"
                           " return m && m.dataset.queryId && m.dataset.queryId !== old; }", arg=old, timeout=timeout)
    return query_id(page)
