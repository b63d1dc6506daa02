"""OpenMP settings for a training process, made before torch loads: its OpenMP runtime reads them once.

A training step on a CPU is thousands of short operators, each a parallel region of torch's OpenMP
threads. Between regions the worker threads go to sleep by default, and waking them costs more
than many of those operators take. A training process has nothing else to run on its cores, so its
workers wait actively (`OMP_WAIT_POLICY=ACTIVE`); `bench/train_throughput.py` measures the effect.

A value the user set wins. A process that has already loaded torch is left as it is (too late to
change), and so is a serving process, where idle threads must leave the cores to the requests.
"""

from __future__ import annotations

import os
import sys

TRAINING_ENVIRONMENT = {"OMP_WAIT_POLICY": "ACTIVE"}


def prepare_training_process() -> dict[str, str]:
    """Set the training process's OpenMP settings where torch has not loaded yet and the user set
    none; returns the ones set."""
    if "torch" in sys.modules:
        return {}
    chosen = {name: value for name, value in TRAINING_ENVIRONMENT.items() if name not in os.environ}
    os.environ.update(chosen)
    return chosen
