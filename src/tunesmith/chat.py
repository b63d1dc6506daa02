"""A conversation as the text a model reads: one rendering for training, data lengths, eval
prompts and the server, so what a version learned is what it is asked.

Reasoning traces are written into their turns (`tunesmith.reasoning.inline`) and tool definitions,
calls and results as the template takes them or in the Hermes format (`tunesmith.toolcalls`).
"""

from __future__ import annotations

from typing import Any

from tunesmith.reasoning import inline
from tunesmith.toolcalls import inline_tools

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
