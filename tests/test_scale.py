"""The product paths at scale: the Kronecker-factored curvature stays close to the exact one, and the
scale benchmark runs end to end (at a small size here; the figures are in docs/PERFORMANCE.md)."""

import numpy as np
import pytest
import torch
from torch import nn

from cincer import Cleaner, flip_labels, load_dataset
from cincer.experiments.scale import ScaleConfig, curvature_agreement, section_scale
from cincer.models import TrainConfig


def test_kronecker_curvature_ranks_close_to_the_exact_fisher():
    """A floor under the agreement measured on digits (EK-FAC: Spearman 0.78, top-5 overlap 0.58)."""
    data = load_dataset("digits")
    noisy = flip_labels(data.y_train, 0.2, 10, rng=np.random.default_rng(0))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
    cleaner = Cleaner(net, train_config=TrainConfig(epochs=30, lr=1e-2), retrain="defer").fit(data.X_train, noisy)
    agreement = curvature_agreement(cleaner, queries=20)
    for curvature in ("ekfac", "kfac"):
        assert agreement[curvature]["queries"] == 20
        assert agreement[curvature]["spearman_mean"] >= 0.6 and agreement[curvature]["top5_overlap"] >= 0.4


@pytest.mark.slow
def test_the_scale_section_runs_at_a_small_size():
    rows = section_scale(ScaleConfig.quick())
    assert [r["case"].split()[0] for r in rows] == ["mnist", "fashion_mnist", "mnist", "counterexamples", "mnist"]
    for r in rows:
        assert r["first_s"] > 0 and r["targets"]
    assert all(r["later_median_s"] > 0 and r["fisher"] in ("dense", "gram", "ekfac") for r in rows[:3])
