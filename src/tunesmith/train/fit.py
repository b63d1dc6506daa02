"""Will it fit? Memory for weights, gradients, optimizer state and activations, before anything trains.

Parameter counts are exact: the model is built on the meta device (no memory, no weights) and the
method is applied to it. Activations follow the usual transformer estimate (Korthikanti et al.,
2022: about s·b·h·(34 + 5·a·s/h) bytes per layer at 16 bits, halved per element for 8-bit
parts, doubled for fp32) plus the logits over the vocabulary, which dominate for small models
with large vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.config import ProjectConfig, native_bf16

GIB = 2**30
HEADROOM = 0.9  # leave a tenth of the memory to the rest of the system
# activation_checkpointing: auto keeps every activation when the estimate without checkpointing
# takes at most this share of the free memory (the estimate is deliberately on the high side)
AUTO_CHECKPOINTING_SHARE = 0.5


class DoesNotFitError(MemoryError):
    """A configuration whose estimated peak memory exceeds what this machine has."""


@dataclass
class FitEstimate:
    """Estimated peak training memory, broken down, against what the device has."""

    device: str
    available_bytes: int
    total_parameters: int
    trainable_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    batch_size: int
    accumulation: int
    sequence_length: int

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= HEADROOM * self.available_bytes

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("parameters", f"{self.total_parameters:,} ({self.trainable_parameters:,} trainable)"),
            ("weights", _gib(self.weights_bytes)),
            ("gradients", _gib(self.gradients_bytes)),
            ("optimizer state (AdamW)", _gib(self.optimizer_bytes)),
            (
                f"activations (batch {self.batch_size} x {self.sequence_length} tokens)",
                _gib(self.activations_bytes),
            ),
            ("estimated peak", _gib(self.peak_bytes)),
            (f"available on {self.device}", _gib(self.available_bytes)),
            (
                "batch",
                f"{self.batch_size} per step x {self.accumulation} accumulation = "
                f"{self.batch_size * self.accumulation} per optimizer step",
            ),
        ]

    def refusal(self) -> str:
        return (
            f"estimated peak memory {_gib(self.peak_bytes)} exceeds {HEADROOM:.0%} of the "
            f"{_gib(self.available_bytes)} available on {self.device}. Lower train.batch_size (and raise "
            "train.effective_batch_size to keep the step size), lower train.max_length, set "
            "train.activation_checkpointing: true, or use method lora/qlora. `tunesmith train --dry-run` "
            "shows the breakdown."
        )


def _blocks(every: int) -> str:
    return "every block" if every == 1 else f"one block in {every}"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def available_memory() -> tuple[str, int]:
    """The device training will use and its free memory in bytes."""
    import psutil
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return f"GPU {torch.cuda.get_device_name()}", int(free)
    return "CPU RAM", int(psutil.virtual_memory().available)


def count_parameters(config: ProjectConfig, model_config: Any) -> tuple[int, int]:
    """(total, trainable) parameters for the configured method, counted on a meta-device model."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.train.methods import apply_freeze

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    method = config.train.method
    if method in ("lora", "qlora"):
        from peft import get_peft_model

        from tunesmith.train.sft import lora_config

        model = get_peft_model(model, lora_config(config.train))
    elif method in ("freeze", "head"):
        apply_freeze(model, config.train)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def decide_checkpointing(
    config: ProjectConfig, model_config: Any, sequence_length: int
) -> tuple[ProjectConfig, str | None]:
    """`config` with `train.activation_checkpointing: auto` decided for this machine, and why.

    Off (every activation kept, no recomputation) when the estimated peak without checkpointing
    takes at most `AUTO_CHECKPOINTING_SHARE` of the free memory, shared between the processes of
    a run on one machine; on otherwise. A config that sets it is returned as is, with no reason.
    """
    import os

    train = config.train
    if train.activation_checkpointing != "auto":
        return config, None
    without = config.model_copy(
        update={"train": train.model_copy(update={"activation_checkpointing": False})}
    ).with_base_dir(config.base_dir)
    estimate = estimate_fit(without, model_config, sequence_length)
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    budget = int(AUTO_CHECKPOINTING_SHARE * estimate.available_bytes / processes)
    keep = estimate.peak_bytes <= budget
    decided = config.model_copy(
        update={"train": train.model_copy(update={"activation_checkpointing": not keep})}
    ).with_base_dir(config.base_dir)
    share = f"{_gib(estimate.peak_bytes)} estimated without it, {_gib(budget)} budget"
    reason = (
        f"activation checkpointing off: {share}"
        if keep
        else f"activation checkpointing on ({_blocks(train.checkpoint_every_n_layers)}): {share}"
    )
    return decided, reason


def estimate_fit(config: ProjectConfig, model_config: Any, sequence_length: int) -> FitEstimate:
    """Estimate the peak memory of training `config` on sequences of `sequence_length` tokens."""

    train = config.train
    total, trainable = count_parameters(config, model_config)
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[config.weights_dtype]
    frozen = total - trainable
    if train.method == "qlora":
        weight_bits = 4 if train.quantization.bits == 4 else 8
        weights = int(frozen * weight_bits / 8 * 1.1) + trainable * 4  # ~10% for quantization constants
    else:
        weights = total * dtype_bytes
    gradients = trainable * 4
    optimizer = trainable * 8  # AdamW: two fp32 moments per trainable parameter
    batch, seq = train.per_device_train_batch_size, sequence_length
    hidden = model_config.hidden_size
    heads = model_config.num_attention_heads
    layers = model_config.num_hidden_layers
    vocab = model_config.vocab_size
    mixed = native_bf16()  # the trainers autocast to bfloat16 exactly there
    scale = 1.0 if mixed or dtype_bytes == 2 else 2.0  # the 16-bit estimate doubles for fp32 activations
    full_layer = seq * batch * hidden * (34 + 5 * heads * seq / hidden) * scale
    if train.activation_checkpointing:
        # checkpointed blocks keep only their input; the others (and the one recomputed) keep everything
        checkpointed = -(-layers // train.checkpoint_every_n_layers)
        kept_inputs = checkpointed * 2 * seq * batch * hidden * scale
        activations = kept_inputs + (layers - checkpointed + 1) * full_layer
    else:
        activations = layers * full_layer
    logits = batch * seq * vocab * 4 * 3  # fp32 logits, their softmax, and their gradient
    device, available = available_memory()
    return FitEstimate(
        device=device,
        available_bytes=available,
        total_parameters=total,
        trainable_parameters=trainable,
        weights_bytes=int(weights),
        gradients_bytes=int(gradients),
        optimizer_bytes=int(optimizer),
        activations_bytes=int(activations + logits),
        batch_size=batch,
        accumulation=train.accumulation_steps,
        sequence_length=seq,
    )
