"""Training: one module per objective; TRL trainers used as they are."""

from tunesmith.train.sft import DiskFullError, TrainConfigError, TrainResult, train_sft

__all__ = ["DiskFullError", "TrainConfigError", "TrainResult", "train_sft"]
