"""Scores of tool calls: did the answer call the right functions, with the right arguments, in
valid JSON, and would the call run against the tool's schema (an AST-style check in the manner of
the Berkeley Function-Calling Leaderboard)?

Each item's expected calls are its reference answer's `tool_calls` (none: the right answer calls
nothing, BFCL's irrelevance case). `tool_name` and `tool_args` count every item; `tool_ast` counts the
items that expect a call, `tool_abstain` those that expect none, `tool_json` the calls attempted.
The answer's calls are read from the generated text with
`tunesmith.toolcalls.parse_calls`, as the server reads them. Calls are matched regardless of order
(parallel calls).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tunesmith.toolcalls import Call, canonical, message_calls, parse_calls

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}
_STANDARDISE = re.compile(r"[\s,./\-_*^'\"]")


def expected_calls(item: dict[str, Any]) -> list[Call]:
    """The calls the item's reference answer makes."""
    return message_calls(item["messages"][-1])


def _names(calls: list[Call]) -> Counter[str]:
    return Counter(c.name for c in calls)


def _exact(calls: list[Call]) -> Counter[str]:
    import json

    return Counter(json.dumps([c.name, canonical(c.arguments)], sort_keys=True) for c in calls)


def tool_name(answer: str, reference: str, item: dict[str, Any]) -> float:
    """Share of items whose answer calls exactly the expected functions (nothing, when none is expected)."""
    return float(_names(parse_calls(answer).calls) == _names(expected_calls(item)))


def tool_args(answer: str, reference: str, item: dict[str, Any]) -> float:
    """Share of items whose calls match the expected ones exactly, arguments compared as JSON values."""
    return float(_exact(parse_calls(answer).calls) == _exact(expected_calls(item)))


StatsFn = Callable[[Sequence[Any], Sequence[Any], Sequence[dict[str, Any]], Any], np.ndarray]


def _per_item(row: Callable[[str, dict[str, Any]], tuple[float, float]]) -> StatsFn:
    """The stats function of a share: `row(answer, item)` gives each item's (count, out of)."""

    def stats(answers: Sequence[Any], references: Sequence[Any], items: Sequence[dict[str, Any]], _: Any):
        rows = [row(str(answer), item) for answer, item in zip(answers, items, strict=True)]
        return np.array(rows, dtype=np.float64).reshape(-1, 2)

    stats.__doc__ = row.__doc__
    return stats


def _json_row(answer: str, item: dict[str, Any]) -> tuple[float, float]:
    """Per item: (calls written as valid JSON with a name and an arguments object, calls attempted)."""
    parsed = parse_calls(answer)
    return float(len(parsed.calls)), float(parsed.attempted)


def _ast_row(answer: str, item: dict[str, Any]) -> tuple[float, float]:
    """Per item that expects a call: (its calls would all run, 1); (0, 0) for the others."""
    expected = expected_calls(item)
    return (_all_run(answer, item, expected), 1.0) if expected else (0.0, 0.0)


def _abstain_row(answer: str, item: dict[str, Any]) -> tuple[float, float]:
    """Per item that expects no call: (the answer calls nothing, 1); (0, 0) for the others."""
    return (0.0, 0.0) if expected_calls(item) else (float(not parse_calls(answer).attempted), 1.0)


tool_json_stats, tool_ast_stats, tool_abstain_stats = map(_per_item, (_json_row, _ast_row, _abstain_row))


def share(sums: np.ndarray) -> float:
    """The first sum over the second (0 when no item counts)."""
    return float(sums[0] / sums[1]) if sums[1] else 0.0


def _all_run(answer: str, item: dict[str, Any], expected: list[Call]) -> float:
    """1 when every call of the answer would run (see the module docstring), matched to the
    expected calls in any order."""
    made = parse_calls(answer).calls
    if len(expected) != len(made):
        return 0.0
    schemas = {t.get("function", t)["name"]: t.get("function", t) for t in item.get("tools") or []}
    left = list(made)
    for want in expected:
        match = next((c for c in left if _runs(c, want, schemas.get(c.name))), None)
        if match is None:
            return 0.0
        left.remove(match)
    return 1.0


def _runs(call: Call, want: Call, schema: dict[str, Any] | None) -> bool:
    if schema is None or call.name != want.name:
        return False
    parameters = schema.get("parameters") or {}
    properties: dict[str, Any] = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    if not required <= call.arguments.keys() or not call.arguments.keys() <= properties.keys():
        return False
    for name, spec in properties.items():
        if name not in call.arguments:
            if name in want.arguments and want.arguments[name] != spec.get("default"):
                return False  # an optional value the answer needed but left out
            continue
        value = call.arguments[name]
        if not _typed(value, spec) or (name in want.arguments and not _same(value, want.arguments[name])):
            return False
        if "enum" in spec and value not in spec["enum"]:
            return False
    return True


def _typed(value: Any, spec: dict[str, Any]) -> bool:
    kinds = spec.get("type")
    if kinds is None:
        return True
    allowed = tuple(
        t for kind in ([kinds] if isinstance(kinds, str) else kinds) for t in _TYPES.get(kind, (object,))
    )
    if isinstance(value, bool) and bool not in allowed:
        return False  # JSON true is not a number
    return isinstance(value, allowed)


def _same(value: Any, expected: Any) -> bool:
    if isinstance(value, str) and isinstance(expected, str):
        return _STANDARDISE.sub("", value).lower() == _STANDARDISE.sub("", expected).lower()
    if isinstance(value, list) and isinstance(expected, list):
        return len(value) == len(expected) and all(_same(v, e) for v, e in zip(value, expected, strict=True))
    if isinstance(value, dict) and isinstance(expected, dict):
        return value.keys() == expected.keys() and all(_same(value[k], expected[k]) for k in value)
    return bool(canonical(value) == canonical(expected))
