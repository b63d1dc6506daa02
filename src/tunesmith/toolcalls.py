"""Tool calls in chat rows: checked when data is read, written one way for training, eval and
serving, and read back out of generated text.

The shape is OpenAI's. A row or a request lists `tools` (function definitions with a JSON-schema
`parameters`); an assistant message carries `tool_calls` (`[{id, type: "function", function:
{name, arguments}}]`, the arguments a JSON object or its JSON text); a `tool` message answers one
call (`tool_call_id`, `content`), and the assistant then answers from it.

A chat template that renders tool definitions and calls itself (Qwen2.5's, Hermes', Llama 3.1's)
is used as it is, with the arguments as objects (the Hugging Face convention). For a template that
drops them (SmolLM2's ChatML renders only `content`), the conversation is written in the Hermes
format that ChatML tool models use: the definitions in the system message inside `<tools></tools>`,
each call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the assistant's turn,
each tool result as a user turn inside `<tool_response></tool_response>`. Training, eval prompts
and the server render through the same function (`tunesmith.chat.render_chat`), and generated text
is parsed back by `parse_calls` (Hermes blocks; a bare `{"name", "arguments"}` answer as Llama 3.1
writes it), so a call learned in training is a call the server returns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_PROBE_TOOL, _PROBE_CALL, _PROBE_VALUE = (
    "tunesmith_probe_tool",
    "tunesmith_probe_call",
    "tunesmith_probe_value",
)

SYSTEM_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n"
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": '
    "<args-json-object>}}\n</tool_call>"
)


class ToolCallError(ValueError):
    """A malformed tool definition, call or tool message (the message names the field)."""


@dataclass
class Call:
    """One function call: its name and its arguments as an object."""

    name: str
    arguments: dict[str, Any]

    def openai(self, call_id: str) -> dict[str, Any]:
        """The call as OpenAI returns it (arguments as JSON text)."""
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass
class Parsed:
    """Generated text read for calls: the text around them, the calls, and the blocks that were
    meant as calls but are not valid (bad JSON, no name, arguments not an object, never closed)."""

    content: str
    calls: list[Call] = field(default_factory=list)
    invalid: int = 0

    @property
    def attempted(self) -> int:
        return len(self.calls) + self.invalid


# --- checking rows and requests ---------------------------------------------------------------


def check_tools(tools: Any, where: str = "tools") -> list[dict[str, Any]]:
    """`tools` as a list of OpenAI function definitions (a bare `{name, parameters}` is wrapped).

    Raises:
        ToolCallError: not a list, or an entry without a function name, or parameters not an object.
    """
    if not isinstance(tools, list):
        raise ToolCallError(f"{where}: expected a list of tool (function) definitions")
    out = []
    for i, tool in enumerate(tools):
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ToolCallError(f"{where}[{i}]: expected {{type: function, function: {{name, parameters}}}}")
        if not isinstance(spec.get("parameters", {}), dict):
            raise ToolCallError(f"{where}[{i}].function.parameters: expected a JSON schema object")
        out.append({"type": "function", "function": spec})
    return out


def call_arguments(call: Any, where: str) -> Call:
    """One OpenAI tool call (`{function: {name, arguments}}`) as a `Call`.

    Raises:
        ToolCallError: no function name, or arguments that are not a JSON object (or its text).
    """
    spec = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ToolCallError(f"{where}: expected {{type: function, function: {{name, arguments}}}}")
    arguments = spec.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolCallError(f"{where}.function.arguments: not valid JSON ({exc.msg})") from None
    if not isinstance(arguments, dict):
        raise ToolCallError(f"{where}.function.arguments: expected a JSON object")
    return Call(spec["name"], arguments)


def message_calls(message: dict[str, Any]) -> list[Call]:
    """The calls an assistant message makes (none when it makes none)."""
    return [call_arguments(c, "tool_calls") for c in message.get("tool_calls") or []]


def check_conversation(messages: list[dict[str, Any]], field: str = "messages") -> None:
    """Every call well formed, and every `tool` message answers a call of the assistant turn before
    it (by `tool_call_id` when both carry ids).

    Raises:
        ToolCallError: naming the message and what is wrong with it.
    """
    open_ids: set[str] | None = None  # the ids the last assistant turn's calls await (None: none)
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "assistant":
            calls = message.get("tool_calls")
            if calls is not None and not isinstance(calls, list):  # an empty list: no calls
                raise ToolCallError(f"{field}[{i}].tool_calls: expected a list of calls")
            for j, call in enumerate(calls or []):
                call_arguments(call, f"{field}[{i}].tool_calls[{j}]")
            open_ids = {str(c.get("id")) for c in calls or [] if isinstance(c, dict) and c.get("id")}
            open_ids = open_ids if calls else None
        elif role == "tool":
            if open_ids is None:
                raise ToolCallError(
                    f"{field}[{i}].role: a tool message must follow an assistant message with tool_calls"
                )
            answered = message.get("tool_call_id")
            if open_ids and answered is not None and str(answered) not in open_ids:
                raise ToolCallError(
                    f"{field}[{i}].tool_call_id: {answered!r} answers no call of the assistant turn "
                    f"before it ({', '.join(sorted(open_ids))})"
                )
        else:
            open_ids = None


# --- writing ------------------------------------------------------------------------------------


_KNOWN: dict[str, bool] = {}  # a template's answer, asked once


def template_knows_tools(tokenizer: Any) -> bool:
    """The chat template renders tool definitions and calls itself (a probe call is rendered)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        return False
    if template not in _KNOWN:
        probe = [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": _PROBE_CALL, "arguments": {"a": _PROBE_VALUE}}}
                ],
            },
        ]
        tools = [{"type": "function", "function": {"name": _PROBE_TOOL, "parameters": {"type": "object"}}}]
        try:
            text = str(tokenizer.apply_chat_template(probe, tools=tools, tokenize=False))
        except Exception:  # a template that refuses tool calls does not know them
            text = ""
        _KNOWN[template] = all(marker in text for marker in (_PROBE_TOOL, _PROBE_CALL, _PROBE_VALUE))
    return _KNOWN[template]


