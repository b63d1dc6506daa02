"""Training methods: which weights train (full, freeze, head, LoRA) and how the base is loaded (QLoRA)."""

from __future__ import annotations

from typing import Any

from tunesmith.config import TrainConfig


class MethodError(ValueError):
    """A method this machine or model cannot run, with what to do instead."""


def check_method_supported(train: TrainConfig) -> None:
    """Stop before loading anything when the method needs hardware this machine lacks.

    Raises:
        MethodError: for `qlora` without CUDA.
    """
    import torch

    if train.method == "qlora" and not torch.cuda.is_available():
        raise MethodError(
            "train.method=qlora loads the base in 4/8-bit with bitsandbytes, which needs a CUDA GPU; "
            "this machine has none. Use train.method=lora (same adapters, full-precision base) on a CPU."
        )


def quantization_config(train: TrainConfig) -> Any:
    """The `BitsAndBytesConfig` for `qlora`; None for every other method."""
    if train.method != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    q = train.quantization
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def decoder_blocks(model: Any) -> Any:
    """The model's list of transformer blocks (the ModuleList as long as `num_hidden_layers`)."""
    import torch

    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise MethodError(f"{model.__class__.__name__}: found no list of {n} transformer blocks to freeze")


def head_modules(model: Any) -> list[Any]:
    """The output head: whatever sits beside the pre-trained body (an LM head, a classifier, a scorer)."""
    body = getattr(model, model.base_model_prefix, None)
    if body is None or body is model:
        return [model.get_output_embeddings()]
    return [module for name, module in model.named_children() if name != model.base_model_prefix]


def apply_freeze(model: Any, train: TrainConfig) -> None:
    """Leave trainable only what `method: freeze` or `method: head` names; everything else is frozen.

    `freeze` trains the blocks above the first `layers` (or the top `train_top`), the final norm and
    the output head; `head` trains the output head alone (feature-based). On models whose head shares
    its weights with the input embeddings (SmolLM2), training the head also moves the embeddings.
    """
    for parameter in model.parameters():
        parameter.requires_grad = False
    trainable = head_modules(model)
    if train.method == "freeze":
        assert train.freeze is not None
        blocks = decoder_blocks(model)
        first = (
            train.freeze.layers
            if train.freeze.layers is not None
            else len(blocks) - (train.freeze.train_top or 0)
        )
        trainable += list(blocks)[max(0, first) :]
        trainable += [
            m
            for name, m in model.named_modules()
            if (name.endswith("norm") and "layers" not in name) or name.endswith("pooler")
        ]
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True


def share_lora_inputs_under_autocast(model: Any) -> int:
    """Let LoRA adapters read their layer's input as is while autocast runs; returns the layers changed.

    PEFT casts a layer's input to the adapter's dtype (float32) before the adapter's matrix products;
    under bfloat16 autocast those products then cast it back to bfloat16, a new copy that autograd
    keeps for the backward pass beside the one the frozen layer already keeps. On SmolLM2 that is
    about a third of a LoRA step's saved activations, and the copies' time. Under autocast the cast
    is skipped (autocast runs the adapter in bfloat16 on the same tensor, with its float32 weights
    as the masters); outside autocast (evaluation, generation) the cast happens as before.
    """
    import types

    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    def cast(self: Any, x: Any, dtype: Any) -> Any:
        if x is not None and torch.is_autocast_enabled(x.device.type):
            return x
        return BaseTunerLayer._cast_input_dtype(self, x, dtype)

    changed = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module._cast_input_dtype = types.MethodType(cast, module)  # type: ignore[method-assign]
            changed += 1
    return changed
