"""Reasoning traces in chat rows: detected, kept apart from the answer, and handled by one policy
(data preparation, training, eval generation and serving share this module).

An assistant message carries a trace as `reasoning_content` (the field OpenAI-compatible servers
and DeepSeek's data use), or as a `<think>…</think>` block at the start of its `content` (Qwen3,
DeepSeek-R1 and their distillations). The data stage stores both the same way: the trace in
`reasoning_content`, the answer in `content`. `data.reasoning` decides what training does with it:

- `train`: the trace is part of what the model learns to say (the default: nothing is dropped);
- `mask`: the trace stays in the conversation as context, with no loss on it; the model learns the
  answer that follows it;
- `drop`: the trace is removed from the rows when the data is prepared (counted in the report).

A template that knows `reasoning_content` (Qwen3's) renders it itself; for any other the trace is
written into the turn as `<think>\\n…\\n</think>\\n\\n` before the answer, the same markers the model
then writes at inference. Generated text is split the same way (`split_answer`): eval scores the
answer, and the server returns the trace as `reasoning_content` beside the answer.
"""

from __future__ import annotations

import re
from typing import Any, Literal

ReasoningPolicy = Literal["train", "mask", "drop"]
OPEN, CLOSE = "<think>", "</think>"
_LEADING = re.compile(r"\A\s*<think>(.*?)</think>\s*", re.S)


class ReasoningError(ValueError):
    """A message whose trace is given twice, or a <think> block that is never closed."""


def split_answer(text: str) -> tuple[str | None, str]:
    """(the trace, the answer) of a generated or written assistant text: a leading <think> block is
    the trace. An opened block that never closes (the answer was cut) is all trace, no answer."""
    match = _LEADING.match(text)
    if match is not None:
        return match.group(1).strip(), text[match.end() :]
    if text.lstrip().startswith(OPEN):
        return text.lstrip()[len(OPEN) :].strip(), ""
    return None, text


def separate(message: dict[str, Any], field: str) -> dict[str, Any]:
    """An assistant message with its trace in `reasoning_content` and only the answer in `content`.

    Raises:
        ReasoningError: a `reasoning_content` and a <think> block both, or a block never closed.
    """
    if message["role"] != "assistant":
        return message
    content = message["content"]
    if not content.lstrip().startswith(OPEN):
        return message
    trace, answer = split_answer(content)
    if CLOSE not in content:
        raise ReasoningError(f"{field}.content: a <think> block that is never closed with </think>")
    if message.get("reasoning_content"):
        raise ReasoningError(
            f"{field}: the trace is given twice, in reasoning_content and as a <think> block in content"
        )
    return {**message, "content": answer, "reasoning_content": trace}


def apply_policy(record: dict[str, Any], policy: ReasoningPolicy) -> tuple[dict[str, Any], int]:
    """The record under `policy` (`drop` removes every trace), and how many traces it holds."""
    messages = record.get("messages")
    if not messages:
        return record, 0
    traced = sum(1 for m in messages if m.get("reasoning_content"))
    if policy != "drop" or not traced:
        return record, traced
    kept = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    return {**record, "messages": kept}, traced


def template_knows_reasoning(tokenizer: Any) -> bool:
    """The chat template renders `reasoning_content` itself (Qwen3's does)."""
    return "reasoning_content" in str(getattr(tokenizer, "chat_template", None) or "")


def inline(messages: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """The messages as the template should see them: traces written into their turns as <think>
    blocks, unless the template renders `reasoning_content` itself."""
    if template_knows_reasoning(tokenizer) or not any(m.get("reasoning_content") for m in messages):
        return messages
    return [_inlined(m) if m.get("reasoning_content") else m for m in messages]


def _inlined(message: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in message.items() if k != "reasoning_content"}
    return {**rest, "content": trace_block(message["reasoning_content"]) + message["content"]}


def trace_block(trace: str) -> str:
    """A trace as the turn writes it, before the answer."""
    return f"{OPEN}\n{trace.strip()}\n{CLOSE}\n\n"


def rejoin(trace: str | None, answer: str, cut: bool = False) -> str:
    """The text a model wrote, from a reply's `reasoning_content` and `content` (what `split_answer`
    took apart, the blanks around the markers as training writes them); `cut`: the reply ended at
    its token limit, so a trace with no answer after it was never closed."""
    if trace is None:
        return answer
    if cut and not answer:
        return f"{OPEN}\n{trace.strip()}"
    return trace_block(trace) + answer


class TraceSplitter:
    """A streamed answer split as it arrives into trace and answer deltas, as `split_answer` splits
    the whole: text that may still turn out to be a marker (or the blank around one) is held back
    until it is known which side it belongs to."""

    def __init__(self) -> None:
        self.buffer = ""
        self.state = "start"  # start: before any text; trace: inside <think>; after: between; answer
        self.traced = False  # whether any of the trace has gone out yet

    def feed(self, text: str) -> tuple[str, str]:
        """(trace delta, answer delta) of `text`, either possibly empty."""
        self.buffer += text
        trace = ""
        if self.state == "start":
            stripped = self.buffer.lstrip()
            if OPEN.startswith(stripped):
                return "", ""  # only blank, or the start of "<think>" so far
            if not stripped.startswith(OPEN):
                self.state = "answer"
                return "", self._take(len(self.buffer))
            self.state, self.buffer = "trace", stripped[len(OPEN) :].lstrip()
        if self.state == "trace":
            if not self.traced:  # the blank after <think>, in whichever piece it arrives, is not the trace
                self.buffer = self.buffer.lstrip()
            closed = self.buffer.find(CLOSE)
            if closed < 0:
                out = self._take(_safe_end(self.buffer))
                self.traced = self.traced or bool(out)
                return out, ""
            trace = self.buffer[:closed].rstrip()
            self.state, self.buffer = "after", self.buffer[closed + len(CLOSE) :]
        if self.state == "after":
            self.buffer = self.buffer.lstrip()
            if not self.buffer:
                return trace, ""
            self.state = "answer"
        return trace, self._take(len(self.buffer))

    def flush(self) -> tuple[str, str]:
        """What is held back once the answer has ended: an unclosed trace's end, or a short answer."""
        held, self.buffer = self.buffer, ""
        if self.state == "trace":
            return held.rstrip(), ""
        return "", held if self.state in ("start", "answer") else ""

    def _take(self, end: int) -> str:
        out, self.buffer = self.buffer[:end], self.buffer[end:]
        return out


def _safe_end(text: str) -> int:
    """How much of a trace's text can go out: all but trailing blanks and a possible start of </think>."""
    end = len(text)
    for k in range(min(len(CLOSE) - 1, len(text)), 0, -1):
        if CLOSE.startswith(text[-k:]):
            end = len(text) - k
            break
    return len(text[:end].rstrip())
