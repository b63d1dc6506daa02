"""Training: one module per objective; TRL trainers used as they are."""

from tunesmith.train.sft import TrainConfigError, TrainResult, train_sft

__all__ = ["TrainConfigError", "TrainResult", "train_sft"]
