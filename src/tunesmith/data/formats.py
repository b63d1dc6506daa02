"""Row formats, their detection, and conversion to one canonical record per task kind.

Canonical records (metadata fields a row carries, such as `group` or `key_facts`, are kept):

- `sft`: `{"messages": [{"role", "content", ["weight"]}, ...], ["tools": [...]]}`
- `classification`: `{"text": str, "label": str}`
- `preference`: `{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages,
  ["margin": float], ["tools": [...]]}`
- `unpaired`: `{"prompt": str | messages, "completion": str | messages, "label": bool, ["tools": [...]]}`
  (thumbs up/down)
- `text`: `{"text": str}` (continued pre-training)
- `tagging`: `{"tokens": [str, ...], "tags": [str, ...]}`
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from itertools import pairwise
from typing import Any

from tunesmith.chat import MESSAGE_EXTRAS
from tunesmith.errors import InputError
from tunesmith.reasoning import ReasoningError, separate
from tunesmith.toolcalls import ToolCallError, check_conversation, check_tools

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function_call": "assistant",
    "observation": "tool",
}


class RowError(InputError):
    """A row that cannot be used: the message names the field and what to do."""


@dataclass(frozen=True)
class FormatSpec:
    """A row format: the task kind it feeds, the fields that identify it, and its converter."""

    name: str
    kind: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    convert: Callable[[dict[str, Any]], dict[str, Any]]
    description: str


def _text(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and field == "label":
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"{field}: expected a non-empty string, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _messages(value: Any, field: str = "messages") -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{field}: expected a non-empty list of {{role, content}} objects")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowError(f"{field}[{i}]: expected an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowError(f"{field}[{i}].role: expected one of {', '.join(ROLES)}, got {_short(role)}")
        if content is None and message.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise RowError(f"{field}[{i}].content: expected a string, got {type(content).__name__}")
        clean: dict[str, Any] = {"role": role, "content": content}
        for extra in ("weight", "tool_calls", "tool_call_id", "name", "reasoning_content"):
            if extra in message and message[extra] is not None:
                clean[extra] = message[extra]
        if "weight" in clean and clean["weight"] not in (0, 1):
            raise RowError(f"{field}[{i}].weight: expected 0 or 1, got {_short(clean['weight'])}")
        if not isinstance(clean.get("reasoning_content", ""), str):
            got = _short(clean["reasoning_content"])
            raise RowError(f"{field}[{i}].reasoning_content: expected a string, got {got}")
        try:
            clean = separate(clean, f"{field}[{i}]")
        except ReasoningError as exc:
            raise RowError(str(exc)) from None
        out.append(clean)
    _check_order(out, field)
    return out


def _check_order(messages: list[dict[str, Any]], field: str) -> None:
    """A system message only first; user and assistant turns alternate, with an assistant's tool
    calls answered by `tool` messages before it goes on; the last turn is learned."""
    for i, message in enumerate(messages):
        if message["role"] == "system" and i != 0:
            raise RowError(f"{field}[{i}].role: a system message may only come first")
    try:
        check_conversation(messages, field)
    except ToolCallError as exc:
        raise RowError(str(exc)) from None
    turns = [(i, m) for i, m in enumerate(messages) if m["role"] in ("user", "assistant", "tool")]
    for (_, previous), (i, message) in pairwise(turns):
        role = message["role"]
        answered = previous["role"] == "tool" or (
            previous["role"] == "assistant" and previous.get("tool_calls")
        )
        if role == previous["role"] and role != "tool" and not (role == "assistant" and answered):
            raise RowError(f"{field}[{i}].role: two {role} turns in a row; user and assistant must alternate")
        if previous.get("tool_calls") and role != "tool":
            raise RowError(f"{field}[{i}].role: the tool calls of {field}[{i - 1}] need tool messages first")
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise RowError(f"{field}[{last}].role: the last message must be the assistant's answer to learn")
    if not messages[last]["content"].strip() and not messages[last].get("tool_calls"):
        raise RowError(f"{field}[{last}].content: the assistant answer is empty")


def _meta(row: dict[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


def _chat(row: dict[str, Any]) -> dict[str, Any]:
    record = {"messages": _messages(row.get("messages")), **_tools(row)}
    return {**record, **_meta(row, ("messages", "tools"))}


def _sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    conversation = row.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise RowError("conversations: expected a non-empty list of {from, value} objects")
    messages = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict):
            raise RowError(f"conversations[{i}]: expected an object with from and value")
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise RowError(
                f"conversations[{i}].from: unknown speaker {_short(speaker)}; expected one of "
                f"{', '.join(sorted(SHAREGPT_ROLES))}"
            )
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get("value")})
    if isinstance(row.get("system"), str) and row["system"].strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": row["system"]})
    return {"messages": _messages(messages, "conversations"), **_meta(row, ("conversations", "system"))}


def _prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    messages = [
        {"role": "user", "content": _text(row, "prompt")},
        {"role": "assistant", "content": _text(row, "completion")},
    ]
    return {"messages": messages, **_meta(row, ("prompt", "completion"))}


def _alpaca(row: dict[str, Any]) -> dict[str, Any]:
    instruction, output = _text(row, "instruction"), _text(row, "output")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError(f"input: expected a string, got {type(extra).__name__}")
    messages = [
        {"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction},
        {"role": "assistant", "content": output},
    ]
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.insert(0, {"role": "system", "content": row["system"]})
    return {"messages": messages, **_meta(row, ("instruction", "input", "output", "system"))}


def _text_label(row: dict[str, Any]) -> dict[str, Any]:
    return {"text": _text(row, "text"), "label": _text(row, "label"), **_meta(row, ("text", "label"))}


def _side(row: dict[str, Any], field: str) -> str | list[dict[str, Any]]:
    value = row.get(field)
    if isinstance(value, list):
        return _messages(value, field) if field != "prompt" else _prompt_messages(value)
    return _text(row, field)


def _prompt_messages(value: list[Any]) -> list[dict[str, Any]]:
    if not value or not all(isinstance(m, dict) and m.get("role") in ROLES for m in value):
        raise RowError("prompt: expected a string or a list of {role, content} messages")
    return as_messages(value, "user")


def _tools(row: dict[str, Any]) -> dict[str, Any]:
    """The row's tool definitions, checked: `{"tools": [...]}`, or nothing when it offers none."""
    if not row.get("tools"):
        return {}
    try:
        check_tools(row["tools"])
    except ToolCallError as exc:
        raise RowError(str(exc)) from None
    return {"tools": row["tools"]}


