"""Structured output: a request's `response_format` (json_object, json_schema) as a grammar that
decoding keeps every answer within, compiled by llguidance (the constrained-decoding library vLLM,
SGLang and llama.cpp use), whose token masks cost microseconds on a CPU.

`json_grammar` turns a JSON schema into a grammar (refusing one llguidance cannot follow);
`TokenMasks` holds one matcher per decoded row and masks the logits of each step.
"""

from __future__ import annotations

import functools
import json
from typing import Any

# One line, `{"a": 1, "b": [2, 3]}`, as OpenAI's answers are laid out; without it a model could pad an
# answer with whitespace until max_tokens. A schema's own `x-guidance` options win.
JSON_LAYOUT: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A JSON schema that cannot be followed (unsupported keywords, contradictions); says which."""


def json_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar of a JSON schema.

    Raises:
        GrammarError: the schema is not one llguidance can enforce.
    """
    return _compiled(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _compiled(schema: str) -> str:
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
    except ValueError as exc:
        raise GrammarError(f"response_format json_schema: {exc}") from None
    return _validated(grammar, "response_format json_schema cannot be enforced")


def _validated(grammar: Any, refusal: str) -> str:
    """`grammar` once llguidance has checked it can be followed; `refusal` starts the error if not."""
    from llguidance import LLMatcher

    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise GrammarError(f"{refusal}: {messages[0]}")
    return str(grammar)


def grammar_tokenizer(tokenizer: Any, vocab_size: int, eos: set[int]) -> Any:
    """The llguidance view of a Hugging Face fast tokenizer (about a second to build: keep it)."""
    from llguidance.hf import from_tokenizer

    return from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eos))


class TokenMasks:
    """One grammar matcher per row of a batch; rows without a grammar are left alone."""

    def __init__(self, tokenizer: Any, grammars: list[str | None], eos: set[int]) -> None:
        from llguidance import LLMatcher

        self.eos = sorted(eos)
        self.matchers = [
            LLMatcher(tokenizer, grammar, log_level=0) if grammar is not None else None
            for grammar in grammars
        ]

    def apply(self, row: int, logits: Any) -> Any:
        """`logits` (one row's, 1-D) with every token the grammar forbids next at -inf."""
        import torch

        matcher = self.matchers[row]
        if matcher is None:
            return logits
        allowed = torch.frombuffer(bytearray(matcher.compute_logit_bias()), dtype=torch.uint8)
        width = min(len(allowed), logits.shape[-1])
        masked = torch.full_like(logits, float("-inf"))
        keep = allowed[:width].bool()
        if not keep.any():  # the matcher failed (it cannot happen for a token it allowed): end the row
            keep[self.eos] = True
        masked[:width][keep] = logits[:width][keep]
        return masked

    def consume(self, row: int, token: int) -> None:
        matcher = self.matchers[row]
        if matcher is not None:
            matcher.consume_token(token)


def tool_grammar(tools: list[dict[str, Any]], parallel: bool = True) -> str:
    """The grammar of an answer that must call one of `tools` (tool_choice required or a named
    function): `<tool_call>` blocks in the Hermes format (`tunesmith.toolcalls`), each a JSON object
    with a function's name and arguments that follow its parameters' schema; several when `parallel`.

    Raises:
        GrammarError: a tool's parameters are not a schema llguidance can enforce.
    """
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": JSON_LAYOUT}
    more = ' ("\\n" block)*' if parallel else ""
    block = 'block: "<tool_call>\\n" call "\\n</tool_call>"'
    return _lark(f"start: block{more}\n{block}\ncall: %json {json.dumps(schema)}\n")


@functools.lru_cache(maxsize=256)
def _lark(lark: str) -> str:
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_lark(lark)
    except (ValueError, TypeError, RuntimeError) as exc:  # a schema llguidance cannot compile
        raise GrammarError(f"tools: {exc}") from None
    return _validated(grammar, "tools: the parameters cannot be enforced")