def format_calls(calls: list[Call]) -> str:
    """Calls as the Hermes format writes them in an assistant turn."""
    return "\n".join(
        f"{OPEN}\n{json.dumps({'name': c.name, 'arguments': c.arguments}, ensure_ascii=False)}\n{CLOSE}"
        for c in calls
    )


def written_answer(message: dict[str, Any]) -> str:
    """An assistant message's text with its calls written in: what a model trained on it says."""
    calls = format_calls(message_calls(message))
    content = message.get("content") or ""
    return f"{content}\n{calls}" if content and calls else content or calls


def inline_tools(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(the messages, the tools to pass the template) as this tokenizer's template should see them.

    A template that knows tools gets them as they are (call arguments as objects). For any other,
    the definitions go into the system message, calls into the assistant's text and tool results
    into user turns, in the Hermes format; no tools are passed then. The messages keep their number
    and order, except that a system message is put first when there was none to hold the tools.
    """
    has_calls = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if not tools and not has_calls:
        return messages, None
    if template_knows_tools(tokenizer):
        return [_template_call(m) for m in messages], tools or None
    out = [_written(m) for m in messages]
    if tools:
        block = SYSTEM_BLOCK.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, None


def _template_call(message: dict[str, Any]) -> dict[str, Any]:
    calls = message_calls(message)
    if not calls:
        return message
    specs = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return {**message, "tool_calls": specs}


def _written(message: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id", "name")}
    if message["role"] == "tool":
        return {**rest, "role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
    if message.get("tool_calls"):
        return {**rest, "content": written_answer(message)}
    return message


# --- reading ------------------------------------------------------------------------------------


def _call_of(value: Any) -> Call | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return Call(value["name"], arguments) if isinstance(arguments, dict) else None


def parse_calls(text: str) -> Parsed:
    """The calls written in generated `text` (Hermes `<tool_call>` blocks, or the whole answer a
    bare `{"name", "arguments"}` object), and the text around them."""
    blocks = list(_BLOCK.finditer(text))
    if not blocks:
        stripped = text.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            try:
                call = _call_of(json.loads(stripped))
            except json.JSONDecodeError:
                call = None
            if call is not None:
                return Parsed("", [call])
        return Parsed(text)
    parsed, kept, last = Parsed(""), [], 0
    for block in blocks:
        closed = block.group(0).endswith(CLOSE)
        try:
            call = _call_of(json.loads(block.group(1))) if closed else None
        except json.JSONDecodeError:
            call = None
        kept.append(text[last : block.start()] if call is not None else text[last : block.end()])
        last = block.end()
        if call is None:
            parsed.invalid += 1  # kept in the text: what the model wrote is not lost
        else:
            parsed.calls.append(call)
    kept.append(text[last:])
    parsed.content = "".join(kept).strip()
    return parsed


class CallSplitter:
    """Streamed text split as it arrives: text before the first `<tool_call>` is passed on as it
    comes (held back only while it could be the start of the marker); from the marker on, it is
    kept until the end, when `finish` reads the calls out of it."""

    def __init__(self) -> None:
        self.held = ""
        self.calling = False

    def feed(self, delta: str) -> str:
        """The part of `delta` that is plain text, safe to send now."""
        if self.calling:
            self.held += delta
            return ""
        text = self.held + delta
        start = text.find(OPEN)
        if start >= 0:
            self.calling, self.held = True, text[start:]
            return text[:start]
        keep = next((n for n in range(min(len(OPEN) - 1, len(text)), 0, -1) if OPEN.startswith(text[-n:])), 0)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> Parsed:
        """The calls in what was held (text that turned out not to be calls comes back as content)."""
        if not self.calling:
            return Parsed(self.held)
        return parse_calls(self.held)


# --- scoring ------------------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """A JSON value compared by meaning: integral floats as ints, objects with sorted keys."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value
