"""Guides, ELBOs, training and prediction."""

from .optim import TorchOptimizer
from .predictive import Prediction, predict
from .train_config import TrainConfig
from .trainer import TrainResult, fit

__all__ = ["Prediction", "TorchOptimizer", "TrainConfig", "TrainResult", "fit", "predict"]
