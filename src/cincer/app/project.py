"""A project folder: the user's examples turned into model inputs plus what a person needs to see them.

Layout of ``DIR``::

    project.json   name, kind (image | tabular | text), class names, feature names, session settings
    data.npz       X (model inputs, pool order), y (labels as given), optional X_test/y_test (held-out),
                   raw (tabular values as given, for display), images (demo pixels), y_clean (demo only)
    texts.json     the texts of a text project
    images/        copies of the user's image files, named by example id (never served by path)
    cincer.sqlite  the session (see :mod:`cincer.app.store`)

Everything is written by :func:`init_project` (``cincer project init``) or :func:`create_demo`;
the server only reads it.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cleaning import CleaningConfig
from ..config import one_of, option
from ..errors import CincerError
from ..models import TrainConfig

PROJECT_FILE = "project.json"
STORE_FILE = "cincer.sqlite"
IMAGE_SIZE = 28


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

    def image_png(self, index: int) -> bytes:
        """The PNG of example ``index`` (by id only: the file name is derived, never taken from a request)."""
        if self.kind != "image":
            raise KeyError(index)
        if self.image_files:
            return (self.root / "images" / f"{index:06d}.png").read_bytes()
        assert self.pixels is not None  # an image project keeps its pixels when it has no image files
        return encode_png(self.pixels[index])


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
    except (OSError, ValueError) as err:
        raise CincerError(f"cannot read project {root}: {err}") from None
    texts = json.loads((root / "texts.json").read_text()) if (root / "texts.json").is_file() else None
    get = lambda key: data[key] if key in data.files else None
    y_test = get("y_test")
    return Project(root=root, name=meta["name"], kind=meta["kind"], class_names=meta["class_names"],
                   X=data["X"], y=data["y"].astype(np.int64), n_known=int(meta["n_known"]),
                   feature_names=meta.get("feature_names"), raw=get("raw"), texts=texts, pixels=get("pixels"),
                   X_test=get("X_test"), y_test=None if y_test is None else y_test.astype(np.int64),
                   y_clean=get("y_clean"), image_files=bool(meta.get("image_files", False)),
                   config=SessionConfig.from_dict(meta.get("config", {})))


def save_project(root: Path, *, name: str, kind: str, class_names: list[str], arrays: dict, n_known: int,
                 feature_names: list[str] | None = None, texts: list[str] | None = None,
                 image_files: bool = False, config: SessionConfig | None = None, source: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "data.npz", **{k: v for k, v in arrays.items() if v is not None})
    if texts is not None:
        (root / "texts.json").write_text(json.dumps(texts))
    meta = {"version": 1, "name": name, "kind": kind, "class_names": [str(c) for c in class_names],
            "feature_names": feature_names, "n_known": int(n_known), "image_files": image_files,
            "source": source, "config": (config or SessionConfig()).to_dict()}
    (root / PROJECT_FILE).write_text(json.dumps(meta, indent=2))
    return root


def create_demo(root: str | Path, *, dataset: str = "digits", noise: float = 0.2, seed: int = 0,
                n_known: int = 100, limit: int | None = None, config: SessionConfig | None = None) -> Path:
    """The built-in demo: a scikit-learn data set with ``noise`` of its labels flipped, shuffled into a stream."""
    from ..data import flip_labels, load_dataset

    root = Path(root)
    if (root / PROJECT_FILE).is_file():
        return root
    data = load_dataset(dataset, seed=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.y_train))[:limit]
    clean = data.y_train[order]
    noisy = flip_labels(clean, noise, data.n_classes, rng=rng)
    X = data.X_train[order].astype(np.float32)
    arrays = {"X": X, "y": noisy, "y_clean": clean, "X_test": data.X_test.astype(np.float32), "y_test": data.y_test}
    if data.image_shape is not None:
        kind, arrays["pixels"] = "image", X[:, 0]
    else:
        kind, arrays["raw"] = "tabular", X
    return save_project(root, name=f"demo: {dataset} with {noise:.0%} noisy labels", kind=kind,
                        class_names=data.class_names, arrays=arrays, n_known=min(n_known, len(order) // 2),
                        feature_names=data.feature_names, config=config, source=f"demo:{dataset}")


def init_project(root: str | Path, *, data: str | Path, labels: str | None, images: str | Path | None = None,
                 text: str | None = None, files: str | None = None, holdout: float = 0.0,
                 n_known: int | None = None, seed: int = 0, config: SessionConfig | None = None,
                 force: bool = False) -> Path:
    """``cincer project init``: read CSV/Parquet (tabular, text or image labels) or ``.npz`` (X, y)."""
    root, data = Path(root), Path(data)
    if (root / PROJECT_FILE).exists() and not force:
        raise CincerError(f"{root} already holds a project (use --force to overwrite it)")
    if not data.is_file():
        raise CincerError(f"--data {data}: no such file")
    if not 0.0 <= holdout < 0.9:
        raise CincerError(f"--holdout must be in [0, 0.9), got {holdout}")
    texts = feature_names = None
    image_files = False
    arrays: dict = {}
    if data.suffix == ".npz":
        X, y_raw = _read_npz(data)
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
            columns = ", ".join(map(str, frame.columns))
            raise CincerError(f"--labels: column {labels!r} not in {data.name} (columns: {columns})")
        frame = frame[frame[labels].notna()].reset_index(drop=True)
        y_raw = frame[labels].to_numpy()
        if images is not None:
            kind, image_files = "image", True
            X = _read_images(frame, Path(images), files, labels, root)
        elif text is not None:
            if text not in frame.columns:
                raise CincerError(f"--text: column {text!r} not in {data.name}")
            kind = "text"
            texts = frame[text].fillna("").astype(str).tolist()
            X = text_features(texts, seed=seed)
        else:
            kind = "tabular"
            X, feature_names, raw = _tabular(frame.drop(columns=[labels]))
            arrays["raw"] = raw
    if len(y_raw) < 10:
        raise CincerError(f"{data.name}: need at least 10 labelled examples, got {len(y_raw)}")
    classes = np.unique(y_raw.astype(str)) if y_raw.dtype.kind not in "iub" else np.unique(y_raw)
    if len(classes) < 2:
        raise CincerError(f"--labels: need at least two classes, found {len(classes)}")
    lookup = {str(c): i for i, c in enumerate(classes)}
    y = np.array([lookup[str(v)] for v in y_raw], dtype=np.int64)
    if kind == "tabular":
        mean, std = X.mean(axis=0), X.std(axis=0)
        X = ((X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    arrays.update(X=X, y=y)
    if holdout > 0:
        rng = np.random.default_rng(seed)
        test = np.zeros(len(y), dtype=bool)
        test[rng.choice(len(y), size=max(1, int(round(holdout * len(y)))), replace=False)] = True
        arrays["X_test"], arrays["y_test"] = X[test], y[test]
        for key in ("X", "y", "raw", "pixels"):
            if key in arrays:
                arrays[key] = arrays[key][~test]
        if texts is not None:
            texts = [t for t, held in zip(texts, test) if not held]
        if image_files:  # keep the copied images numbered by pool id
            _renumber_images(root, np.flatnonzero(~test))
    n_pool = len(arrays["y"])
    n_known = n_known if n_known is not None else min(100, max(10, n_pool // 5))
    if not 2 <= n_known < n_pool:
        raise CincerError(f"--known must be in [2, {n_pool}), got {n_known}")
    return save_project(root, name=data.stem, kind=kind, class_names=[str(c) for c in classes], arrays=arrays,
                        n_known=n_known, feature_names=feature_names, texts=texts, image_files=image_files,
                        config=config, source=str(data.resolve()))


def text_features(texts: list[str], *, seed: int = 0, dim: int = 64) -> np.ndarray:
    """TF-IDF then TruncatedSVD (LSA), standardised: a numeric input without the optional embedding model."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        tfidf = TfidfVectorizer(min_df=1, sublinear_tf=True).fit_transform(texts)
    except ValueError as err:
        raise CincerError(f"--text: cannot build features ({err})") from None
    k = max(1, min(dim, tfidf.shape[1] - 1, len(texts) - 1))
    Z = TruncatedSVD(n_components=k, random_state=seed).fit_transform(tfidf) if k < tfidf.shape[1] else tfidf.toarray()
    Z = (Z - Z.mean(axis=0)) / np.where(Z.std(axis=0) > 0, Z.std(axis=0), 1.0)
    return Z.astype(np.float32)


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
    import pandas as pd

    try:
        if path.suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except ImportError as err:
        raise CincerError(f"reading {path.name} needs an optional package: {err}") from None
    except Exception as err:  # pandas raises many types for malformed files
        raise CincerError(f"cannot read {path}: {err}") from None
    raise CincerError(f"--data {path.name}: unsupported format (use .csv, .tsv, .parquet or .npz)")


