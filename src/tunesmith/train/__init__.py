"""Training: one table of objectives (`objectives`), one loop that trains any of them (`run`), and a
module per objective family with its TRL trainer and hooks (sft, classify, preference, rl)."""

from tunesmith.train.sft import DiskFullError, TrainConfigError, TrainResult

__all__ = ["DiskFullError", "TrainConfigError", "TrainResult"]
