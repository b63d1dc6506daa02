"""Generation for evaluation: batched, greedy, with exactly the chat template used in training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunesmith.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def generate_answers(
    model: Any,  # a PreTrainedModel or a PeftModel around one
    tokenizer: PreTrainedTokenizerBase,
    items: list[dict[str, Any]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    label: str = "Generating",
) -> list[str]:
    """Answer each item's conversation (all messages but the reference answer), greedily.

    Batches are sorted by prompt length so padding stays small; answers come back in item order.
    """
    import torch

    prompts = [
        tokenizer.apply_chat_template(item["messages"][:-1], add_generation_prompt=True, tokenize=False)
        for item in items
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    was_training = model.training
    model.eval()
    try:
        with progress_bar(label, total=len(prompts)) as advance, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                encoded = tokenizer(
                    [prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(model.device)
                output = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = output[:, encoded["input_ids"].shape[1] :]
                for i, tokens in zip(batch, new_tokens, strict=True):
                    answers[i] = str(tokenizer.decode(tokens, skip_special_tokens=True)).strip()
                advance(len(batch))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers
