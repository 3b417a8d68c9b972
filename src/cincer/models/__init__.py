"""The paper's networks and their training."""

from .nets import MODELS, Classifier, build_model
from .train import TrainConfig, predict_proba, train

__all__ = ["MODELS", "Classifier", "TrainConfig", "build_model", "predict_proba", "train"]
