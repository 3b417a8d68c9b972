"""The session's durable state: SQLite (WAL, synchronous=FULL), one transaction per decision.

Tables: ``meta`` (key -> JSON), ``examples`` (current and original label of every pool example),
``queries`` (each query shown, with a stored id, its ranking and status), ``decisions`` (at most one
per query: ``query_id`` is unique, so a query is never answered twice) and ``f1_history``.
Every method that changes something commits before it returns, so a caller that acknowledges a
decision after the call knows it survives ``kill -9``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConflictError, NotFoundError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS examples (idx INTEGER PRIMARY KEY, original INTEGER NOT NULL, label INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, suspicious INTEGER NOT NULL, counter INTEGER,
    label INTEGER NOT NULL, prediction INTEGER NOT NULL, probs TEXT NOT NULL, ranking TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'answered', 'undone')), created TEXT NOT NULL,
    reopens TEXT);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, query_id TEXT NOT NULL UNIQUE REFERENCES queries(id),
    who TEXT NOT NULL, at TEXT NOT NULL, action TEXT NOT NULL,
    suspicious INTEGER NOT NULL, suspicious_old INTEGER NOT NULL, suspicious_new INTEGER NOT NULL,
    counter INTEGER, counter_old INTEGER, counter_new INTEGER, undone_at TEXT);
CREATE TABLE IF NOT EXISTS f1_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, n_decisions INTEGER NOT NULL,
    n_known INTEGER NOT NULL, f1 REAL NOT NULL, accuracy REAL NOT NULL);
"""


