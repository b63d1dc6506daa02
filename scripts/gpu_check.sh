#!/usr/bin/env bash
# The GPU paths end to end (QLoRA, multi-GPU DDP/FSDP/ZeRO-3, vLLM) on a CUDA machine, one table out.
# Without CUDA it says so and exits 0. See scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" scripts/gpu_check.py "$@"
