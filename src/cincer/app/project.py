"""A project folder: the user's examples turned into model inputs plus what a person needs to see them.

Layout of ``DIR``::

    project.json     name, kind (image | tabular | text), class names (in the order shown), hotkeys,
                     the key column, the shown columns of a table, session settings
    data.npz         X (model inputs, pool order), y (labels as given), optional X_test/y_test (held-out),
                     raw (a table's model features before standardising), shown_num / shown_cat /
                     shown_cat_missing (a table's values as given, for display), pixels (demo images),
                     y_clean (demo only)
    audit.json       with ``--from-audit``: the review queue, the issues of a ``cincer audit`` table in its
                     order (pool index, suggested class, suspicion, out-of-fold flag, counter-examples with
                     their scores)
    keys.json        each example's source key (the ``--id`` value, the image's file name, else the
                     0-based row number of the input file) and its row number, for the pool and the
                     held-out rows: what ``cincer export`` joins back to the user's file
    texts.json       the texts of a text project
    instructions.md  the annotators' instructions (Markdown), when given
    images/          copies of the user's image files, named by example id (never served by path)
    users.json       the annotators and their hashed tokens (``cincer project user``)
    serve.lock       held by the process serving the project (:mod:`cincer.app.lock`)
    cincer.sqlite    the session (see :mod:`cincer.app.store`)

A project is built in a hidden folder beside ``DIR`` and renamed into place at the end, so a failed
``init`` leaves nothing; ``init --force`` moves the old project aside (``DIR.old-<time>``) unless it
is being served. The server only reads the folder (the session writes the store).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..cleaning import CleaningConfig
from ..config import one_of, option
from ..errors import CincerError
from ..models import TrainConfig
from ..tables import read_images, read_table, text_features
from .lock import ProjectLock

PROJECT_FILE = "project.json"
STORE_FILE = "cincer.sqlite"
KEYS_FILE = "keys.json"
INSTRUCTIONS_FILE = "instructions.md"
AUDIT_FILE = "audit.json"
COMMAND_KEYS = ("a", "n", "s", "u", "?")  # accept, next-best, skip, undo, help: never a class's key
DIGIT_KEYS = "1234567890"  # free digits go to classes in this order (as on the keyboard)
LETTER_KEYS = "".join(c for c in "bcdefghijklmopqrtvwxyz" if c not in COMMAND_KEYS)


def _session_training() -> TrainConfig:
    return TrainConfig(epochs=30, lr=5e-3)


@dataclass
class SessionConfig(CleaningConfig):
    """How the cleaning session runs: fewer epochs than the paper (30, not 100) with a higher learning
    rate (5e-3, not 1e-3) so that a retrain takes a fraction of a second and the app stays interactive."""

    train: TrainConfig = option(default_factory=_session_training)
    mode: str = option("stream", "stream: examples in order, as CINCER; audit: most suspicious known examples first",
                       check=one_of("stream", "audit"))

    @classmethod
    def from_dict(cls, data: dict) -> SessionConfig:
        data = dict(data)
        flat = {k: data.pop(k) for k in ("epochs", "batch_size", "lr") if k in data}  # projects before 0.2
        if flat:
            data["train"] = {**_session_training().to_dict(), **data.get("train", {}), **flat}
        return super().from_dict(data)


@dataclass
class Project:
    """A loaded project folder (read-only for the server)."""

    root: Path
    name: str
    kind: str
    class_names: list[str]
    X: np.ndarray
    y: np.ndarray
    n_known: int
    feature_names: list[str] | None = None
    raw: np.ndarray | None = None
    texts: list[str] | None = None
    pixels: np.ndarray | None = None
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    y_clean: np.ndarray | None = None
    image_files: bool = False
    config: SessionConfig = field(default_factory=SessionConfig)
    keys: list | None = None  # source key of each pool example (None: a project made before keys)
    keys_test: list | None = None
    rows: list | None = None  # 0-based row of each pool example in the input file
    rows_test: list | None = None
    key_column: str | None = None  # what the keys are: the --id column, the file column, or None (row numbers)
    hotkey_config: dict[str, str] = field(default_factory=dict)
    instructions: str | None = None
    columns: list[dict] | None = None  # a table's columns as shown: [{"name", "kind": number|category}]
    feature_columns: list[int] | None = None  # the shown column each model feature comes from
    shown_num: np.ndarray | None = None
    shown_cat: np.ndarray | None = None
    shown_cat_missing: np.ndarray | None = None
    audit: list[dict] | None = None  # the review queue of a project made --from-audit (see AUDIT_FILE)

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_holdout(self) -> bool:
        return self.X_test is not None and len(self.X_test) > 0

    @property
    def store_path(self) -> Path:
        return self.root / STORE_FILE

    @property
    def hotkeys(self) -> list[str | None]:
        """The key of each class (see :func:`assign_hotkeys`)."""
        return assign_hotkeys(self.class_names, self.hotkey_config)

    def key(self, index: int) -> Any:
        """The source key of pool example ``index`` (its pool id in a project made before keys)."""
        return int(index) if self.keys is None else self.keys[index]

    def fingerprint(self) -> str:
        """A hash of the data a session is made for: a store made for other data is never reused."""
        h = hashlib.sha256()
        for array in (self.X, self.y):
            a = np.ascontiguousarray(array)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        h.update(json.dumps([self.class_names, self.keys]).encode())
        if self.audit is not None:  # another audit is another review queue
            h.update(json.dumps(self.audit).encode())
        return h.hexdigest()[:32]

    def image_png(self, index: int) -> bytes:
        """The PNG of example ``index`` (by id only: the file name is derived, never taken from a request)."""
        if self.kind != "image":
            raise KeyError(index)
        if self.image_files:
            return (self.root / "images" / f"{index:06d}.png").read_bytes()
        assert self.pixels is not None  # an image project keeps its pixels when it has no image files
        return encode_png(self.pixels[index])


def assign_hotkeys(class_names: list[str], configured: dict[str, str] | None = None) -> list[str | None]:
    """Each class's key: the one set in ``project.json`` (``"hotkeys": {"class": "key"}``); else a class
    whose name is one digit gets that digit; the others, in class order, get the free digits
    (1, 2, ..., 9, 0) then letters. ``a``, ``n``, ``s``, ``u`` and ``?`` are commands, never class keys."""
    configured = dict(configured or {})
    unknown = [c for c in configured if c not in class_names]
    if unknown:
        raise CincerError(f"hotkeys: no class named {unknown[0]!r} (classes: {', '.join(class_names)})")
    seen: dict[str, str] = {}
    for name, key in configured.items():
        if not isinstance(key, str) or len(key) != 1 or not key.isprintable() or key.isspace():
            raise CincerError(f"hotkeys: the key of class {name!r} must be one printable character, got {key!r}")
        if key.lower() in COMMAND_KEYS:
            raise CincerError(f"hotkeys: {key!r} is a command key ({', '.join(COMMAND_KEYS)}); "
                              f"choose another for class {name!r}")
        if key.lower() in seen:
            raise CincerError(f"hotkeys: {key!r} is given to both {seen[key.lower()]!r} and {name!r}")
        seen[key.lower()] = name
    keys: list[str | None] = [configured.get(name) for name in class_names]
    taken = {k.lower() for k in keys if k is not None}
    digit_names = {name for name in class_names if len(name) == 1 and name in "0123456789"}
    for i, name in enumerate(class_names):
        if keys[i] is None and name in digit_names and name not in taken:
            keys[i] = name
            taken.add(name)
    free = iter(k for k in DIGIT_KEYS + LETTER_KEYS if k not in taken and k not in digit_names)
    for i in range(len(keys)):
        if keys[i] is None:
            keys[i] = next(free, None)
    return keys


# ---------------------------------------------------------------------- loading
def load_project(root: str | Path) -> Project:
    root = Path(root)
    meta_path = root / PROJECT_FILE
    if not meta_path.is_file():
        raise CincerError(f"{root} is not a cincer project (no {PROJECT_FILE}); create one with "
                          f"`cincer project init {root} --data FILE --labels COLUMN`")
    try:
        meta = json.loads(meta_path.read_text())
        data = np.load(root / "data.npz", allow_pickle=False)
        keys = json.loads((root / KEYS_FILE).read_text()) if (root / KEYS_FILE).is_file() else {}
        texts = json.loads((root / "texts.json").read_text()) if (root / "texts.json").is_file() else None
        audit = json.loads((root / AUDIT_FILE).read_text())["issues"] if (root / AUDIT_FILE).is_file() else None
        instructions = (root / INSTRUCTIONS_FILE).read_text(encoding="utf-8") \
            if (root / INSTRUCTIONS_FILE).is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CincerError(f"cannot read project {root}: {err}") from None
    get = lambda key: data[key] if key in data.files else None
    y_test = get("y_test")
    hotkeys = meta.get("hotkeys") or {}
    if not isinstance(hotkeys, dict):
        raise CincerError(f"{meta_path}: hotkeys must be an object {{\"class name\": \"key\"}}")
    project = Project(
        root=root, name=meta["name"], kind=meta["kind"], class_names=meta["class_names"],
        X=data["X"], y=data["y"].astype(np.int64), n_known=int(meta["n_known"]),
        feature_names=meta.get("feature_names"), raw=get("raw"), texts=texts, pixels=get("pixels"),
        X_test=get("X_test"), y_test=None if y_test is None else y_test.astype(np.int64),
        y_clean=get("y_clean"), image_files=bool(meta.get("image_files", False)),
        config=SessionConfig.from_dict(meta.get("config", {})),
        keys=keys.get("pool"), keys_test=keys.get("holdout"), rows=keys.get("pool_rows"),
        rows_test=keys.get("holdout_rows"), key_column=meta.get("key_column"), hotkey_config=hotkeys,
        instructions=instructions, columns=meta.get("columns"), feature_columns=meta.get("feature_columns"),
        shown_num=get("shown_num"), shown_cat=get("shown_cat"), shown_cat_missing=get("shown_cat_missing"),
        audit=audit)
    project.hotkeys  # noqa: B018 - a bad hotkey set by hand in project.json is reported now
    if project.keys is not None and len(project.keys) != project.n:
        raise CincerError(f"{root / KEYS_FILE}: {len(project.keys)} keys for {project.n} examples")
    return project


def save_project(root: Path, *, name: str, kind: str, class_names: list[str], arrays: dict, n_known: int,
                 feature_names: list[str] | None = None, texts: list[str] | None = None,
                 image_files: bool = False, config: SessionConfig | None = None, source: str = "",
                 keys: dict | None = None, key_column: str | None = None, hotkeys: dict | None = None,
                 instructions: str | None = None, columns: list[dict] | None = None,
                 feature_columns: list[int] | None = None, audit: dict | None = None) -> Path:
    """Write a project's files into ``root`` (an empty folder: see :func:`_build`); project.json last."""
    root.mkdir(parents=True, exist_ok=True)
    if audit is not None:
        (root / AUDIT_FILE).write_text(json.dumps(audit))
    np.savez(root / "data.npz", **{k: v for k, v in arrays.items() if v is not None})
    if texts is not None:
        (root / "texts.json").write_text(json.dumps(texts))
    if keys is not None:
        (root / KEYS_FILE).write_text(json.dumps(keys))
    if instructions is not None:
        (root / INSTRUCTIONS_FILE).write_text(instructions, encoding="utf-8")
    assign_hotkeys([str(c) for c in class_names], hotkeys)  # refuse a bad --hotkeys before anything is kept
    meta = {"version": 2, "name": name, "kind": kind, "class_names": [str(c) for c in class_names],
            "hotkeys": dict(hotkeys or {}), "key_column": key_column,
            "feature_names": feature_names, "columns": columns, "feature_columns": feature_columns,
            "n_known": int(n_known), "image_files": image_files,
            "source": source, "config": (config or SessionConfig()).to_dict()}
    (root / PROJECT_FILE).write_text(json.dumps(meta, indent=2))
    return root


