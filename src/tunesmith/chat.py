"""A conversation as the text a model reads: one rendering for training, data lengths, eval
prompts and the server, so what a version learned is what it is asked.

Reasoning traces are written into their turns (`tunesmith.reasoning.inline`) and tool definitions,
calls and results as the template takes them or in the Hermes format (`tunesmith.toolcalls`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tunesmith.reasoning import inline, split_answer
from tunesmith.toolcalls import Parsed, inline_tools, parse_calls

# what a chat message carries beside its role and text, kept wherever messages are stored or sent on
MESSAGE_EXTRAS = ("tool_calls", "tool_call_id", "reasoning_content")


def chat_messages(
    messages: list[dict[str, Any]], tokenizer: Any, tools: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(the messages as the template takes them, the keyword arguments to pass it)."""
    written, template_tools = inline_tools(inline(messages, tokenizer), tools, tokenizer)
    return written, ({"tools": template_tools} if template_tools else {})


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation rendered by the tokenizer's chat template, traces and tools written in."""
    written, kwargs = chat_messages(messages, tokenizer, tools)
    return str(
        tokenizer.apply_chat_template(
            written, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs
        )
    )


def asked(messages: list[dict[str, Any]]) -> str:
    """What the user asked last: the text of the last user message (a conversation's question, as a
    report or a judge shows it; after it may come the model's calls and the tools' results)."""
    question = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return "" if question is None else str(question.get("content") or "")


def random_call_id(_: int) -> str:
    """A call id as OpenAI writes them."""
    return f"call_{uuid.uuid4().hex[:24]}"


def numbered_call_id(index: int) -> str:
    """A call id that is the same each time (stored rows: the same answer is the same row)."""
    return f"call_{index}"


def called_fields(parsed: Parsed, call_id: Callable[[int], str] = random_call_id) -> dict[str, Any]:
    """A message's content and tool_calls from an answer read for calls (content None when the
    answer is only calls, as OpenAI answers; blocks that are not valid calls stay in the text)."""
    if not parsed.calls:
        return {"content": parsed.content}
    calls = [call.openai(call_id(k)) for k, call in enumerate(parsed.calls)]
    return {"content": parsed.content or None, "tool_calls": calls}


def answer_message(
    text: str, calling: bool = False, call_id: Callable[[int], str] = random_call_id
) -> dict[str, Any]:
    """A generated answer as the assistant message it stands for: a leading reasoning trace as
    `reasoning_content` and, when tools were offered (`calling`), the calls it writes as
    `tool_calls`. The server answers with it, and production's answers become data rows through it,
    so a row holds what the client was sent."""
    trace, answer = split_answer(text)
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if calling:
        message.update(called_fields(parse_calls(answer), call_id))
    return message if trace is None else {**message, "reasoning_content": trace}
