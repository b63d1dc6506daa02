"""Rewards for online RL: a registered reward model's scores, answer checkers, and user functions.

All three share TRL's reward-function shape, `f(prompts, completions, **columns) -> list[float]`, so
one list of them drives an RL run, and a reward model also scores answers in eval and monitoring.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.answers import CHECKERS
from tunesmith.config import RewardSpec
from tunesmith.models.reward import completion_text
from tunesmith.registry.reward import RewardError, RewardModel

if TYPE_CHECKING:
    from tunesmith.workspace import Workspace

RewardFn = Callable[..., list[float]]


def checker_function(name: str) -> RewardFn:
    """A checker as a TRL reward function; it reads the row's `reference` column."""
    check = CHECKERS[name]

    def reward(prompts: list[Any], completions: list[Any], reference: list[str], **_: Any) -> list[float]:
        return [check(completion_text(c), ref) for c, ref in zip(completions, reference, strict=True)]

    reward.__name__ = name
    return reward


def load_function(spec: str, base_dir: Path) -> RewardFn:
    """`module:function` (importable) or `path/to/file.py:function` (relative to the config's folder)."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target) if Path(target).is_absolute() else base_dir / target
        if not path.is_file():
            raise RewardError(f"train.rl.rewards: function file {path} does not exist")
        module_name = f"tunesmith_reward_{path.stem}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise RewardError(f"train.rl.rewards: cannot import {target!r} ({exc})") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardError(f"train.rl.rewards: {spec} is not a function in {target}")
    return fn


def reward_functions(
    specs: list[RewardSpec], workspace: Workspace, base_dir: Path
) -> tuple[list[RewardFn], list[float]]:
    """The configured rewards as TRL reward functions, named for the logs, and their weights."""
    functions: list[RewardFn] = []
    for spec in specs:
        if spec.model is not None:
            fn = RewardModel(workspace, spec.model).as_reward_function()
        elif spec.checker is not None:
            fn = checker_function(spec.checker)
        else:
            assert spec.function is not None
            fn = _named(load_function(spec.function, base_dir), spec.label)
        fn.__name__ = spec.label
        functions.append(fn)
    return functions, [spec.weight for spec in specs]


def _named(fn: RewardFn, name: str) -> RewardFn:
    def reward(*args: Any, **kwargs: Any) -> list[float]:
        return [float(x) if x is not None else float("nan") for x in fn(*args, **kwargs)]

    reward.__name__ = name
    return reward