# ---------------------------------------------------------------------- building a folder, all or nothing
def check_target(root: Path, *, force: bool) -> None:
    """Refuse early (before reading any data) what :func:`_install` would refuse at the end."""
    if root.exists() and not root.is_dir():
        raise CincerError(f"{root} is a file, not a folder")
    if (root / PROJECT_FILE).exists():
        if not force:
            raise CincerError(f"{root} already holds a project (use --force to replace it; "
                              "the old one is moved aside)")
        holder = ProjectLock(root).holder()
        if holder is not None:
            pid = f"process {holder['pid']}" if "pid" in holder else "another process"
            raise CincerError(f"{root} is being served by {pid}; stop it before replacing the project")
    elif root.is_dir() and any(root.iterdir()):
        raise CincerError(f"{root} is neither a cincer project nor empty; choose a new or empty folder")


def _build(root: Path, build: Callable[[Path], Path], *, force: bool) -> tuple[Path, Path | None]:
    """Run ``build(tmp)`` in a hidden folder beside ``root``, then rename it to ``root``: on any error
    nothing is left (not even the parent folders made for it). Returns ``(root, old project moved aside)``."""
    check_target(root, force=force)
    made = [p for p in [root.parent, *root.parent.parents] if not p.exists()]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.init-", dir=root.parent))
    try:
        build(tmp)
        return root, _install(tmp, root, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in made:  # innermost first
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def _install(tmp: Path, root: Path, *, force: bool) -> Path | None:
    old = None
    if (root / PROJECT_FILE).exists():
        if not force:
            raise CincerError(f"{root} already holds a project (use --force to replace it)")
        lock = ProjectLock(root).acquire("init --force")  # refused while it is served
        try:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            old = root.with_name(f"{root.name}.old-{stamp}")
            n = 1
            while old.exists():
                n += 1
                old = root.with_name(f"{root.name}.old-{stamp}-{n}")
            root.rename(old)
        finally:
            lock.release()
    elif root.is_dir():
        try:
            root.rmdir()
        except OSError:
            raise CincerError(f"{root} is neither a cincer project nor empty; choose a new or empty folder") from None
    try:
        tmp.rename(root)
    except OSError as err:
        if old is not None:
            old.rename(root)  # put the old project back: nothing half-replaced
        raise CincerError(f"cannot move the new project into {root}: {err}") from None
    return old


def create_demo(root: str | Path, *, dataset: str = "digits", noise: float = 0.2, seed: int = 0,
                n_known: int = 100, limit: int | None = None, config: SessionConfig | None = None) -> Path:
    """The built-in demo: a scikit-learn data set with ``noise`` of its labels flipped, shuffled into a stream."""
    root = Path(root)
    if (root / PROJECT_FILE).is_file():
        return root

    def build(tmp: Path) -> Path:
        from ..data import flip_labels, load_dataset

        data = load_dataset(dataset, seed=seed)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(data.y_train))[:limit]
        clean = data.y_train[order]
        noisy = flip_labels(clean, noise, data.n_classes, rng=rng)
        X = data.X_train[order].astype(np.float32)
        arrays = {"X": X, "y": noisy, "y_clean": clean, "X_test": data.X_test.astype(np.float32),
                  "y_test": data.y_test}
        if data.image_shape is not None:
            kind, arrays["pixels"] = "image", X[:, 0]
        else:
            kind, arrays["raw"] = "tabular", X
        n, m = len(order), len(data.y_test)
        keys = {"pool": [f"train-{i}" for i in order.tolist()], "holdout": [f"test-{i}" for i in range(m)],
                "pool_rows": list(range(n)), "holdout_rows": list(range(n, n + m))}
        return save_project(tmp, name=f"demo: {dataset} with {noise:.0%} noisy labels", kind=kind,
                            class_names=data.class_names, arrays=arrays, n_known=min(n_known, len(order) // 2),
                            feature_names=data.feature_names, config=config, source=f"demo:{dataset}",
                            keys=keys, key_column="demo")

    return _build(root, build, force=False)[0]


def init_project(root: str | Path, *, data: str | Path, labels: str | None, images: str | Path | None = None,
                 text: str | None = None, files: str | None = None, holdout: float = 0.0,
                 n_known: int | None = None, seed: int = 0, config: SessionConfig | None = None,
                 force: bool = False, id_column: str | None = None, classes: list[str] | None = None,
                 hotkeys: dict[str, str] | None = None, instructions: str | Path | None = None,
                 from_audit: str | Path | None = None) -> Path:
    """``cincer project init``: read CSV/Parquet (tabular, text or image labels) or ``.npz`` (X, y);
    ``from_audit``: a ``cincer audit`` table of the same data, whose issues become the review queue."""
    return build_project(root, data=data, labels=labels, images=images, text=text, files=files,
                               holdout=holdout, n_known=n_known, seed=seed, config=config, force=force,
                               id_column=id_column, classes=classes, hotkeys=hotkeys,
                               instructions=instructions, from_audit=from_audit)[0]


def build_project(root: str | Path, *, data: str | Path, labels: str | None,
                        images: str | Path | None = None, text: str | None = None, files: str | None = None,
                        holdout: float = 0.0, n_known: int | None = None, seed: int = 0,
                        config: SessionConfig | None = None, force: bool = False, id_column: str | None = None,
                        classes: list[str] | None = None, hotkeys: dict[str, str] | None = None,
                        instructions: str | Path | None = None,
                        from_audit: str | Path | None = None) -> tuple[Path, Path | None]:
    """:func:`init_project`, also returning where an old project was moved (``--force``), if anywhere."""
    root, data = Path(root), Path(data)
    check_target(root, force=force)
    if not data.is_file() and not data.is_dir():
        raise CincerError(f"--data {data}: no such file")
    audit = None
    if from_audit is not None:
        if data.suffix == ".npz":
            raise CincerError("--from-audit needs the audited table as --data (CSV/TSV/Parquet), not .npz")
        if holdout > 0:
            raise CincerError("--from-audit reviews the audit's rows: a --holdout would hold some of them out")
        audit = read_audit(from_audit)
        config = dataclasses.replace(config or SessionConfig(), mode="audit")
    if not 0.0 <= holdout < 0.9:
        raise CincerError(f"--holdout must be in [0, 0.9), got {holdout}")
    guide = None
    if instructions is not None:
        try:
            guide = Path(instructions).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CincerError(f"--instructions {instructions}: cannot read it ({err})") from None
    if data.suffix == ".npz" and id_column is not None:
        raise CincerError("--id needs a CSV or Parquet file (an .npz project is keyed by row number)")

    def build(tmp: Path) -> Path:
        return _build_project(tmp, data=data, labels=labels, images=images, text=text, files=files,
                              holdout=holdout, n_known=n_known, seed=seed, config=config, id_column=id_column,
                              classes=classes, hotkeys=hotkeys, instructions=guide, audit=audit)

    return _build(root, build, force=force)


def _build_project(root: Path, *, data: Path, labels: str | None, images: str | Path | None, text: str | None,
                   files: str | None, holdout: float, n_known: int | None, seed: int,
                   config: SessionConfig | None, id_column: str | None, classes: list[str] | None,
                   hotkeys: dict[str, str] | None, instructions: str | None, audit: AuditTable | None = None) -> Path:
    texts = feature_names = columns = feature_columns = None
    image_files = False
    key_column = None
    arrays: dict = {}
    if data.suffix == ".npz":
        X, y_raw = _read_npz(data)
        rows = np.arange(len(y_raw))
        keys: list = rows.tolist()
        kind = "image" if X.ndim >= 3 else "tabular"
        if kind == "image":
            X = X[:, None] if X.ndim == 3 else X
            lo, hi = float(X.min()), float(X.max())
            X = ((X - lo) / (hi - lo or 1.0) - 0.5).astype(np.float32)
            arrays["pixels"] = X.mean(axis=1) if X.shape[1] != 1 else X[:, 0]
        else:
            X = X.reshape(len(X), -1)
            feature_names = [f"x{i}" for i in range(X.shape[1])]
    else:
        frame = _read_table(data)
        if labels is None or labels not in frame.columns:
            columns_list = ", ".join(map(str, frame.columns))
            raise CincerError(f"--labels: column {labels!r} not in {data.name} (columns: {columns_list})")
        rows = np.arange(len(frame))  # the 0-based row number in the input file, before anything is dropped
        if id_column is not None:
            if id_column not in frame.columns:
                raise CincerError(f"--id: column {id_column!r} not in {data.name}")
            if id_column == labels:
                raise CincerError("--id and --labels name the same column")
            ids = frame[id_column]
            if ids.isna().any():
                raise CincerError(f"--id: column {id_column!r} has a missing value in row {int(np.argmax(ids.isna()))}")
            if ids.duplicated().any():
                raise CincerError(f"--id: column {id_column!r} repeats the key {ids[ids.duplicated()].iloc[0]!r}")
            keys, key_column = [_plain(v) for v in ids], id_column
        else:
            keys = rows.tolist()
        labelled = frame[labels].notna().to_numpy()
        frame = frame[labelled].reset_index(drop=True)
        rows, keys = rows[labelled], [k for k, keep in zip(keys, labelled) if keep]
        y_raw = frame[labels].to_numpy()
        if images is not None:
            kind, image_files = "image", True
            files = files or next((c for c in frame.columns if c not in (labels, id_column)), None)
            if files is None or files not in frame.columns:
                raise CincerError(f"--files: column {files!r} not in the labels file")
            X = read_images(frame, Path(images), files, copies=root / "images")
            if id_column is None:  # an image folder is keyed by file name
                names = frame[files].astype(str)
                if names.duplicated().any():
                    raise CincerError(f"--files: the file {names[names.duplicated()].iloc[0]!r} is listed twice; "
                                      "give a unique key column with --id")
                keys, key_column = names.tolist(), files
        elif text is not None:
            if text not in frame.columns:
                raise CincerError(f"--text: column {text!r} not in {data.name}")
            kind = "text"
            texts = frame[text].fillna("").astype(str).tolist()
            X = text_features(texts, seed=seed)
        else:
            kind = "tabular"
            drop = [labels] + ([id_column] if id_column is not None else [])
            table = _tabular(frame.drop(columns=drop))
            X, feature_names, arrays["raw"] = table.X, table.feature_names, table.X.astype(np.float32)
            columns, feature_columns = table.columns, table.feature_columns
            arrays.update(shown_num=table.shown_num, shown_cat=table.shown_cat,
                          shown_cat_missing=table.shown_cat_missing)
    if len(y_raw) < 10:
        raise CincerError(f"{data.name}: need at least 10 labelled examples, got {len(y_raw)}")
    values, class_names = _classes(y_raw, classes)
    lookup = {c: i for i, c in enumerate(class_names)}
    y = np.array([lookup[v] for v in values], dtype=np.int64)
    if kind == "tabular":
        mean, std = X.mean(axis=0), X.std(axis=0)
        X = ((X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    arrays.update(X=X, y=y)
    test = np.zeros(len(y), dtype=bool)
    if holdout > 0:
        rng = np.random.default_rng(seed)
        test[rng.choice(len(y), size=max(1, int(round(holdout * len(y)))), replace=False)] = True
        arrays["X_test"], arrays["y_test"] = X[test], y[test]
        for key in ("X", "y", "raw", "pixels", "shown_num", "shown_cat", "shown_cat_missing"):
            if key in arrays:
                arrays[key] = arrays[key][~test]
        if texts is not None:
            texts = [t for t, held in zip(texts, test) if not held]
        if image_files:  # keep the copied images numbered by pool id
            _renumber_images(root, np.flatnonzero(~test))
    key_file = {"pool": [k for k, held in zip(keys, test) if not held],
                "holdout": [k for k, held in zip(keys, test) if held],
                "pool_rows": rows[~test].tolist(), "holdout_rows": rows[test].tolist()}
    n_pool = len(arrays["y"])
    n_known = n_known if n_known is not None else min(100, max(10, n_pool // 5))
    if not 2 <= n_known < n_pool:
        raise CincerError(f"--known must be in [2, {n_pool}), got {n_known}")
    return save_project(root, name=data.stem, kind=kind, class_names=class_names, arrays=arrays,
                        n_known=n_known, feature_names=feature_names, texts=texts, image_files=image_files,
                        config=config, source=str(data.resolve()), keys=key_file, key_column=key_column,
                        hotkeys=hotkeys, instructions=instructions, columns=columns,
                        feature_columns=feature_columns,
                        audit=None if audit is None else audit.queue(key_file, key_column, id_column, arrays["y"],
                                                                     class_names))


def _plain(value: Any) -> Any:
    """A key as JSON keeps it: Python int/float/str (numpy scalars unwrapped, anything else as text)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, (int, float, str)) else str(value)


def _classes(y_raw: np.ndarray, order: list[str] | None) -> tuple[list[str], list[str]]:
    """``(each label as text, the class names in order)``. The order is ``order`` (``--classes``) when
    given; else integer labels ascending and any other labels in order of first appearance. Integral
    floats (a label column with a gap is read as floats) are integers."""
    y_raw = np.asarray(y_raw)
    if y_raw.dtype.kind == "f" and np.isfinite(y_raw).all() and (y_raw == np.round(y_raw)).all():
        y_raw = y_raw.astype(np.int64)
    elif y_raw.dtype.kind == "O":
        plain = [_plain(v) for v in y_raw]
        if all(isinstance(v, int) for v in plain):
            y_raw = np.array(plain, dtype=np.int64)
    values = [str(_plain(v)) for v in y_raw]
    if order is not None:
        order = [str(c).strip() for c in order]
        if len(set(order)) != len(order) or "" in order:
            raise CincerError(f"--classes: each class once, none empty (got {', '.join(order)})")
        missing = [v for v in dict.fromkeys(values) if v not in order]
        if missing:
            raise CincerError(f"--classes: the data has label(s) {', '.join(map(repr, missing[:5]))} "
                              f"not in {', '.join(order)}")
        names = order
    elif y_raw.dtype.kind in "iu":
        names = [str(v) for v in sorted({int(v) for v in y_raw})]
    else:
        names = list(dict.fromkeys(values))
    if len(set(values)) < 2:
        raise CincerError(f"--labels: need at least two classes, found {len(set(values))}")
    return values, names


@dataclass
class AuditTable:
    """A ``cincer audit`` table (and the options of its ``.json``, when beside it)."""

    path: Path
    frame: Any
    k: int
    id_column: str | None  # the --id of the audit, when its .json says; else unknown (None, known_id False)
    known_id: bool

    def queue(self, key_file: dict, key_column: str | None, id_column: str | None, y: np.ndarray,
              class_names: list[str]) -> dict:
        """The issues as pool indices, in the audit's order: what :data:`AUDIT_FILE` holds. The audit's keys
        are matched to the project's: its ``--id`` values, else the input's row numbers."""
        name = self.path.name
        if self.known_id and self.id_column != id_column:
            said = "row numbers" if self.id_column is None else f"--id {self.id_column}"
            raise CincerError(f"--from-audit {name} is keyed by {said}: give the project the same "
                              + ("--id" if self.id_column is None else f"--id {self.id_column}")
                              + (" (none)" if self.id_column is None else ""))
        by_id = id_column is not None
        pool_keys = key_file["pool"] if by_id else key_file["pool_rows"]
        lookup = {_key_text(k): i for i, k in enumerate(pool_keys)}
        classes = {c: i for i, c in enumerate(class_names)}

        def index(key: Any, what: str) -> int:
            found = lookup.get(_key_text(key))
            if found is None:
                raise CincerError(f"--from-audit {name}: {what} {_plain(key)!r} is not a "
                                  + ("key" if by_id else "row number") + " of the labelled rows of --data "
                                  "(audit the same table, with the same --id)")
            return found

        issues = []
        for row in self.frame.itertuples(index=False):
            values = row._asdict()
            i = index(values["key"], "key")
            given, suggested = str(_plain(values["given_label"])), str(_plain(values["suggested_label"]))
            if class_names[int(y[i])] != given:
                raise CincerError(f"--from-audit {name}: key {_plain(values['key'])!r} is labelled {given!r} in the "
                                  f"audit but {class_names[int(y[i])]!r} in --data (an audit of other labels?)")
            if suggested not in classes:
                raise CincerError(f"--from-audit {name}: suggested label {suggested!r} is not a class of --data")
            counter = []
            for j in range(1, self.k + 1):
                key, score = values[f"counterexample_{j}_key"], values[f"counterexample_{j}_score"]
                if _missing(key):
                    break
                counter.append([index(key, "counter-example key"), float(score)])
            issues.append({"index": i, "suggested": classes[suggested], "suspicion": float(values["suspicion"]),
                           "out_of_fold": bool(values["out_of_fold"]), "counterexamples": counter})
        return {"source": str(self.path.resolve()), "id": id_column, "issues": issues}


def read_audit(path: str | Path) -> AuditTable:
    """A table written by ``cincer audit`` (CSV/TSV/Parquet), checked against the shared schema."""
    path = Path(path)
    try:
        frame = read_table(path)
    except CincerError as err:
        raise CincerError(f"--from-audit {err}") from None
    required = ["key", "given_label", "suggested_label", "suspicion", "out_of_fold"]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CincerError(f"--from-audit {path.name}: not a `cincer audit` table (no column {missing[0]!r})")
    k = 0
    while {f"counterexample_{k + 1}_{part}" for part in ("key", "label", "score")} <= set(frame.columns):
        k += 1
    frame = frame.rename(columns=lambda c: str(c))
    if frame["key"].isna().any() or frame["key"].map(_key_text).duplicated().any():
        raise CincerError(f"--from-audit {path.name}: keys must be present and unique")
    if not len(frame):
        raise CincerError(f"--from-audit {path.name}: the audit found no issues: nothing to review")
    meta, known_id, id_column = path.with_name(path.name + ".json"), False, None
    if meta.is_file():
        try:
            options = json.loads(meta.read_text())["options"]
            id_column, known_id = options.get("id"), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not the audit's configuration: match keys to --id as given
    return AuditTable(path, frame, k, id_column, known_id)


def _key_text(key: Any) -> str:
    """A key as text, so that 7, 7.0, np.int64(7) and "7" (CSV and Parquet readings) match."""
    return str(_plain(key))


def _missing(value: Any) -> bool:
    try:
        return value is None or bool(value != value) or type(value).__name__ == "NAType"
    except (TypeError, ValueError):
        return False


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f.files or "y" not in f.files:
                raise CincerError(f"{path.name}: an .npz project needs arrays X and y (found {', '.join(f.files)})")
            X, y = f["X"].astype(np.float32), f["y"]
    except (OSError, ValueError) as err:
        raise CincerError(f"cannot read {path}: {err}") from None
    if len(X) != len(y) or y.ndim != 1:
        raise CincerError(f"{path.name}: X has {len(X)} rows but y has shape {y.shape}")
    if not np.isfinite(X).all():
        raise CincerError(f"{path.name}: X holds NaN or infinite values")
    return X, y


def _read_table(path: Path):
    try:
        return read_table(path)
    except CincerError as err:
        raise CincerError(f"--data {err}") from None


@dataclass
class _Table:
    X: np.ndarray  # model features: numeric columns (missing: the median) and categorical ones one-hot
    feature_names: list[str]
    feature_columns: list[int]  # the column each feature comes from
    columns: list[dict]  # the columns as shown: name and kind
    shown_num: np.ndarray  # (n, numeric columns) float64, NaN where missing
    shown_cat: np.ndarray  # (n, categorical columns) text
    shown_cat_missing: np.ndarray  # (n, categorical columns) bool


def _tabular(frame) -> _Table:
    import pandas as pd

    numeric = frame.select_dtypes(include="number")
    categorical = [c for c in frame.columns if c not in numeric.columns]
    if not len(frame.columns):
        raise CincerError("the data has no feature columns besides the labels")
    position = {c: i for i, c in enumerate(frame.columns)}
    parts, names, sources = [numeric.fillna(numeric.median()).fillna(0.0)], [str(c) for c in numeric.columns], \
        [position[c] for c in numeric.columns]
    if categorical:
        cat = frame[categorical].astype(str).where(frame[categorical].notna(), "(missing)")
        for c in categorical:
            dummies = pd.get_dummies(cat[c], dtype=float)
            parts.append(dummies)
            names += [f"{c}={v}" for v in dummies.columns]
            sources += [position[c]] * dummies.shape[1]
    values = pd.concat(parts, axis=1).to_numpy(dtype=np.float64)
    n = len(frame)
    return _Table(
        X=values, feature_names=names, feature_columns=sources,
        columns=[{"name": str(c), "kind": "category" if c in categorical else "number"} for c in frame.columns],
        shown_num=numeric.astype("float64").to_numpy().reshape(n, -1),
        shown_cat=np.array([[str(v) for v in row] for row in frame[categorical].to_numpy(dtype=object)],
                           dtype=str).reshape(n, -1) if categorical else np.zeros((n, 0), dtype=str),
        shown_cat_missing=frame[categorical].isna().to_numpy().reshape(n, -1) if categorical
        else np.zeros((n, 0), dtype=bool))


def _renumber_images(root: Path, keep: np.ndarray) -> None:
    folder = root / "images"
    for new, old in enumerate(keep):
        if new != old:
            (folder / f"{old:06d}.png").rename(folder / f"{new:06d}.png")
    for extra in sorted(folder.glob("*.png"))[len(keep):]:
        extra.unlink()


def encode_png(pixels: np.ndarray) -> bytes:
    """A grayscale PNG of a 2-D array in [-0.5, 0.5] (dark ink on white, like the digits), no dependencies."""
    a = np.clip((0.5 - np.asarray(pixels, dtype=np.float64)) * 255.0, 0, 255).astype(np.uint8)
    height, width = a.shape
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(height))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    buf = io.BytesIO()
    buf.write(b"\x89PNG\r\n\x1a\n")
    buf.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
    buf.write(chunk(b"IDAT", zlib.compress(raw, 9)))
    buf.write(chunk(b"IEND", b""))
    return buf.getvalue()
