"""Evaluation metrics recorded every round."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    weight = np.bincount(bins, minlength=n_bins) / len(y)
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    count = np.maximum(np.bincount(bins, minlength=n_bins), 1)
    return float(np.sum(weight * np.abs(acc / count - conf / count)))


def test_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Weighted precision, recall and F1, accuracy and ECE of predictions ``probs`` against ``y``."""
    pred = probs.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, average="weighted", zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "accuracy": float(np.mean(pred == y)), "ece": expected_calibration_error(probs, y)}


def precision_at_k(ranked: np.ndarray, is_noisy: np.ndarray, k: int) -> float:
    """Fraction of the top-k ranked candidates whose label is wrong (NaN for an empty ranking)."""
    top = np.asarray(ranked)[:k]
    return float(np.mean(is_noisy[top])) if len(top) else float("nan")