def _preference(row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = _side(row, "chosen"), _side(row, "rejected")
    if "prompt" in row and row["prompt"] not in (None, ""):
        prompt = _side(row, "prompt")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen, rejected = split_shared_prompt(chosen, rejected)
    else:
        prompt = ""
    if chosen == rejected:
        raise RowError("chosen and rejected are identical: the pair teaches nothing")
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_tools(row)}
    return {**record, **_meta(row, ("prompt", "chosen", "rejected", "tools"))}


_THUMBS = {
    "true": True, "1": True, "up": True, "good": True, "yes": True, "desirable": True, "+1": True,
    "false": False, "0": False, "down": False, "bad": False, "no": False, "undesirable": False, "-1": False,
}  # fmt: skip


def _unpaired(row: dict[str, Any]) -> dict[str, Any]:
    """One answer with a thumbs-up or thumbs-down (KTO's unpaired preference rows)."""
    label = row.get("label")
    if not isinstance(label, bool):
        label = _THUMBS.get(str(label).strip().casefold()) if isinstance(label, (str, int)) else None
    if label is None:
        raise RowError(
            f"label: expected true/false (or up/down, good/bad, 1/0), got {_short(row.get('label'))}"
        )
    record = {"prompt": _side(row, "prompt"), "completion": _side(row, "completion"), "label": label}
    return {**record, **_tools(row), **_meta(row, ("prompt", "completion", "label", "tools"))}


_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant|User|System):[ \t]?", re.IGNORECASE)
_ROLES = {"human": "user", "user": "user", "assistant": "assistant", "system": "system"}


