"""Data sets shipped with scikit-learn, and a synthetic 2-D set; no download needed."""

from __future__ import annotations

import numpy as np
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MinMaxScaler

from .base import Dataset
from .registry import DATASETS


def tabular(name, X, y, class_names, feature_names, *, seed, test_size=0.2) -> Dataset:
    """Stratified split, then min-max scaling fitted on the training part (the paper's preprocessing)."""
    X_tr, X_te, y_tr, y_te = train_test_split(
        np.asarray(X, dtype=np.float64), y, test_size=test_size, random_state=seed, stratify=y
    )
    scaler = MinMaxScaler().fit(X_tr)
    return Dataset(
        name, scaler.transform(X_tr), y_tr, scaler.transform(X_te), y_te,
        class_names=[str(c) for c in class_names], feature_names=[str(f) for f in feature_names],
    )


def from_bunch(name: str, bunch, *, seed: int) -> Dataset:
    return tabular(name, bunch.data, bunch.target, bunch.target_names, bunch.feature_names, seed=seed)


@DATASETS.register("breast")
def load_breast(*, seed: int = 0) -> Dataset:
    """Wisconsin breast cancer (569 examples, 30 features, 2 classes)."""
    return from_bunch("breast", skd.load_breast_cancer(), seed=seed)


@DATASETS.register("wine")
def load_wine(*, seed: int = 0) -> Dataset:
    return from_bunch("wine", skd.load_wine(), seed=seed)


@DATASETS.register("iris")
def load_iris(*, seed: int = 0) -> Dataset:
    return from_bunch("iris", skd.load_iris(), seed=seed)


@DATASETS.register("digits")
def load_digits(*, seed: int = 0) -> Dataset:
    """8x8 handwritten digits, as images scaled to [-0.5, 0.5] like the paper's MNIST."""
    bunch = skd.load_digits()
    X = bunch.images[:, None, :, :] / 16.0 - 0.5
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, bunch.target, test_size=0.2, random_state=seed, stratify=bunch.target
    )
    return Dataset("digits", X_tr, y_tr, X_te, y_te, class_names=[str(c) for c in range(10)],
                   image_shape=(1, 8, 8))


@DATASETS.register("synthetic")
def load_synthetic(*, seed: int = 0, n: int = 1000) -> Dataset:
    """Four Gaussian blobs in 2-D: small, fast, easy to plot."""
    centers = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    X, y = skd.make_blobs(n_samples=n, centers=centers, cluster_std=0.45, random_state=seed)
    return tabular("synthetic", X, y, ["A", "B", "C", "D"], ["x1", "x2"], seed=seed)
