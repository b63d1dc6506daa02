"""Prompts to ask a version, from a file: one per line of a `.txt` file, or JSONL rows, each a chat
row (its closing answer dropped), a prompt/completion or preference row, or `{"prompt": ...}`. A
row's `tools` come with its prompt. Feedback sessions sample answers to them, and cross-engine
parity compares engines on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.data.formats import as_messages
from tunesmith.errors import InputError


class PromptsError(InputError):
    """A prompts file that cannot be read: the message names file:line and what to do."""


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """Prompts from a file: JSONL chat rows (a closing answer is dropped), `{"prompt": ...}` rows, or
    one prompt per line of a `.txt` file.

    Raises:
        PromptsError: naming file:line.
    """
    if not path.is_file():
        raise PromptsError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [
            {"prompt": [{"role": "user", "content": line.strip()}], "source": {"line": n}}
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptsError(f"{path}:{n}: not JSON ({exc.msg})") from None
        messages = prompt_of_row(row)
        if messages is None:
            raise PromptsError(
                f'{path}:{n}: expected "messages" (a chat row) or "prompt" (a string or messages), '
                f"got fields {', '.join(row) if isinstance(row, dict) else type(row).__name__}"
            )
        tools = {"tools": row["tools"]} if row.get("tools") else {}
        prompts.append({"prompt": messages, **tools, "source": {"line": n}})
    return prompts


def prompt_of_row(row: Any) -> list[dict[str, Any]] | None:
    """The conversation to answer from a chat, prompt/completion or preference row; None if it has none."""
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("messages"), list) and row["messages"]:
        messages = as_messages(row["messages"], "assistant")  # tool calls and traces kept
        return messages[:-1] if messages[-1]["role"] == "assistant" else messages
    if isinstance(row.get("prompt"), (str, list)) and row["prompt"]:
        return as_messages(row["prompt"], "user")
    return None