def transcript_messages(text: str) -> list[dict[str, str]]:
    """A `Human:`/`Assistant:` transcript as chat messages; any other text is one user message.

    The empty assistant turn a prompt ends with (`...\\n\\nAssistant:`) is dropped.
    """
    marks = list(_TURN.finditer(text))
    if not marks:
        return [{"role": "user", "content": text.strip()}]
    messages = []
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        content = text[mark.end() : following.start() if following else len(text)].strip()
        messages.append({"role": _ROLES[mark.group(1).lower()], "content": content})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def as_messages(value: str | list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """A prompt (`role` user) or an answer (`role` assistant) as a list of chat messages (tool calls,
    their ids and reasoning traces kept)."""
    if isinstance(value, list):
        return [
            {"role": m["role"], "content": m.get("content") or ""}
            | {k: m[k] for k in MESSAGE_EXTRAS if m.get(k) is not None}
            for m in value
        ]
    if role == "user":
        return transcript_messages(value)
    return [{"role": "assistant", "content": value.strip()}]


def split_shared_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two full transcripts into their shared prompt and the two different answers.

    The prompt ends at the last assistant marker (or whitespace) inside the common prefix, so that
    no answer starts mid-word.
    """
    n = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        n += 1
    prefix = chosen[:n]
    for marker in ("\n\nAssistant:", "<|im_start|>assistant\n", "\nassistant\n"):
        cut = prefix.rfind(marker)
        if cut >= 0:
            n = cut + len(marker)
            break
    else:
        while n > 0 and not chosen[n - 1].isspace():
            n -= 1
    if not chosen[n:].strip() or not rejected[n:].strip():
        raise RowError("chosen/rejected: after the shared prompt one of the answers is empty")
    return chosen[:n], chosen[n:], rejected[n:]


def _ranking(row: dict[str, Any]) -> dict[str, Any]:
    """A prompt with ranked responses; expanded to preference pairs by `expand_rankings`."""
    prompt = _text(row, "prompt")
    responses = row.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise RowError("responses: expected a list of at least two responses")
    if not all(isinstance(r, str) and r.strip() for r in responses):
        raise RowError("responses: every response must be a non-empty string")
    if "ranks" in row:
        order = row["ranks"]
        numeric = isinstance(order, list) and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in order
        )
        if not numeric or len(set(order)) != len(order) or len(order) != len(responses):
            raise RowError(
                f"ranks: expected one distinct number per response (1 = best), got {_short(order)}"
            )
        scores = [-float(r) for r in order]
    elif "scores" in row:
        scores = row["scores"]
        if (
            not isinstance(scores, list)
            or len(scores) != len(responses)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)
        ):
            raise RowError("scores: expected one number per response (higher = better)")
    else:  # listed best first
        scores = [float(-i) for i in range(len(responses))]
    return {
        "prompt": prompt,
        "responses": responses,
        "scores": [float(s) for s in scores],
        **_meta(row, ("prompt", "responses", "ranks", "scores")),
    }


def expand_rankings(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ordered pair of a ranked record as a preference row, with the score gap as `margin`."""
    pairs = []
    meta = _meta(record, ("prompt", "responses", "scores"))
    items = list(zip(record["responses"], record["scores"], strict=True))
    for i, (better, s_better) in enumerate(items):
        for worse, s_worse in items[i + 1 :]:
            if s_better == s_worse:
                continue
            chosen, rejected = (better, worse) if s_better > s_worse else (worse, better)
            pairs.append(
                {
                    "prompt": record["prompt"],
                    "chosen": chosen,
                    "rejected": rejected,
                    "margin": abs(s_better - s_worse),
                    **meta,
                }
            )
    return pairs


def _raw_text(row: dict[str, Any]) -> dict[str, Any]:
    return {"text": _text(row, "text"), **_meta(row, ("text",))}


def _tagging(row: dict[str, Any]) -> dict[str, Any]:
    tokens, tags = row.get("tokens"), row.get("tags", row.get("ner_tags"))
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise RowError("tokens: expected a non-empty list of strings")
    if not isinstance(tags, list) or len(tags) != len(tokens):
        raise RowError(
            f"tags: expected one tag per token ({len(tokens)}), got "
            f"{len(tags) if isinstance(tags, list) else _short(tags)}"
        )
    return {"tokens": tokens, "tags": [str(t) for t in tags], **_meta(row, ("tokens", "tags", "ner_tags"))}


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in [
        FormatSpec(
            "chat", "sft", ("messages",), ("tools",), _chat, "OpenAI chat: messages with role/content"
        ),
        FormatSpec(
            "sharegpt",
            "sft",
            ("conversations",),
            ("system",),
            _sharegpt,
            "ShareGPT: conversations with from/value",
        ),
        FormatSpec(
            "prompt_completion",
            "sft",
            ("prompt", "completion"),
            (),
            _prompt_completion,
            "prompt and completion strings",
        ),
        FormatSpec(
            "alpaca",
            "sft",
            ("instruction", "output"),
            ("input", "system"),
            _alpaca,
            "alpaca: instruction, input, output",
        ),
        FormatSpec(
            "text_label", "classification", ("text", "label"), (), _text_label, "text with a class label"
        ),
        FormatSpec(
            "preference",
            "preference",
            ("chosen", "rejected"),
            ("prompt", "tools"),
            _preference,
            "chosen/rejected pairs, with or without a shared prompt",
        ),
        FormatSpec(
            "ranking",
            "preference",
            ("prompt", "responses"),
            ("ranks", "scores"),
            _ranking,
            "a prompt with ranked responses (expanded to pairs)",
        ),
        FormatSpec(
            "feedback",
            "unpaired",
            ("prompt", "completion", "label"),
            ("tools",),
            _unpaired,
            "one answer with a thumbs-up/down label (KTO)",
        ),
        FormatSpec("text", "text", ("text",), (), _raw_text, "raw text for continued pre-training"),
        FormatSpec(
            "tagging",
            "tagging",
            ("tokens",),
            ("tags", "ner_tags"),
            _tagging,
            "tokens with one tag each (NER); also CoNLL columns",
        ),
    ]
}


