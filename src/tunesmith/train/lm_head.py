"""The LM head on the answer tokens only, for devices without Triton (CPUs).

TRL's SFT trainer scores the next-token labels through a fused, tiled LM head. On CUDA its Triton
kernel projects only the positions that have a label; elsewhere its torch fallback projects every
position (prompt and padding included) in float32 tiles. On a CPU that costs about 40% of a LoRA
step on SmolLM2. This head projects only the labelled positions, in chunks, with the weights' own
dtype (bfloat16 matrix products where the base is bfloat16, accumulated in float32 by the BLAS
kernel), and recomputes each chunk in the backward pass instead of keeping the logits: the same
loss, gradients and metrics (entropy, top-1 accuracy) as TRL's head, with a fraction of its work.
"""

from __future__ import annotations

import types
from typing import Any

import torch

CHUNK = 256  # positions per chunk: bounds the (chunk, vocabulary) float32 logits held at once
KEEP_LOGITS_BYTES = 512 * 2**20  # keep the logits for the backward pass up to this size, else recompute


class AnswerLogProb(torch.autograd.Function):
    """Log-probability of each target under `softmax(hidden @ weight.T)`, chunked over positions.

    Returns `(log_probs, entropy, is_top1)`; only `log_probs` carries a gradient.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        log_probs = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n, dtype=torch.float32)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        log_z = hidden.new_empty(n, dtype=torch.float32)
        keep = n * weight.shape[0] * weight.element_size() <= KEEP_LOGITS_BYTES
        kept = []
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            logits = hidden[start:end] @ weight.T
            if keep:
                kept.append(logits)
            z = logits.float()
            peak = z.amax(-1, keepdim=True)
            e = torch.exp(z - peak)
            total = e.sum(-1)
            lz = peak.squeeze(-1) + torch.log(total)
            target = targets[start:end]
            log_probs[start:end] = z.gather(1, target[:, None]).squeeze(1) - lz
            entropy[start:end] = lz - (e * z).sum(-1) / total
            is_top1[start:end] = z.argmax(-1) == target
            log_z[start:end] = lz
        ctx.save_for_backward(hidden, weight, targets, log_z, *kept)
        ctx.chunk, ctx.kept = chunk, keep
        ctx.mark_non_differentiable(entropy, is_top1)
        return log_probs, entropy, is_top1

    @staticmethod
    def backward(
        ctx: Any, grad_log_probs: torch.Tensor, *_: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        hidden, weight, targets, log_z, *kept = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        for index, start in enumerate(range(0, hidden.shape[0], ctx.chunk)):
            end = min(hidden.shape[0], start + ctx.chunk)
            h = hidden[start:end]
            logits = kept[index] if ctx.kept else h @ weight.T
            p = torch.exp(logits.float() - log_z[start:end, None])
            g = grad_log_probs[start:end].float()
            # d log p_target / dz_j = 1[j = target] - p_j
            grad_z = -g[:, None] * p
            grad_z.scatter_add_(1, targets[start:end, None], g[:, None])
            grad_z = grad_z.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_z @ weight
            if grad_weight is not None:
                grad_weight += (grad_z.T @ h).float()
        return (
            grad_hidden,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
            None,
            None,
        )


def _plain_head(model: Any) -> bool:
    """True for a model whose logits are `hidden @ lm_head.weight.T` (no scaling, softcap or bias)."""
    config = model.config.get_text_config()
    scaled = any(
        getattr(config, name, None) not in (None, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier")
    )
    head = model.get_output_embeddings()
    return (
        not scaled
        and getattr(config, "logits_scaling", None) is None
        and head is not None
        and getattr(head, "bias", None) is None
    )


def use_answer_only_head(trainer: Any) -> bool:
    """Route the trainer's fused-head forward through `AnswerLogProb` where TRL would score every position.

    Returns whether it did: only on devices without Triton, for plain heads, at temperature 1.
    """
    from trl.kernels.chunked_logprob import _use_triton
    from trl.trainer.utils import FusedCausalLMOutput

    model = trainer.model
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(inner.parameters()).device
    if _use_triton(device) or not _plain_head(inner):
        return False
    trl_forward = inner.forward  # TRL's fused forward; it still serves every other call

    def forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if (
            not fused_lm_head
            or labels is None
            or shift_labels is not None
            or kwargs.get("output_router_logits")
        ):
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        head = self.get_output_embeddings()
        picked = hidden[mask].to(head.weight.dtype)
        log_probs, entropy, is_top1 = AnswerLogProb.apply(picked, head.weight, targets[mask], CHUNK)

        def spread(values: torch.Tensor) -> torch.Tensor:
            # masked_scatter keeps an all-masked micro-batch in the graph (a zero loss, not an error)
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs_full = spread(log_probs)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs_full.sum() / count,
            log_probs=log_probs_full,
            entropy=spread(entropy),
            is_top1=spread(is_top1),
            label_mask=mask,
        )

    inner.forward = types.MethodType(forward, inner)
    return True
