"""A reward model's scores: one number per conversation from a one-output sequence-classification head.

Used where reward models are trained (their held-out pairwise accuracy), in eval, in online RL and
in serving's monitoring; loading a registered one is `registry.reward.RewardModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunesmith.chat import chat_messages


def score_conversations(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[list[dict[str, Any]]],
    max_length: int = 1024,
    batch_size: int = 8,
    label: str | None = None,
) -> list[float]:
    """A reward model's score of each conversation (chat template applied, as in training).

    Conversations longer than `max_length` tokens keep their end: the answer being scored.
    """
    import torch

    from tunesmith.progress import progress_bar

    encoded = []
    for conversation in conversations:
        written, kwargs = chat_messages(list(conversation), tokenizer)  # as training wrote them
        ids = tokenizer.apply_chat_template(written, tokenize=True, return_dict=True, **kwargs)["input_ids"]
        encoded.append(list(ids)[-max_length:])
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding per batch
    scores = [0.0] * len(encoded)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    with progress_bar(label or "Scoring", len(encoded), show=label is not None) as advance, torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(batch):
                scores[i] = float(logits[row, 0])
            advance(len(batch))
    model.train(was_training)
    return scores


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or conversational assistant messages."""
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(str(m.get("content", "")) for m in completion)
    return str(completion)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (pairwise accuracy, win rate); (0, 1) for no trials."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)