@dataclass(frozen=True)
class Detection:
    """Which format the rows are in, and how sure that is."""

    format: str
    confidence: float  # share of sampled rows that match it
    votes: dict[str, int]  # format -> sampled rows that match it best (`unknown` for none)
    sampled: int
    columns: dict[str, str] = dataclass_field(default_factory=dict)  # canonical field -> column, read by name

    def describe(self) -> str:
        others = ", ".join(f"{name} {count}" for name, count in self.votes.items() if name != self.format)
        return (
            f"{self.format} ({100 * self.confidence:.0f}% of {self.sampled} sampled rows"
            + (f"; others: {others}" if others else "")
            + (f"; {describe_columns(self.columns)}" if self.columns else "")
            + ")"
        )


def describe_columns(columns: dict[str, str]) -> str:
    """How `detect_format` read columns by their names, and what overrides it."""
    read_as = ", ".join(f"{canonical} ← {column}" for canonical, column in columns.items())
    return f"columns read as {read_as}: data.columns or data.format overrides"


# Column names that commonly mean a canonical field, by the format they make. Tried, in this order,
# only when no format fits the rows as they are, or only raw text does (which would train on one
# column and ignore the rest): the mapping a practitioner would otherwise write in data.columns.
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "alpaca": {"instruction": ("instruction",), "output": ("output", "response", "answer")},
    "prompt_completion": {
        "prompt": (
            "prompt", "question", "query", "input", "dialogue", "dialog", "conversation", "document",
            "article", "passage", "source", "text",
        ),
        "completion": (
            "completion", "answer", "response", "output", "summary", "highlights", "reply", "target",
        ),
    },
    "text_label": {
        "text": ("text", "sentence", "content", "utterance", "review", "tweet", "comment", "document"),
        "label": ("label", "category", "intent", "class", "sentiment", "emotion"),
    },
}  # fmt: skip


