"""Evaluation: generation, metrics, and side-by-side comparison of models on the same items."""

from tunesmith.evaluate.compare import (
    EvalResult,
    comparison_table,
    evaluate_model,
    plot_comparison,
    write_answers,
)
from tunesmith.evaluate.metrics import get_metric, metric_names, register_metric

__all__ = [
    "EvalResult",
    "comparison_table",
    "evaluate_model",
    "get_metric",
    "metric_names",
    "plot_comparison",
    "register_metric",
    "write_answers",
]
