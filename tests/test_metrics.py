"""The per-round metrics against values worked out by hand."""

import numpy as np
import pytest

from cincer import metrics
from cincer.metrics import expected_calibration_error, precision_at_k


def test_ece_of_a_calibrated_and_of_an_overconfident_model():
    # 10 predictions at confidence 0.8, 8 of them right: calibrated, ECE 0
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0)
    # same confidence, only 5 right: |0.5 - 0.8| = 0.3
    assert expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.3)


def test_ece_weighs_each_bin_by_its_share_of_examples():
    # bin of 0.95 (4 examples, all right: gap 0.05) and bin of 0.55 (6 examples, 3 right: gap 0.05)
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 6)
    y = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.4 * 0.05 + 0.6 * 0.05)
    # a confidence of exactly 1 falls in the last bin, not past it
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(1.0)


def test_precision_at_k_counts_wrong_labels_among_the_top_k():
    is_noisy = np.array([False, True, False, True, True])
    assert precision_at_k(np.array([1, 3, 0, 2]), is_noisy, 2) == 1.0
    assert precision_at_k(np.array([0, 1, 3, 2]), is_noisy, 4) == 0.5
    assert precision_at_k(np.array([2, 4]), is_noisy, 25) == 0.5  # fewer than k candidates: over those ranked
    assert np.isnan(precision_at_k(np.array([], dtype=int), is_noisy, 5))


def test_weighted_f1_and_accuracy():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = metrics.test_metrics(probs, np.array([0, 1, 1, 1]))
    assert m["accuracy"] == 0.75
    # class 0: P 1/2, R 1, F1 2/3 (support 1); class 1: P 1, R 2/3, F1 0.8 (support 3)
    assert m["f1"] == pytest.approx((2 / 3 + 3 * 0.8) / 4)
