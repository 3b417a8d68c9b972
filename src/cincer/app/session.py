"""An annotation session: CINCER's round over a project, with its state rebuilt from the store.

The session is a client of :class:`cincer.loop.CleaningLoop`: stream mode asks the loop to
``observe`` each arriving example; audit mode walks the loop's ``audit_order`` (the known set is
everything) and asks it to ``query`` each example; decisions reach the labels through the loop's
``apply`` and ``undo``. Every change is made in memory and in the
:class:`~cincer.app.store.Store` under one lock, and undone in memory if the store refuses it; the
model is retrained by a background thread on a snapshot and swapped in when ready, so a query never
waits for training (the last trained model answers meanwhile).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from ..errors import CincerError, ConflictError, NotFoundError
from ..learners import Learner
from ..loop import Answer, Query, Update
from ..metrics import test_metrics
from ..select import Ranking
from .project import Project
from .store import Store, StoredQuery

ACTIONS = ("label", "confirm", "skip")
TOP_K = 3
N_HIGHLIGHT = 3


class Session:
    """One project's cleaning session. Thread-safe; every public method may be called from any thread."""

    def __init__(self, project: Project, *, who: str = "annotator", background: bool = True) -> None:
        self.project, self.config, self.who = project, project.config, who
        self.background = background
        self.store = Store(project.store_path)
        self.lock = threading.RLock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.retraining = False
        self.model_version = 0
        self.last_train_seconds = float("nan")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Session:
        """Rebuild the state from the store and train the first model (synchronously)."""
        cfg, p = self.config, self.project
        cfg.validate()
        mode = self.store.get_meta("mode")
        if mode is None:
            self.store.set_meta("mode", cfg.mode)
            self.store.set_meta("config", cfg.to_dict())
        elif mode != cfg.mode:
            raise CincerError(f"this project's session runs in {mode} mode, not {cfg.mode} "
                              f"(use --mode {mode}, or another project folder)")
        self.store.init_examples(p.y)
        labels = np.asarray(self.store.labels(), dtype=np.int64)
        self.dtype = torch.float32
        self.X = torch.as_tensor(p.X, dtype=self.dtype)
        self.X_test = None if not p.has_holdout else torch.as_tensor(p.X_test, dtype=self.dtype)
        known = np.arange(p.n) if cfg.mode == "audit" else np.arange(p.n_known + self.cursor)
        self.loop = cfg.new_loop(self._new_learner(), self.X, labels, known, np.random.default_rng(cfg.seed),
                                 skip_checked=True, checked=self._checked_examples())
        self._fit_now()
        if cfg.mode == "audit" and self.store.get_meta("audit_order") is None:
            self.store.set_meta("audit_order", [int(i) for i in self.loop.audit_order()])
        if self.background:
            self._thread = threading.Thread(target=self._worker, name="cincer-retrain", daemon=True)
            self._thread.start()
        return self

    def _checked_examples(self) -> set[int]:
        """Examples whose label a person gave or confirmed (live decisions, not skips)."""
        return {i for d in self.store.decisions(live_only=True) if d["action"] != "skip"
                for i in (d["suspicious"], d["counter"]) if i is not None}

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.store.close()

    @property
    def cursor(self) -> int:
        return int(self.store.get_meta("cursor", 0))

    # ------------------------------------------------------------------ training
    def _new_learner(self) -> Learner:
        cfg, p = self.config, self.project
        return cfg.new_learner(p.X.shape[1:], p.n_classes, seed=cfg.seed, dtype=self.dtype)

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray, int]:
        with self.lock:
            known = np.asarray(self.loop.known, dtype=np.int64)
            return known, self.loop.labels[known].copy(), self.store.counts()["answered"]

    def _fit_now(self) -> None:
        known, y, n_decisions = self._snapshot()
        start = time.perf_counter()
        learner = self._new_learner().fit(self.X[known], y)
        with self.lock:
            self.loop.learner = learner
            self.model_version += 1
            self.last_train_seconds = time.perf_counter() - start
        self._record_f1(learner, n_decisions, len(known))

    def _record_f1(self, learner: Learner, n_decisions: int, n_known: int) -> None:
        if self.X_test is None:
            return
        history = self.store.f1_history()
        if history and history[-1]["n_decisions"] == n_decisions and history[-1]["n_known"] == n_known:
            return
        assert self.project.y_test is not None  # a holdout is saved with its labels
        m = test_metrics(learner.predict_proba(self.X_test), self.project.y_test)
        self.store.add_f1(n_decisions=n_decisions, n_known=n_known, f1=m["f1"], accuracy=m["accuracy"])

    def _worker(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            self.retraining = True
            try:
                self._fit_now()
            except Exception as err:  # keep serving with the last model; report on stderr
                print(f"cincer: retraining failed: {err}", flush=True)
            finally:
                self.retraining = False

    def request_retrain(self) -> None:
        if self.background:
            self._dirty.set()
        else:
            self._fit_now()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no retrain is pending (tests)."""
        deadline = time.monotonic() + timeout
        while (self._dirty.is_set() or self.retraining) and time.monotonic() < deadline:
            time.sleep(0.02)

    # ------------------------------------------------------------------ queries
    def current_query(self) -> StoredQuery | None:
        """The open query, or a new one from the next suspicious example; ``None`` when all are seen."""
        with self.lock:
            query = self.store.open_query()
            if query is not None:
                return query
            return self._next_stream() if self.config.mode == "stream" else self._next_audit()

    def _next_stream(self) -> StoredQuery | None:
        p, cursor = self.project, self.cursor
        start = cursor
        while p.n_known + cursor < p.n:
            index = p.n_known + cursor
            cursor += 1
            query = self.loop.observe(index)
            if query is not None:
                stored = self._store_query(query, {"cursor": cursor})
                self.request_retrain()
                return stored
        if cursor != start:
            self.store.set_meta("cursor", cursor)
            self.request_retrain()
        return None

    def _next_audit(self) -> StoredQuery | None:
        order, cursor = self.store.get_meta("audit_order", []), self.cursor
        start = cursor
        while cursor < len(order):
            index = order[cursor]
            cursor += 1
            query = self.loop.query(index)
            if query is not None:  # else no longer suspicious after earlier decisions
                return self._store_query(query, {"cursor": cursor})
        if cursor != start:
            self.store.set_meta("cursor", cursor)
        return None

    def _store_query(self, query: Query, meta: dict) -> StoredQuery:
        ranking = query.ranking
        top = list(zip(ranking.indices[:TOP_K].tolist(), ranking.scores[:TOP_K].tolist()))
        return self.store.add_query(suspicious=query.index, counter=top[0][0] if top else None, label=query.label,
                                    prediction=query.prediction, probs=query.probs, ranking=top, meta=meta)

    # ------------------------------------------------------------------ decisions
    def answer(self, query_id: str, *, action: str, suspicious_label: int | None = None,
               counter_label: int | None = None, counter_index: int | None = None, who: str | None = None) -> dict:
        """Commit one decision (raises CincerError for bad input, NotFoundError, ConflictError)."""
        if action not in ACTIONS:
            raise CincerError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        for name, value in (("suspicious_label", suspicious_label), ("counter_label", counter_label)):
            if value is not None and not 0 <= value < self.project.n_classes:
                raise CincerError(f"{name} must be a class index in [0, {self.project.n_classes}), got {value}")
        with self.lock:
            stored = self.store.query(query_id)
            if stored.status != "open":
                raise ConflictError(f"query {query_id} was already {stored.status}",
                                    next((d for d in self.store.decisions() if d["query_id"] == query_id), None))
            query = self._loop_query(stored)
            if counter_index is not None and counter_index not in query.ranking.indices:
                raise CincerError(f"counter_index {counter_index} is not one of this query's counter-examples")
            counter = query.counterexample if counter_index is None else counter_index
            if counter is None and counter_label is not None:
                raise CincerError("this query has no counter-example to label")
            current = self.loop.labels
            if action == "skip":  # nothing checked, nothing changed
                answer = Answer(None, None, counter_index)
            else:  # label / confirm: the person has checked both examples shown
                if action == "confirm":
                    suspicious_label, counter_label = None, None
                answer = Answer(int(current[stored.suspicious]) if suspicious_label is None else suspicious_label,
                                None if counter is None else
                                int(current[counter]) if counter_label is None else counter_label, counter_index)
            update = self.loop.apply(query, answer)
            try:
                decision = self.store.decide(query_id, who=(who or self.who)[:64], action=action,
                                             suspicious_new=int(self.loop.labels[stored.suspicious]),
                                             counter=counter, counter_new=counter_label)
            except BaseException:
                self.loop.undo(update)
                raise
        if update.relabelled:
            self.request_retrain()
        return decision

    def _loop_query(self, stored: StoredQuery) -> Query:
        """The loop's view of a stored query (its top counter-examples as the ranking)."""
        ranking = Ranking(np.array([i for i, _ in stored.ranking], dtype=np.int64),
                          np.array([s for _, s in stored.ranking], dtype=np.float64))
        return Query(stored.suspicious, stored.label, stored.prediction, np.asarray(stored.probs), ranking,
                     self.loop.policy)

    def undo(self, decision_id: int) -> tuple[dict, StoredQuery]:
        with self.lock:
            decision, reopened = self.store.undo(decision_id)
            update = Update()
            for role in ("suspicious", "counter"):
                index, old, new = decision[role], decision[f"{role}_old"], decision[f"{role}_new"]
                if index is not None and old != new:
                    update.relabelled[index] = (old, new)
            checked_before = self._checked_examples()  # the store no longer counts the undone decision
            update.checked = [i for i in (decision["suspicious"], decision["counter"])
                              if i is not None and decision["action"] != "skip" and i not in checked_before]
            self.loop.undo(update)
        self.request_retrain()
        return decision, reopened

    # ------------------------------------------------------------------ views (JSON-ready)
    def class_name(self, label: int | None) -> str | None:
        return None if label is None else self.project.class_names[int(label)]

    def example(self, index: int) -> dict:
        p = self.project
        if not 0 <= index < p.n:
            raise NotFoundError(f"unknown example id {index}")
        label = int(self.loop.labels[index])
        out: dict[str, object] = {"id": index, "label": label, "label_name": self.class_name(label),
                                  "original_label": int(p.y[index]), "kind": p.kind}
        if p.kind == "image":
            out["image_url"] = f"/api/examples/{index}/image.png"
        elif p.kind == "text":
            assert p.texts is not None  # a text project always has its texts
            out["text"] = p.texts[index]
        else:
            names = p.feature_names or [f"x{i}" for i in range(p.X.shape[1])]
            values = (p.raw if p.raw is not None else p.X)[index]
            out["features"] = [{"name": n, "value": float(v)} for n, v in zip(names, values)]
        return out

    def query_view(self, query: StoredQuery, *, counter_index: int | None = None) -> dict:
        with self.lock:
            counter = query.counter if counter_index is None else counter_index
            P, L = self.class_name(query.prediction), self.class_name(query.label)
            confidence = query.probs[query.prediction]
            view = {"id": query.id, "status": query.status, "prediction": query.prediction, "prediction_name": P,
                    "confidence": confidence, "label_confidence": query.probs[query.label],
                    "suspicious": self.example(query.suspicious),
                    "counter": None if counter is None else self.example(counter),
                    "alternatives": [{"id": i, "score": s} for i, s in query.ranking],
                    "highlight": [], "reopens": query.reopens}
            if counter is None:
                view["sentence"] = (f"The model thinks this is “{P}”, not “{L}” ({confidence:.0%} sure); "
                                    f"no example labelled “{P}” explains it, so only this one is shown.")
            else:
                C = self.class_name(int(self.loop.labels[counter]))
                view["sentence"] = (f"The model thinks this is “{P}”, not “{L}” ({confidence:.0%} sure), "
                                    f"mostly because of this example you labelled “{C}”.")
                if self.project.kind == "tabular":
                    diff = np.abs(self.project.X[query.suspicious] - self.project.X[counter])
                    view["highlight"] = [int(i) for i in np.argsort(-diff)[:N_HIGHLIGHT]]
            return view

    def progress(self) -> dict:
        p = self.project
        counts = self.store.counts()
        if self.config.mode == "stream":
            seen, total = p.n_known + self.cursor, p.n
        else:
            seen, total = self.cursor, len(self.store.get_meta("audit_order", []))
        return {**counts, "seen": seen, "total": total, "mode": self.config.mode,
                "retraining": self.retraining, "model_version": self.model_version,
                "f1": [{"n_decisions": h["n_decisions"], "f1": h["f1"]} for h in self.store.f1_history()]}

    def state(self) -> dict:
        query = self.current_query()
        last = self.store.last_decision()
        return {"project": {"name": self.project.name, "kind": self.project.kind,
                            "class_names": self.project.class_names, "has_holdout": self.project.has_holdout},
                "progress": self.progress(), "query": None if query is None else self.query_view(query),
                "last_decision": last, "done": query is None}