def infer_columns(rows: list[dict[str, Any]]) -> tuple[str, dict[str, str]] | None:
    """A format and the columns (canonical field -> column) that the rows' column names suggest,
    or None. A label column must look like classes: short scalar values that repeat."""
    names: dict[str, str] = {}
    for row in rows:
        for key in row:
            names.setdefault(key.lower(), key)
    for fmt, fields in SYNONYMS.items():
        mapping: dict[str, str] = {}
        for canonical, candidates in fields.items():
            column = next(
                (names[c] for c in candidates if c in names and names[c] not in mapping.values()), None
            )
            if column is None:
                break
            mapping[canonical] = column
        else:
            if fmt == "text_label" and not _looks_like_classes([row.get(mapping["label"]) for row in rows]):
                continue
            renamed = {canonical: column for canonical, column in mapping.items() if canonical != column}
            if renamed:
                return fmt, renamed
    return None


def _looks_like_classes(values: list[Any]) -> bool:
    present = [v for v in values if v is not None and v != ""]
    if not present or not all(isinstance(v, str | int | bool) for v in present):
        return False
    words = sum(len(str(v).split()) for v in present) / len(present)
    return words <= 5 and len(set(map(str, present))) <= max(2, len(present) // 2)


def match_format(row: dict[str, Any]) -> str | None:
    """The most specific format whose identifying fields the row has, or None."""
    best: tuple[int, str] | None = None
    for spec in FORMATS.values():
        if all(field in row for field in spec.required):
            score = len(spec.required) * 10 + sum(field in row for field in spec.optional)
            if best is None or score > best[0]:
                best = (score, spec.name)
    return best[1] if best else None


def detect_format(rows: list[dict[str, Any]], sample: int = 1000) -> Detection:
    """Vote over (up to `sample`) rows for the format that fits them best; when none fits, or only
    raw text, read their columns by name (`infer_columns`, reported in `Detection.columns`).

    Raises:
        RowError: when no sampled row matches any format, listing the fields seen.
    """
    step = max(1, len(rows) // sample)
    picked = rows[::step][:sample]
    votes = Counter(match_format(row) or "unknown" for row in picked)
    known = [(count, name) for name, count in votes.items() if name != "unknown"]
    columns: dict[str, str] = {}
    if {name for _, name in known} <= {"text"} and (inferred := infer_columns(picked)) is not None:
        columns = inferred[1]
        votes = Counter(match_format(apply_mapping(row, columns)) or "unknown" for row in picked)
        known = [(count, name) for name, count in votes.items() if name != "unknown"]
    if not known:
        fields = Counter(field for row in picked for field in row)
        seen = ", ".join(f for f, _ in fields.most_common(8)) or "none"
        raise RowError(
            f"no known row format (fields seen: {seen}); "
            f"formats: {', '.join(FORMATS)}. Map odd column names with data.columns "
            "(e.g. --map text=content) or force one with data.format"
        )
    count, name = max(known)
    return Detection(
        format=name,
        confidence=count / len(picked),
        votes=dict(votes.most_common()),
        sampled=len(picked),
        columns=columns,
    )


def apply_mapping(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """Rename source columns to canonical fields: `mapping` is canonical name -> source column."""
    if not mapping:
        return row
    renamed = dict(row)
    for canonical, source in mapping.items():
        if source in renamed:
            renamed[canonical] = renamed.pop(source)
    return renamed


def convert(row: dict[str, Any], fmt: str, system_prompt: str | None = None) -> dict[str, Any]:
    """Convert one row of format `fmt` to its kind's canonical record.

    Raises:
        RowError: with the field path of the first problem.
    """
    spec = FORMATS.get(fmt)
    if spec is None:
        raise RowError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    missing = [field for field in spec.required if field not in row]
    if missing:
        raise RowError(f"{', '.join(missing)}: missing (a {fmt} row needs {', '.join(spec.required)})")
    record = spec.convert(row)
    if system_prompt and spec.kind == "sft" and record["messages"][0]["role"] != "system":
        record["messages"].insert(0, {"role": "system", "content": system_prompt})
    return record


def kind_of(fmt: str) -> str:
    return FORMATS[fmt].kind
