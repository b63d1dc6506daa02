"""Every assistant turn of a conversation trains: token masks from the model's own chat template.

A conversation is rendered once with the chat template (with its `tools`, and tool-call messages as
they are), and each assistant turn's text is found by rendering the conversation up to the turn
(with the generation prompt) and through it: the characters in between are what the model says at
that turn, its end-of-turn marker included. Tokens whose characters fall in those spans get a 1 in
`assistant_masks`, which TRL's SFTTrainer turns into labels (-100 elsewhere). A message with
`weight: 0` is context, not a target: its tokens stay masked, the last turn's included.

This needs no generation markers in the template, and works for any template in which a
conversation's rendering starts with the rendering of its first turns (every common one does).
For one that does not, only the last turn trains, as a prompt/completion pair, and a note says so.
"""

from __future__ import annotations

import logging
from typing import Any

from tunesmith.chat import chat_messages
from tunesmith.reasoning import CLOSE, OPEN, ReasoningPolicy

logger = logging.getLogger(__name__)


class TemplateError(ValueError):
    """A chat template whose rendering of a conversation does not extend the rendering of its start."""


def assistant_spans(
    messages: list[dict[str, Any]],
    tokenizer: Any,
    tools: list[Any] | None = None,
    reasoning: ReasoningPolicy = "train",
) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character spans of its trained assistant turns). Reasoning
    traces and tool calls are written into their turns as the server renders them
    (`tunesmith.chat`); with `reasoning: mask`, a turn's <think> block is left out of its span, so it
    is context, not a target. Tool results are context.

    Raises:
        TemplateError: the template renders a conversation's start differently inside the whole.
    """
    messages, kwargs = chat_messages(messages, tokenizer, tools)

    def render(part: list[dict[str, Any]], prompt: bool) -> str:
        return str(
            tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt, **kwargs)
        )

    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (through.startswith(before) and full.startswith(through)):
            raise TemplateError(f"the chat template renders turn {i} differently inside the conversation")
        if reasoning == "mask" and full[len(before) : len(through)].lstrip().startswith(OPEN):
            spans += _without_trace(full, len(before), len(through))
        else:
            spans.append((len(before), len(through)))
    return full, spans


def _without_trace(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The turn's span with its <think> block (and the blank after it) cut out."""
    opened = text.find(OPEN, start, end)
    closed = text.find(CLOSE, opened, end) if opened >= 0 else -1
    if closed < 0:
        return [(start, end)]
    after = closed + len(CLOSE)
    while after < end and text[after].isspace():
        after += 1
    return [(s, e) for s, e in ((start, opened), (after, end)) if e > s]


def assistant_token_rows(
    records: list[dict[str, Any]], tokenizer: Any, reasoning: ReasoningPolicy = "train"
) -> list[dict[str, Any]]:
    """Chat records as tokenized rows {input_ids, assistant_masks}: the loss falls on every assistant
    turn that is not `weight: 0` (and not on traces under `reasoning: mask`). Rows with nothing to
    learn are dropped (logged)."""
    rows, empty = [], 0
    for record in records:
        text, spans = assistant_spans(record["messages"], tokenizer, record.get("tools"), reasoning)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = [
            int(any(start <= a and b <= end and b > a for start, end in spans))
            for a, b in encoded["offset_mapping"]
        ]
        if not any(mask):
            empty += 1
            continue
        rows.append({"input_ids": list(encoded["input_ids"]), "assistant_masks": mask})
    if empty:
        logger.warning("%d conversation(s) have no assistant turn to learn (every one has weight 0)", empty)
    return rows


def supports_spans(tokenizer: Any, records: list[dict[str, Any]]) -> bool:
    """Whether the template extends a conversation's start (tried on the first records) and the
    tokenizer gives character offsets (a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        return False
    try:
        for record in records[:8]:
            assistant_spans(record["messages"], tokenizer, record.get("tools"))
    except TemplateError:
        return False
    return True
