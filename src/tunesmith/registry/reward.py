"""A registered reward-model version, loaded once and scoring answers (eval, online RL, monitoring)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from tunesmith.data.formats import as_messages
from tunesmith.models.reward import completion_text, score_conversations
from tunesmith.registry.loading import load_row
from tunesmith.registry.versions import get_version
from tunesmith.workspace import Workspace

RewardFn = Callable[..., list[float]]


class RewardError(ValueError):
    """A reward that cannot be used: the message names the setting and what to do."""


class RewardModel:
    """A registered reward-model version, loaded once, scoring (prompt, answer) pairs; thread-safe."""

    def __init__(self, workspace: Workspace, ref: str, max_length: int | None = None) -> None:
        version = get_version(workspace, ref)
        objective = version.config.get("train", {}).get("objective", "sft")
        if objective != "reward":
            raise RewardError(
                f"{version.name} is a {objective} version, not a reward model; train one with "
                f"train.objective: reward on preference pairs"
            )
        self.version = version
        self.model, self.tokenizer = load_row(version, workspace)
        self.max_length = max_length or int(version.config.get("train", {}).get("max_length", 1024))
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(self.version.name)

    def score(
        self,
        prompts: Sequence[str | list[dict[str, Any]]],
        answers: Sequence[str | list[dict[str, Any]]],
        label: str | None = None,
    ) -> list[float]:
        """The reward of each answer to its prompt (a string, or chat messages)."""
        conversations = [
            as_messages(p, "user") + as_messages(a, "assistant")
            for p, a in zip(prompts, answers, strict=True)
        ]
        with self._lock:
            return score_conversations(
                self.model, self.tokenizer, conversations, self.max_length, label=label
            )

    def as_reward_function(self) -> RewardFn:
        def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
            return self.score(prompts, [completion_text(c) for c in completions])

        reward.__name__ = self.name
        return reward
