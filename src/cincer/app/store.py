"""The session's durable state: SQLite (WAL, synchronous=FULL), one transaction per decision.

Tables: ``meta`` (key -> JSON), ``examples`` (current and original label of every pool example),
``queries`` (each query shown, with a stored id, its ranking, status and the annotator it is
assigned to), ``decisions`` (at most one per query: ``query_id`` is unique, so a query is never
answered twice) and ``f1_history``. A store made before ``queries.assignee`` existed gains the column
when it is opened.
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

from ..errors import CincerError, ConflictError, NotFoundError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS examples (idx INTEGER PRIMARY KEY, original INTEGER NOT NULL, label INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, suspicious INTEGER NOT NULL, counter INTEGER,
    label INTEGER NOT NULL, prediction INTEGER NOT NULL, probs TEXT NOT NULL, ranking TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'answered', 'undone')), created TEXT NOT NULL,
    reopens TEXT, assignee TEXT);
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
    assignee: str | None = None  # the annotator it is shown to (one at a time)


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
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(queries)")}
        if "assignee" not in columns:  # a store of an earlier version
            self._db.execute("ALTER TABLE queries ADD COLUMN assignee TEXT")

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
    def open_query(self, assignee: str | None = None) -> StoredQuery | None:
        """The query to show now: the open one created last (an undo reopens on top of the stack); with
        ``assignee``, the last one assigned to that annotator."""
        with self._lock:
            if assignee is None:
                row = self._db.execute("SELECT * FROM queries WHERE status = 'open' ORDER BY seq DESC LIMIT 1"
                                       ).fetchone()
            else:
                row = self._db.execute("SELECT * FROM queries WHERE status = 'open' AND assignee = ? "
                                       "ORDER BY seq DESC LIMIT 1", (assignee,)).fetchone()
        return None if row is None else _query(row)

    def open_queries(self) -> list[StoredQuery]:
        """Every open query, the last created first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM queries WHERE status = 'open' ORDER BY seq DESC").fetchall()
        return [_query(r) for r in rows]

    def assign(self, query_id: str, assignee: str, *, previous: str | None) -> bool:
        """Give an open query to ``assignee`` if it is still open and still ``previous``'s; True if done."""
        with self._tx() as db:
            cur = db.execute("UPDATE queries SET assignee = ? WHERE id = ? AND status = 'open' AND assignee IS ?",
                             (assignee, query_id, previous))
            return cur.rowcount == 1

    def query(self, query_id: str) -> StoredQuery:
        with self._lock:
            row = self._db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"unknown query id {query_id!r}")
        return _query(row)

    def add_query(self, *, suspicious: int, counter: int | None, label: int, prediction: int, probs,
                  ranking, meta: dict | None = None, reopens: str | None = None,
                  assignee: str | None = None) -> StoredQuery:
        """Insert an open query (and, in the same transaction, the session's cursor in ``meta``)."""
        qid = uuid.uuid4().hex[:16]
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queries").fetchone()[0]
            db.execute("INSERT INTO queries (id, seq, suspicious, counter, label, prediction, probs, ranking, "
                       "status, created, reopens, assignee) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                       (qid, seq, int(suspicious), None if counter is None else int(counter), int(label),
                        int(prediction), json.dumps([float(p) for p in probs]),
                        json.dumps([[int(i), float(s)] for i, s in ranking]), now(), reopens, assignee))
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

    def last_decision(self, who: str | None = None) -> dict | None:
        """The last live decision (of annotator ``who``, when given): the one an undo reverts."""
        with self._lock:
            if who is None:
                row = self._db.execute(
                    "SELECT * FROM decisions WHERE undone_at IS NULL ORDER BY id DESC LIMIT 1").fetchone()
            else:
                row = self._db.execute("SELECT * FROM decisions WHERE undone_at IS NULL AND who = ? "
                                       "ORDER BY id DESC LIMIT 1", (who,)).fetchone()
        return _dict_or_none(row)

    def undo(self, decision_id: int, *, who: str | None = None) -> tuple[dict, StoredQuery]:
        """Undo the last live decision (only that one; with ``who``, that annotator's last one, provided no
        later decision changed or checked the same examples): restore its old labels and reopen its query
        under a new id (assigned to ``who``), so a replay of the original answer is still rejected."""
        with self._tx() as db:
            target = db.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone()
            if target is None:
                raise NotFoundError(f"unknown decision id {decision_id}")
            if who is None:
                last = db.execute("SELECT * FROM decisions WHERE undone_at IS NULL ORDER BY id DESC LIMIT 1").fetchone()
            else:
                last = db.execute("SELECT * FROM decisions WHERE undone_at IS NULL AND who = ? "
                                  "ORDER BY id DESC LIMIT 1", (who,)).fetchone()
            if last is None or last["id"] != decision_id:
                mine = "" if who is None else f" of {who}"
                raise ConflictError(f"decision {decision_id} is not the last live decision{mine} "
                                    "(already undone or superseded)", _dict(target))
            if who is not None:
                touched = [i for i in (last["suspicious"], last["counter"]) if i is not None]
                marks = ",".join("?" * len(touched))
                later = db.execute(
                    f"SELECT * FROM decisions WHERE undone_at IS NULL AND id > ? AND action != 'skip' AND "
                    f"(suspicious IN ({marks}) OR counter IN ({marks})) ORDER BY id LIMIT 1",
                    (decision_id, *touched, *touched)).fetchone()
                if later is not None:
                    raise ConflictError(f"decision {decision_id} cannot be undone: {later['who']} has since "
                                        "answered about the same example", _dict(target))
            # labels back to what they were; checked against the current values so nothing drifts
            db.execute("UPDATE examples SET label = ? WHERE idx = ?", (last["suspicious_old"], last["suspicious"]))
            if last["counter"] is not None:
                db.execute("UPDATE examples SET label = ? WHERE idx = ?", (last["counter_old"], last["counter"]))
            db.execute("UPDATE decisions SET undone_at = ? WHERE id = ?", (now(), decision_id))
            qid = _reopen(db, last["query_id"], who)
            undone = _dict(db.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone())
        return undone, self.query(qid)

    def revisit(self, decision_id: int, *, who: str | None = None) -> tuple[dict, StoredQuery]:
        """Take back a live skip (any, not only the last decision: a skip changed nothing) and reopen its
        query under a new id, assigned to ``who``; the audit log keeps the skip, marked undone."""
        with self._tx() as db:
            target = db.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone()
            if target is None:
                raise NotFoundError(f"unknown decision id {decision_id}")
            if target["action"] != "skip":
                raise CincerError(f"decision {decision_id} is not a skip (undo it instead)")
            if target["undone_at"] is not None:
                raise ConflictError(f"the skip {decision_id} was already taken back", _dict(target))
            db.execute("UPDATE decisions SET undone_at = ? WHERE id = ?", (now(), decision_id))
            qid = _reopen(db, target["query_id"], who)
            revisited = _dict(db.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone())
        return revisited, self.query(qid)

    def skipped(self) -> list[dict]:
        """The live skips, the latest first."""
        with self._lock:
            return [_dict(r) for r in self._db.execute(
                "SELECT * FROM decisions WHERE undone_at IS NULL AND action = 'skip' ORDER BY id DESC")]

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
            open_ = db.execute("SELECT COUNT(*) FROM queries WHERE status = 'open'").fetchone()[0]
        return {"answered": answered, "skipped": skipped, "labels_changed": changed, "open": open_}

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


def _reopen(db: sqlite3.Connection, query_id: str, assignee: str | None) -> str:
    """Mark ``query_id`` undone and insert its copy as a new open query (inside the caller's transaction)."""
    db.execute("UPDATE queries SET status = 'undone' WHERE id = ?", (query_id,))
    old = db.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
    qid = uuid.uuid4().hex[:16]
    seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queries").fetchone()[0]
    db.execute("INSERT INTO queries (id, seq, suspicious, counter, label, prediction, probs, ranking, "
               "status, created, reopens, assignee) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
               (qid, seq, old["suspicious"], old["counter"], old["label"], old["prediction"], old["probs"],
                old["ranking"], now(), old["id"], old["assignee"] if assignee is None else assignee))
    return qid


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
