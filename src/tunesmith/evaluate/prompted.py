"""A classifier's task asked of the base language model by prompting: the baseline a fine-tune must beat.

Each item becomes a chat turn (the text as the user's message) answered by the label, after `k`
train examples as earlier turns (none: zero-shot). The system message lists the label set (up to
`LISTED_LABELS_MAX_CHARS` of names), as a practitioner prompting a chat model would: without it a
few-shot prompt leans towards the labels its examples happen to show. Every label is scored as the
answer by its likelihood per character (lm-eval's `acc_norm`, so long label names are not penalised
for their length), and the likeliest is the prediction: the model is never asked to spell a label it would
then have to be matched against, so a prompted base and a trained head are scored on the same
labels, by the same metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunesmith.models.generate import choices_nll, render_prompt, turn_end_text
from tunesmith.progress import progress_bar

INSTRUCTION = "Label the text. Answer with the label only."
LISTED_LABELS_MAX_CHARS = 2_000  # a longer label set (hundreds of names) is not listed


def instruction(labels: Sequence[str] = ()) -> str:
    """The system message: the task, and the label set when it is short enough to list."""
    listed = ", ".join(labels)
    if not labels or len(listed) > LISTED_LABELS_MAX_CHARS:
        return INSTRUCTION
    return f"Label the text with one of these labels: {listed}. Answer with the label only."


def as_chat(text: str, label: str, system: str = INSTRUCTION) -> dict[str, Any]:
    """A classification row as the chat the base model is prompted with."""
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label},
        ]
    }


def prompted_labels(
    model: Any,
    tokenizer: Any,
    items: Sequence[dict[str, Any]],
    labels: Sequence[str],
    shots: Sequence[dict[str, Any]] = (),
    *,
    batch_size: int = 32,
    label: str = "Prompting",
) -> list[str]:
    """The label the model finds likeliest as the answer to each item's text (see the module)."""
    system = instruction(labels)
    examples = [as_chat(str(shot["text"]), str(shot["label"]), system) for shot in shots]
    answers = [f"{name}{_turn_end(tokenizer)}" for name in labels]
    predicted = []
    with progress_bar(label, total=len(items)) as advance:
        for item in items:
            context = render_prompt(tokenizer, as_chat(str(item["text"]), "", system), examples)
            nll = choices_nll(model, tokenizer, context, answers, batch_size=batch_size)
            scores = [-total / max(len(name), 1) for (total, _), name in zip(nll, labels, strict=True)]
            predicted.append(labels[max(range(len(labels)), key=scores.__getitem__)])
            advance(1)
    return predicted


def _turn_end(tokenizer: Any) -> str:
    """The special token that closes an assistant's answer (e.g. `<|im_end|>`), so that a label is
    scored as a whole answer, not as the start of a longer one."""
    after = turn_end_text(tokenizer)
    special = [t for t in tokenizer.all_special_tokens if t and after.startswith(t)]
    return max(special, key=len) if special else ""