@dataclass
class StoredQuery:
    id: str
    seq: int
    suspicious: int
    counter: int | None
    label: int
    prediction: int
    probs: list[float]
    ranking: list[tuple[int, float]]  # (index, score), best first; the top 3 at most
    status: str
    created: str
    reopens: str | None = None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """A thin, thread-safe wrapper over one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ helpers
    def _tx(self):
        return _Transaction(self._db, self._lock)

    def get_meta(self, key: str, default=None):
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value) -> None:
        with self._tx() as db:
            _set_meta(db, key, value)

    def pragma(self, name: str):
        with self._lock:
            return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    # ------------------------------------------------------------------ examples
    def init_examples(self, labels) -> bool:
        """Write the initial labels once; returns False when the store already had them."""
        with self._tx() as db:
            if db.execute("SELECT COUNT(*) FROM examples").fetchone()[0]:
                return False
            db.executemany("INSERT INTO examples (idx, original, label) VALUES (?, ?, ?)",
                           [(i, int(v), int(v)) for i, v in enumerate(labels)])
            return True

    def labels(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT label FROM examples ORDER BY idx")]

    def original_labels(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT original FROM examples ORDER BY idx")]

    # ------------------------------------------------------------------ queries
    def open_query(self) -> StoredQuery | None:
        """The query to show now: the open one created last (an undo reopens on top of the stack)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM queries WHERE status = 'open' ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else _query(row)

    def query(self, query_id: str) -> StoredQuery:
        with self._lock:
            row = self._db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown query id {query_id!r}")
        return _query(row)

    def add_query(self, *, suspicious: int, counter: int | None, label: int, prediction: int, probs,
                  ranking, meta: dict | None = None, reopens: str | None = None) -> StoredQuery:
        """Insert an open query (and, in the same transaction, the session's cursor in ``meta``)."""
        qid = uuid.uuid4().hex[:16]
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queries").fetchone()[0]
            db.execute("INSERT INTO queries (id, seq, suspicious, counter, label, prediction, probs, ranking, "
                       "status, created, reopens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
                       (qid, seq, int(suspicious), None if counter is None else int(counter), int(label),
                        int(prediction), json.dumps([float(p) for p in probs]),
                        json.dumps([[int(i), float(s)] for i, s in ranking]), now(), reopens))
            for key, value in (meta or {}).items():
                _set_meta(db, key, value)
        return self.query(qid)

    # ------------------------------------------------------------------ decisions
    def decide(self, query_id: str, *, who: str, action: str, suspicious_new: int,
               counter: int | None, counter_new: int | None) -> dict:
        """Apply one decision atomically: the decision row, the new labels, the query's status."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown query id {query_id!r}")
            if row["status"] != "open":
                existing = db.execute("SELECT * FROM decisions WHERE query_id = ?", (query_id,)).fetchone()
                raise ConflictError(f"query {query_id} was already {row['status']}", _dict_or_none(existing))
            s = row["suspicious"]
            s_old = db.execute("SELECT label FROM examples WHERE idx = ?", (s,)).fetchone()[0]
            c_old = None
            if counter is not None:
                c_old = db.execute("SELECT label FROM examples WHERE idx = ?", (counter,)).fetchone()[0]
                counter_new = c_old if counter_new is None else counter_new
            cur = db.execute(
                "INSERT INTO decisions (query_id, who, at, action, suspicious, suspicious_old, suspicious_new, "
                "counter, counter_old, counter_new) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (query_id, who, now(), action, s, s_old, suspicious_new, counter, c_old, counter_new))
            db.execute("UPDATE examples SET label = ? WHERE idx = ?", (suspicious_new, s))
            if counter is not None:
                db.execute("UPDATE examples SET label = ? WHERE idx = ?", (counter_new, counter))
            db.execute("UPDATE queries SET status = 'answered' WHERE id = ?", (query_id,))
            decision = db.execute("SELECT * FROM decisions WHERE id = ?", (cur.lastrowid,)).fetchone()
            return _dict(decision)

    def last_decision(self) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM decisions WHERE undone_at IS NULL ORDER BY id DESC LIMIT 1").fetchone()
        return _dict_or_none(row)

    def undo(self, decision_id: int) -> tuple[dict, StoredQuery]:
        """Undo the last live decision (only that one): restore its old labels and reopen its query
        under a new id, so a replay of the original answer is still rejected."""
        with self._tx() as db:
            last = db.execute("SELECT * FROM decisions WHERE undone_at IS NULL ORDER BY id DESC LIMIT 1").fetchone()
            if last is None or last["id"] != decision_id:
                target = db.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone()
                if target is None:
                    raise NotFoundError(f"unknown decision id {decision_id}")
                raise ConflictError(f"decision {decision_id} is not the last live decision "
                                    "(already undone or superseded)",
                               _dict(target))
            # labels back to what they were; checked against the current values so nothing drifts
            db.execute("UPDATE examples SET label = ? WHERE idx = ?", (last["suspicious_old"], last["suspicious"]))
            if last["counter"] is not None:
                db.execute("UPDATE examples SET label = ? WHERE idx = ?", (last["counter_old"], last["counter"]))
            db.execute("UPDATE decisions SET undone_at = ? WHERE id = ?", (now(), decision_id))
            db.execute("UPDATE queries SET status = 'undone' WHERE id = ?", (last["query_id"],))
            old = db.execute("SELECT * FROM queries WHERE id = ?", (last["query_id"],)).fetchone()
            qid = uuid.uuid4().hex[:16]
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queries").fetchone()[0]
            db.execute("INSERT INTO queries (id, seq, suspicious, counter, label, prediction, probs, ranking, "
                       "status, created, reopens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
                       (qid, seq, old["suspicious"], old["counter"], old["label"], old["prediction"], old["probs"],
                        old["ranking"], now(), old["id"]))
            undone = _dict(db.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone())
        return undone, self.query(qid)

    def decisions(self, *, live_only: bool = False) -> list[dict]:
        sql = "SELECT * FROM decisions" + (" WHERE undone_at IS NULL" if live_only else "") + " ORDER BY id"
        with self._lock:
            return [_dict(r) for r in self._db.execute(sql)]

    def counts(self) -> dict:
        with self._lock:
            db = self._db
            answered = db.execute("SELECT COUNT(*) FROM decisions WHERE undone_at IS NULL").fetchone()[0]
            skipped = db.execute("SELECT COUNT(*) FROM decisions WHERE undone_at IS NULL AND action = 'skip'"
                                 ).fetchone()[0]
            changed = db.execute("SELECT COUNT(*) FROM examples WHERE label != original").fetchone()[0]
        return {"answered": answered, "skipped": skipped, "labels_changed": changed}

    # ------------------------------------------------------------------ model quality
    def add_f1(self, *, n_decisions: int, n_known: int, f1: float, accuracy: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO f1_history (at, n_decisions, n_known, f1, accuracy) VALUES (?, ?, ?, ?, ?)",
                       (now(), n_decisions, n_known, f1, accuracy))

    def f1_history(self) -> list[dict]:
        with self._lock:
            return [_dict(r) for r in self._db.execute("SELECT * FROM f1_history ORDER BY id")]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


def _set_meta(db: sqlite3.Connection, key: str, value) -> None:
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
               (key, json.dumps(value)))


def _dict(row: sqlite3.Row) -> dict:
    return dict(row)


def _dict_or_none(row: sqlite3.Row | None) -> dict | None:
    return None if row is None else dict(row)


def _query(row: sqlite3.Row) -> StoredQuery:
    d = _dict(row)
    d["probs"] = json.loads(d["probs"])
    d["ranking"] = [(int(i), float(s)) for i, s in json.loads(d["ranking"])]
    return StoredQuery(**d)
