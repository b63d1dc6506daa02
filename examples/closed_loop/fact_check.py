"""An online scorer for the closed-loop demo: does the answer state the fact the question asks for?

Teams running an assistant usually have a check like this (a lookup of the right answer for known
questions); registered as a scorer, it scores every sampled answer, production's, the shadow's and
the canary's alike, and the rollout score gate and alert rules read it like any built-in score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.monitor.scorers import ScoringContext, register_scorer

FACTS = {
    row["prompt"].strip().lower(): row["key_facts"]
    for row in map(
        json.loads, (Path(__file__).parent / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    )
}


@register_scorer("fact", better="higher")
def fact(prompt: str, answer: str, row: dict[str, Any], ctx: ScoringContext) -> float | None:
    """Share of the question's key facts the answer states (questions the demo does not know: none)."""
    facts = FACTS.get(prompt.strip().lower())
    if facts is None:
        return None
    return sum(f.lower() in answer.lower() for f in facts) / len(facts)
