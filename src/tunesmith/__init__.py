"""tunesmith: fine-tune an open LLM on your data, prove it got better, ship it, watch it, improve it.

The Python API mirrors the CLI verbs::

    import tunesmith
    config = tunesmith.load_config("tunesmith.yaml", ["train.lr=1e-4"])
    outcome = tunesmith.train(config)
    report = tunesmith.run_eval(config, outcome.version.name)
"""

import logging
from importlib import metadata

from tunesmith.config import ConfigError, ProjectConfig, load_config
from tunesmith.data import prepare_data
from tunesmith.evaluate.runner import run_eval
from tunesmith.models import list_models, load_causal_lm, model_info
from tunesmith.pipeline import quickstart
from tunesmith.train.run import train
from tunesmith.workspace import init_project, open_workspace

__version__ = metadata.version("tunesmith")


class _NoAcceleratorGuess(logging.Filter):
    """DeepSpeed, where it is installed, says on stdout that it found no GPU and uses its CPU
    accelerator each time it is imported, and accelerate imports it to unwrap every model it saves
    or trains: a line in the middle of output meant for a pipe. torch finds no GPU there either, and
    tunesmith says which device it trains on, so the line is dropped; DeepSpeed's other messages stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


logging.getLogger("DeepSpeed").addFilter(_NoAcceleratorGuess())

__all__ = [
    "ConfigError",
    "ProjectConfig",
    "__version__",
    "init_project",
    "list_models",
    "load_causal_lm",
    "load_config",
    "model_info",
    "open_workspace",
    "prepare_data",
    "quickstart",
    "run_eval",
    "train",
]
