"""Anti-forgetting: replay of general data, EWC and L2-SP penalties, and the forgetting probe.

The probe runs on every run: the loss on held-out general rows (answers only) before and after
training, so forgetting is always visible. EWC and L2-SP add a penalty to TRL's loss through one
narrow override of `compute_loss`; the trainer is otherwise TRL's own.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from trl import SFTTrainer

from tunesmith.config import ForgettingConfig, ProjectConfig


@dataclass(frozen=True)
class Remedy:
    """A guard to train again with after a run forgot too much: what it changes, and the config."""

    label: str
    config: ProjectConfig


def remedies(config: ProjectConfig) -> list[Remedy]:
    """The guards tried in turn (`train.forgetting.auto`, and `tunesmith improve` when its forgetting
    gate fails): replay of general data (twice the share when replay was on already), then replay
    and a third of the learning rate. Replay measured best on the quickstart; a lower rate next."""
    train, guard = config.train, config.train.forgetting
    share = min(1.0, guard.replay_fraction * 2) if guard.method == "replay" else guard.replay_fraction
    replay = train.model_copy(
        update={"forgetting": guard.model_copy(update={"method": "replay", "replay_fraction": share})}
    )
    slower = replay.model_copy(update={"learning_rate": train.learning_rate / 3})
    return [
        Remedy(
            f"replay of general data ({share:.0%} of the train rows)",
            config.model_copy(update={"train": replay}),
        ),
        Remedy(
            f"replay and a third of the learning rate ({slower.learning_rate:.2g})",
            config.model_copy(update={"train": slower}),
        ),
    ][: guard.max_attempts]


def forgetting_warning(metrics: dict[str, Any], guard: dict[str, Any]) -> str | None:
    """What to say when a run's probe rose past `train.forgetting.max_increase` (`guard` is the
    run's recorded `train.forgetting`), naming the guard to try next; None when it held."""
    rise, bound = forgetting_rise(metrics), float(guard.get("max_increase", 0.05))
    if rise is None or rise <= bound:
        return None
    if guard.get("method") == "none":
        fix = "train.forgetting.method: replay (or train.forgetting.auto: true, which tries it for you)"
    else:
        fix = (
            "train.forgetting.auto: true (more replay, then a third of the learning rate), or general data "
            "closer to your use in train.forgetting.general_data"
        )
    return (
        f"the general answer loss rose {rise:+.1%}, more than train.forgetting.max_increase "
        f"(+{bound:.0%}): this version forgets what the base model knew; set {fix}"
    )


def forgetting_rise(metrics: dict[str, Any]) -> float | None:
    """The relative rise of the probe's general answer loss over a run (None when no probe ran)."""
    before, after = metrics.get("general_loss_base"), metrics.get("general_loss_after")
    if before is None or after is None or not before:
        return None
    return float(after / before - 1)


def general_rows(
    config: ForgettingConfig, base_dir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(replay rows, probe rows) of the general set: rows marked `"use": "probe"` are the probe."""
    if config.general_data is None:
        text = resources.files("tunesmith").joinpath("demo", "general.jsonl").read_text(encoding="utf-8")
    else:
        path = Path(config.general_data)
        text = (path if path.is_absolute() else base_dir / path).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    probe = [{"messages": r["messages"]} for r in rows if r.get("use") == "probe"]
    replay = [{"messages": r["messages"]} for r in rows if r.get("use") != "probe"]
    return replay, probe


def probe_baseline(
    config: ForgettingConfig, base_dir: Path, model: Any, tokenizer: Any, enabled: bool = True
) -> tuple[list[dict[str, Any]], float | None]:
    """The forgetting probe's rows and the starting model's answer loss on them; ([], None) when off."""
    if not (enabled and config.probe):
        return [], None
    probe = general_rows(config, base_dir)[1]
    return probe, answer_loss(model, tokenizer, probe) if probe else None


def replay_mix(
    train_rows: list[dict[str, Any]], replay: list[dict[str, Any]], fraction: float, seed: int
) -> list[dict[str, Any]]:
    """`train_rows` plus general rows amounting to `fraction` of them (cycled when the set is small)."""
    wanted = max(1, round(len(train_rows) * fraction))
    rng = random.Random(seed)
    picked = [replay[i % len(replay)] for i in range(wanted)]
    mixed = train_rows + picked
    rng.shuffle(mixed)
    return mixed


def answer_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 8) -> float:
    """Mean cross-entropy per answer token of `rows` (chat records), with the chat template of training."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                inputs, labels = [], []
                for row in batch:
                    prompt = tokenizer.apply_chat_template(
                        row["messages"][:-1], add_generation_prompt=True, tokenize=False
                    )
                    full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
                    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
                    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                    inputs.append(ids)
                    labels.append([-100] * n_prompt + ids[n_prompt:])
                width = max(len(x) for x in inputs)
                pad = tokenizer.pad_token_id
                input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in inputs], device=model.device)
                attention = torch.tensor(
                    [[1] * len(x) + [0] * (width - len(x)) for x in inputs], device=model.device
                )
                target = torch.tensor([y + [-100] * (width - len(y)) for y in labels], device=model.device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
                shifted = target[:, 1:]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)),
                    shifted.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                )
                total += float(loss)
                count += int((shifted != -100).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


class PenalizedSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer plus a pull of the trainable weights towards where they started.

    L2-SP: alpha/2 · Σ (θ - θ₀)². EWC: λ/2 · Σ F·(θ - θ₀)², F the diagonal Fisher information
    estimated on general data before training. Only `compute_loss` is overridden.
    """

    def __init__(self, *args: Any, penalty: str, strength: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.penalty_kind = penalty
        self.penalty_strength = strength
        model: Any = self.model
        self.anchors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.fisher: dict[str, Any] = {}

    def estimate_fisher(self, rows: list[dict[str, Any]], tokenizer: Any) -> None:
        """Diagonal Fisher: the mean squared gradient of the answer loss over `rows`, per trainable weight."""
        import torch

        model: Any = self.model
        sums = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
        for row in rows:
            prompt = tokenizer.apply_chat_template(
                row["messages"][:-1], add_generation_prompt=True, tokenize=False
            )
            full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
            ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            labels = ids.clone()
            labels[:, :n_prompt] = -100
            model.zero_grad()
            model(input_ids=ids, labels=labels).loss.backward()
            for name, parameter in model.named_parameters():
                if parameter.requires_grad and parameter.grad is not None:
                    sums[name] += parameter.grad.detach() ** 2
        model.zero_grad()
        self.fisher = {n: s / max(len(rows), 1) for n, s in sums.items()}

    def compute_loss(
        self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss, outputs = result if return_outputs else (result, None)
        penalty: Any = 0.0
        unwrapped: Any = self.model  # its parameter names are the anchors' names, whatever wraps it
        for name, parameter in unwrapped.named_parameters():
            anchor = self.anchors.get(name)
            if anchor is None:
                continue
            squared = (parameter - anchor) ** 2
            penalty = (
                penalty + (self.fisher[name] * squared).sum()
                if self.penalty_kind == "ewc"
                else penalty + squared.sum()
            )
        loss = loss + self.penalty_strength / 2 * penalty
        return (loss, outputs) if return_outputs else loss