def _tabular(frame) -> tuple[np.ndarray, list[str], np.ndarray]:
    import pandas as pd

    numeric = frame.select_dtypes(include="number")
    categorical = [c for c in frame.columns if c not in numeric.columns]
    parts = [numeric.fillna(numeric.median())]
    if categorical:
        parts.append(pd.get_dummies(frame[categorical].astype(str), dtype=float))
    table = pd.concat(parts, axis=1)
    if table.shape[1] == 0:
        raise CincerError("the data has no feature columns besides the labels")
    values = table.to_numpy(dtype=np.float64)
    return values, [str(c) for c in table.columns], values.astype(np.float32)


def _read_images(frame, folder: Path, files: str | None, labels: str, root: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise CincerError(f"--images {folder}: no such folder")
    files = files or next((c for c in frame.columns if c != labels), None)
    if files is None or files not in frame.columns:
        raise CincerError(f"--files: column {files!r} not in the labels file")
    out = root / "images"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    folder_resolved = folder.resolve()
    X = np.zeros((len(frame), 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, name in enumerate(frame[files].astype(str)):
        path = (folder / name).resolve()
        if folder_resolved not in path.parents or not path.is_file():
            raise CincerError(f"image {name!r} (row {i}) is not a file inside {folder}")
        try:
            with Image.open(path) as img:
                img.load()
                shown = img.convert("RGB")
                shown.thumbnail((256, 256))
                shown.save(out / f"{i:06d}.png", format="PNG")
                gray = img.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE))
        except (UnidentifiedImageError, OSError) as err:
            raise CincerError(f"cannot read image {name!r}: {err}") from None
        X[i, 0] = np.asarray(gray, dtype=np.float32) / 255.0 - 0.5
    return X


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
