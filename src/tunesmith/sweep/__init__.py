"""Hyperparameter sweeps (Optuna: grid, random, TPE; pruning; budgets) and learning curves."""

from tunesmith.sweep.curve import LearningCurve, learning_curve
from tunesmith.sweep.search import SweepError, SweepResult, open_study, run_sweep

__all__ = ["LearningCurve", "SweepError", "SweepResult", "learning_curve", "open_study", "run_sweep"]
