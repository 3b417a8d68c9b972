"""An annotation session: CINCER's round over a project, with its state rebuilt from the store.

The session is a client of :class:`cincer.loop.CleaningLoop`: stream mode asks the loop to
``observe`` each arriving example; audit mode walks the loop's ``audit_order`` (the known set is
everything) and asks it to ``query`` each example, or, in a project made ``--from-audit``, walks the
audit's issues in their order, each shown with the audit's counter-examples (skipped once fixed or
checked, like a query the loop no longer finds suspicious); decisions reach the labels through the loop's
``apply`` and ``undo``. Every change is made in memory and in the
:class:`~cincer.app.store.Store` under one lock, and undone in memory if the store refuses it; the
model is retrained by a background thread on a snapshot and swapped in when ready, so a query never
waits for training (the last trained model answers meanwhile).

With ``per_user`` (the server's token mode: each annotator has their own token) every query is
assigned to one annotator: each gets their own open query, never one shown to someone else, until
that person has been away for ``lease_seconds``; an undo reverts the annotator's own last decision.
The session holds the project's lock (:class:`~cincer.app.lock.ProjectLock`) from ``start`` to
``close`` and refuses a store made for other data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from ..errors import CincerError, ConflictError, NotFoundError
from ..learners import Learner
from ..loop import Answer, Query, Update
from ..metrics import test_metrics
from ..select import Ranking
from .lock import ProjectLock
from .markup import render_markdown
from .project import Project
from .store import Store, StoredQuery

ACTIONS = ("label", "confirm", "skip")
TOP_K = 3
N_HIGHLIGHT = 3


class Session:
    """One project's cleaning session. Thread-safe; every public method may be called from any thread."""

    store: Store

    def __init__(self, project: Project, *, who: str = "annotator", background: bool = True, per_user: bool = False,
                 project_lock: ProjectLock | None = None, lease_seconds: float = 600.0,
                 is_annotator: Callable[[str], bool] | None = None) -> None:
        self.project, self.config, self.who = project, project.config, who
        self.background, self.per_user, self.lease_seconds = background, per_user, lease_seconds
        self.project_lock = project_lock or ProjectLock(project.root)
        self.is_annotator = is_annotator
        self._seen: dict[str, float] = {}  # annotator -> when last heard from (monotonic)
        self._started = time.monotonic()
        self.instructions_html = render_markdown(project.instructions) if project.instructions else ""
        self._audit_issue = {int(issue["index"]): issue for issue in project.audit or []}
        self._slots: list[tuple[str, int]] = []  # where each shown column's values are: (kind, position)
        counts = {"number": 0, "category": 0}
        for col in project.columns or []:
            self._slots.append((col["kind"], counts[col["kind"]]))
            counts[col["kind"]] += 1
        self.lock = threading.RLock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.retraining = False
        self.model_version = 0
        self.last_train_seconds = float("nan")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Session:
        """Take the project's lock, rebuild the state from the store and train the first model (synchronously)."""
        self.config.validate()
        self.project_lock.acquire()
        try:
            self.store = Store(self.project.store_path)
            try:
                self._start()
            except BaseException:
                self.store.close()
                raise
        except BaseException:
            self.project_lock.release()
            raise
        return self

    def _check_data(self) -> None:
        """Refuse a store made for other data (e.g. a session file copied from another project)."""
        p, fingerprint = self.project, self.project.fingerprint()
        stored = self.store.get_meta("data_fingerprint")
        if stored is None:
            originals = self.store.original_labels()
            if originals and originals != p.y.tolist():  # a store of an earlier version: compare the labels
                stored = "labels of other data"
        if stored is not None and stored != fingerprint:
            raise CincerError(f"{p.store_path} holds a session made for other data than {p.root} "
                              f"({len(self.store.original_labels())} examples stored, {p.n} in the project); "
                              "move it away to start a new session")
        if stored is None:
            self.store.set_meta("data_fingerprint", fingerprint)

    def _start(self) -> None:
        cfg, p = self.config, self.project
        self._check_data()
        if p.audit is not None and cfg.mode != "audit":
            raise CincerError(f"{p.root} reviews the issues of an audit (`cincer project init --from-audit`): it runs "
                              "in audit mode, not stream mode")
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
            order = self.loop.audit_order() if p.audit is None else [issue["index"] for issue in p.audit]
            self.store.set_meta("audit_order", [int(i) for i in order])
        if self.background:
            self._thread = threading.Thread(target=self._worker, name="cincer-retrain", daemon=True)
            self._thread.start()

    def _checked_examples(self) -> set[int]:
        """Examples whose label a person gave or confirmed (live decisions, not skips)."""
        return {i for d in self.store.decisions(live_only=True) if d["action"] != "skip"
                for i in (d["suspicious"], d["counter"]) if i is not None}

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if hasattr(self, "store"):
            self.store.close()
        self.project_lock.release()

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
    def touch(self, user: str) -> None:
        """``user`` is here (any request of theirs): their open query stays theirs."""
        self._seen[user] = time.monotonic()

    def _away(self, user: str) -> bool:
        if self.is_annotator is not None and not self.is_annotator(user):
            return True  # e.g. assigned by a run without annotators, or a revoked annotator
        return time.monotonic() - self._seen.get(user, self._started) > self.lease_seconds

    def current_query(self, user: str | None = None) -> StoredQuery | None:
        """The open query of ``user``, or a new one from the next suspicious example; ``None`` when all are
        seen. Without ``per_user`` everyone shares the one open query (the last created)."""
        with self.lock:
            if not self.per_user:
                query = self.store.open_query()
                return query if query is not None else self._next_query(self.who)
            user = user or self.who
            self.touch(user)
            query = self.store.open_query(assignee=user)
            if query is not None:
                return query
            for query in self.store.open_queries():  # unassigned (reopened) or left by someone away
                if (query.assignee is None or self._away(query.assignee)) and \
                        self.store.assign(query.id, user, previous=query.assignee):
                    return self.store.query(query.id)
            return self._next_query(user)

    def assigned_query_id(self, user: str | None = None) -> str | None:
        """The id of the query ``user`` sees now, without making one (the page's poll)."""
        with self.lock:
            if not self.per_user:
                query = self.store.open_query()
            else:
                self.touch(user or self.who)
                query = self.store.open_query(assignee=user or self.who)
            return None if query is None else query.id

    def _next_query(self, user: str) -> StoredQuery | None:
        return self._next_stream(user) if self.config.mode == "stream" else self._next_audit(user)

    def _next_stream(self, user: str) -> StoredQuery | None:
        p, cursor = self.project, self.cursor
        start = cursor
        while p.n_known + cursor < p.n:
            index = p.n_known + cursor
            cursor += 1
            query = self.loop.observe(index)
            if query is not None:
                stored = self._store_query(query, {"cursor": cursor}, user)
                self.request_retrain()
                return stored
        if cursor != start:
            self.store.set_meta("cursor", cursor)
            self.request_retrain()
        return None

    def _next_audit(self, user: str) -> StoredQuery | None:
        order, cursor = self.store.get_meta("audit_order", []), self.cursor
        start = cursor
        while cursor < len(order):
            index = order[cursor]
            cursor += 1
            query = self.loop.query(index) if self.project.audit is None else self._from_audit(cursor - 1)
            if query is not None:  # else no longer suspicious after earlier decisions
                return self._store_query(query, {"cursor": cursor}, user)
        if cursor != start:
            self.store.set_meta("cursor", cursor)
        return None

    def _from_audit(self, position: int) -> Query | None:
        """The query of the audit's issue at ``position``: its suggested label and counter-examples (those
        still labelled so and not checked), with the current model's probabilities; ``None`` once the example
        was checked or relabelled to the suggestion (e.g. as an earlier counter-example)."""
        assert self.project.audit is not None
        issue, loop = self.project.audit[position], self.loop
        index, suggested = int(issue["index"]), int(issue["suggested"])
        checked = set(loop.checked.tolist())
        label = int(loop.labels[index])
        if index in checked or label == suggested:
            return None
        shown = [] if loop.policy == "none" else [
            (int(c), float(score)) for c, score in issue["counterexamples"]
            if int(c) not in checked and int(c) != index and int(loop.labels[int(c)]) == suggested]
        ranking = Ranking(np.array([c for c, _ in shown], dtype=np.int64), np.array([s for _, s in shown]))
        probs = loop.learner.predict_proba(self.X[[index]])[0]
        return Query(index, label, suggested, probs, ranking, loop.policy)

    def _store_query(self, query: Query, meta: dict, user: str) -> StoredQuery:
        ranking = query.ranking
        top = list(zip(ranking.indices[:TOP_K].tolist(), ranking.scores[:TOP_K].tolist()))
        return self.store.add_query(suspicious=query.index, counter=top[0][0] if top else None, label=query.label,
                                    prediction=query.prediction, probs=query.probs, ranking=top, meta=meta,
                                    assignee=user)

    # ------------------------------------------------------------------ decisions
    def answer(self, query_id: str, *, action: str, suspicious_label: int | None = None,
               counter_label: int | None = None, counter_index: int | None = None, who: str | None = None,
               user: str | None = None) -> dict:
        """Commit one decision (raises CincerError for bad input, NotFoundError, ConflictError). ``user`` is
        the annotator (``per_user``), who is also the ``who`` of the audit log; else ``who`` or the
        session's name."""
        if self.per_user:
            user = user or self.who
            if who is not None and who != user:
                raise CincerError(f"who is set by your token (you are {user!r})")
            who = user
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
            if self.per_user and stored.assignee not in (None, user):
                raise ConflictError(f"query {query_id} is now shown to {stored.assignee} (you were away)")
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

    def undo(self, decision_id: int, user: str | None = None) -> tuple[dict, StoredQuery]:
        """Revert the last live decision (``per_user``: the annotator's own last one) and reopen its query."""
        with self.lock:
            decision, reopened = self.store.undo(decision_id, who=(user or self.who) if self.per_user else None)
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

    def revisit(self, decision_id: int, user: str | None = None) -> tuple[dict, StoredQuery]:
        """Reopen a skipped query (any live skip; it changed no label), for ``user``."""
        with self.lock:
            return self.store.revisit(decision_id, who=user or self.who)

    def skipped(self) -> list[dict]:
        """The live skips, latest first, with the examples they were about."""
        with self.lock:
            out = []
            for d in self.store.skipped():
                out.append({"decision_id": d["id"], "query_id": d["query_id"], "who": d["who"], "at": d["at"],
                            "suspicious": self.summary_of(d["suspicious"]),
                            "counter": None if d["counter"] is None else self.summary_of(d["counter"])})
            return out

    # ------------------------------------------------------------------ views (JSON-ready)
    def class_name(self, label: int | None) -> str | None:
        return None if label is None else self.project.class_names[int(label)]

    def summary_of(self, index: int) -> dict:
        label = int(self.loop.labels[index])
        return {"id": int(index), "key": self.project.key(index), "label": label, "label_name": self.class_name(label)}

    def opinion(self, probs, label: int) -> dict:
        """The model's prediction for an example, its confidence, and its probability of the current label."""
        probs = np.asarray(probs, dtype=np.float64)
        prediction = int(np.argmax(probs))
        return {"prediction": prediction, "prediction_name": self.class_name(prediction),
                "confidence": float(probs[prediction]), "label_confidence": float(probs[int(label)])}

    def live_opinion(self, index: int) -> dict:
        """:meth:`opinion` of the current model about pool example ``index``."""
        with self.lock:
            learner = self.loop.learner
        probs = learner.predict_proba(self.X[[index]])[0]
        return self.opinion(probs, int(self.loop.labels[index]))

    def example(self, index: int, *, model: bool = False) -> dict:
        p = self.project
        if not 0 <= index < p.n:
            raise NotFoundError(f"unknown example id {index}")
        label = int(self.loop.labels[index])
        out: dict[str, object] = {"id": index, "key": p.key(index), "label": label,
                                  "label_name": self.class_name(label),
                                  "original_label": int(p.y[index]), "kind": p.kind}
        if p.kind == "image":
            out["image_url"] = f"/api/examples/{index}/image.png"
        elif p.kind == "text":
            assert p.texts is not None  # a text project always has its texts
            out["text"] = p.texts[index]
        elif p.columns is not None:
            out["features"] = [self._cell(col, slot, index) for col, slot in zip(p.columns, self._slots)]
        else:  # a project made before the shown columns were kept: the model's features as they were
            names = p.feature_names or [f"x{i}" for i in range(p.X.shape[1])]
            values = (p.raw if p.raw is not None else p.X)[index]
            out["features"] = [{"name": n, "value": float(v), "kind": "number", "missing": False}
                               for n, v in zip(names, values)]
        if model:
            out["model"] = self.live_opinion(index)
        return out

    def _cell(self, col: dict, slot: tuple[str, int], index: int) -> dict:
        p, (kind, k) = self.project, slot
        if kind == "number":
            assert p.shown_num is not None
            v = float(p.shown_num[index, k])
            missing = not np.isfinite(v)
            return {"name": col["name"], "kind": kind, "missing": missing, "value": None if missing else v}
        assert p.shown_cat is not None and p.shown_cat_missing is not None
        missing = bool(p.shown_cat_missing[index, k])
        return {"name": col["name"], "kind": kind, "missing": missing,
                "value": None if missing else str(p.shown_cat[index, k])}

    def _highlight(self, a: int, b: int) -> list[int]:
        """The shown columns (or features) where two examples differ most, in standardised units."""
        p = self.project
        diff = np.abs(p.X[a] - p.X[b]).astype(np.float64)
        if p.columns is not None and p.feature_columns is not None:
            per_column = np.zeros(len(p.columns))
            np.maximum.at(per_column, np.asarray(p.feature_columns, dtype=np.int64), diff)
            diff = per_column
        return [int(i) for i in np.argsort(-diff, kind="stable")[:N_HIGHLIGHT]]

    def query_view(self, query: StoredQuery, *, counter_index: int | None = None) -> dict:
        with self.lock:
            counter = query.counter if counter_index is None else counter_index
            P, L = self.class_name(query.prediction), self.class_name(query.label)
            confidence = query.probs[query.prediction]
            suspicious = self.example(query.suspicious)
            suspicious["model"] = self.opinion(query.probs, query.label)  # as when the query was made
            view = {"id": query.id, "status": query.status, "prediction": query.prediction, "prediction_name": P,
                    "confidence": confidence, "label_confidence": query.probs[query.label],
                    "suspicious": suspicious,
                    "counter": None if counter is None else self.example(counter, model=True),
                    "alternatives": [{"id": i, "score": s} for i, s in query.ranking],
                    "highlight": [], "reopens": query.reopens, "assignee": query.assignee}
            issue = self._audit_issue.get(int(query.suspicious))
            if issue is not None:  # a project made --from-audit: the audit's judgement, not the live model's
                view["audit"] = {"suspicion": issue["suspicion"], "out_of_fold": issue["out_of_fold"]}
                where = " (out of fold)" if issue["out_of_fold"] else ""
                view["sentence"] = (f"The audit{where} suggests “{P}”, not “{L}” (suspicion {issue['suspicion']:.2f})"
                                    + (f"; no example labelled “{P}” is left to explain it, so only this one is shown."
                                       if counter is None else
                                       f", mostly because of this example, labelled "
                                       f"“{self.class_name(int(self.loop.labels[counter]))}”."))
            elif counter is None:
                view["sentence"] = (f"The model thinks this is “{P}”, not “{L}” ({confidence:.0%} sure); "
                                    f"no example labelled “{P}” explains it, so only this one is shown.")
            else:
                C = self.class_name(int(self.loop.labels[counter]))
                view["sentence"] = (f"The model thinks this is “{P}”, not “{L}” ({confidence:.0%} sure), "
                                    f"mostly because of this example, labelled “{C}”.")
                if self.project.kind == "tabular":
                    view["highlight"] = self._highlight(query.suspicious, counter)
            return view

    def progress(self) -> dict:
        p = self.project
        counts = self.store.counts()
        if self.config.mode == "stream":
            seen, total = p.n_known + self.cursor, p.n
        else:
            seen, total = self.cursor, len(self.store.get_meta("audit_order", []))
        return {**counts, "seen": seen, "total": total, "mode": self.config.mode,
                "retraining": self.retraining or self._dirty.is_set(), "model_version": self.model_version,
                "train_seconds": None if np.isnan(self.last_train_seconds) else round(self.last_train_seconds, 3),
                "f1": [{"n_decisions": h["n_decisions"], "f1": h["f1"]} for h in self.store.f1_history()]}

    def project_info(self, user: str | None = None) -> dict:
        p = self.project
        return {"name": p.name, "kind": p.kind, "class_names": p.class_names, "hotkeys": p.hotkeys,
                "has_holdout": p.has_holdout, "key_column": p.key_column, "instructions": self.instructions_html,
                "per_user": self.per_user, "user": user or self.who}

    def summary(self, progress: dict) -> dict:
        """What the end of the queue shows: counts and the held-out F1 from the first model to the last."""
        f1 = progress["f1"]
        return {"answered": progress["answered"], "changed": progress["labels_changed"],
                "skipped": progress["skipped"], "open_elsewhere": progress["open"],
                "f1_first": f1[0]["f1"] if f1 else None, "f1_last": f1[-1]["f1"] if f1 else None}

    def status(self, user: str | None = None) -> dict:
        """The page's poll: progress (retraining, counts) and the id of the query ``user`` sees now."""
        return {"progress": self.progress(), "query_id": self.assigned_query_id(user), "user": user or self.who}

    def state(self, user: str | None = None) -> dict:
        user = user or self.who
        query = self.current_query(user)
        last = self.store.last_decision(who=user if self.per_user else None)
        progress = self.progress()
        return {"project": self.project_info(user), "progress": progress,
                "query": None if query is None else self.query_view(query),
                "last_decision": last, "done": query is None,
                "summary": self.summary(progress) if query is None else None}
