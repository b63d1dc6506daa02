"""Evaluation: generation, task metrics, comparison with intervals and paired tests, gates, reports."""

from tunesmith.evaluate.comparison import (
    EvalResult,
    comparison_table,
    evaluate_model,
    plot_comparison,
    write_answers,
)
from tunesmith.evaluate.metrics import (
    DEFAULT_METRICS,
    Context,
    Metric,
    get_metric,
    metric_names,
    register_corpus_metric,
    register_metric,
)
from tunesmith.evaluate.stats import Interval, PairedTest, bootstrap_interval, paired_test

__all__ = [
    "DEFAULT_METRICS",
    "Context",
    "EvalResult",
    "Interval",
    "Metric",
    "PairedTest",
    "bootstrap_interval",
    "comparison_table",
    "evaluate_model",
    "get_metric",
    "metric_names",
    "paired_test",
    "plot_comparison",
    "register_corpus_metric",
    "register_metric",
    "write_answers",
]
