"""Row formats and their conversion to the canonical chat record.

The canonical record of a chat/instruction row is `{"messages": [{"role", "content"}, ...]}` plus
any metadata fields the row carried (`key_facts`, `group`, ...), which are kept as they are.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool")


class RowError(ValueError):
    """A row that cannot be read: the message names the field and what to do."""


def detect_format(row: dict[str, Any]) -> str:
    """Name the format of one row: chat, prompt_completion or alpaca.

    Raises:
        RowError: when the row matches none of them.
    """
    if "messages" in row:
        return "chat"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    raise RowError(
        f"unknown row format (fields: {', '.join(sorted(row)) or 'none'}); expected `messages` (chat), "
        "`prompt` + `completion`, or `instruction` + `output` (alpaca); set data.format to force one"
    )


def to_chat(row: dict[str, Any], fmt: str, system_prompt: str | None = None) -> dict[str, Any]:
    """Convert one row of format `fmt` to the canonical chat record.

    Raises:
        RowError: with the field path of the first problem.
    """
    if fmt == "chat":
        messages = _check_messages(row.get("messages"))
        meta = {k: v for k, v in row.items() if k != "messages"}
    elif fmt == "prompt_completion":
        prompt, completion = _text(row, "prompt"), _text(row, "completion")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        meta = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
    elif fmt == "alpaca":
        instruction, output = _text(row, "instruction"), _text(row, "output")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise RowError("input: expected a string")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            messages.insert(0, {"role": "system", "content": row["system"]})
        meta = {k: v for k, v in row.items() if k not in ("instruction", "input", "output", "system")}
    else:
        raise RowError(f"unknown format {fmt!r}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"messages": messages, **meta}


def _text(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"{field}: expected a non-empty string, got {value!r:.60}")
    return value


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RowError("messages: expected a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowError(f"messages[{i}]: expected an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowError(f"messages[{i}].role: expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise RowError(f"messages[{i}].content: expected a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise RowError(
            f"messages[{len(out) - 1}].role: the last message must be the assistant's answer to learn"
        )
    if not out[-1]["content"].strip():
        raise RowError(f"messages[{len(out) - 1}].content: the assistant answer is empty")
    return out
