"""Online RL (`objective: rl`) on TRL's GRPOTrainer or RLOOTrainer.

Each step samples `num_generations` answers per prompt from the policy, scores them with the
configured rewards (a reward-model version, Python functions, checkers against the row's reference
answer), and moves the policy towards the answers that beat their group, with the probability
ratio clipped to `1 ± epsilon` and a KL penalty of weight `beta` to the reference (the starting
weights; with LoRA, the same network with its adapter off). Reward (per reward function), KL,
clip fractions and answer lengths are logged every step to `metrics.jsonl`, and plotted.

Rows are the data stage's SFT rows: the conversation up to the last answer is the prompt, and the
last answer is the `reference` the checkers compare against (gsm8k's `#### 72`, for instance).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.chat import chat_messages
from tunesmith.config import ProjectConfig, TrainConfig
from tunesmith.toolcalls import written_answer
from tunesmith.train.rl_audit import RewardAudit, audit_checker, audit_lines, run_audit

if TYPE_CHECKING:
    from tunesmith.train.objectives import TrainerJob


# The fields of train.rl that GRPOConfig and RLOOConfig take under the same names, and GRPO's own.
_TRL_FIELDS = {
    "num_generations", "max_completion_length", "temperature", "top_p", "beta", "epsilon", "num_iterations",
    "epsilon_high", "mask_truncated_completions",
}  # fmt: skip
_GRPO_FIELDS = {
    "loss_type": "loss_type",
    "importance_sampling": "importance_sampling_level",
    "scale_rewards": "scale_rewards",
}


def rl_rows(records: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """SFT records as RL prompts: the conversation before the last answer (earlier turns' reasoning
    traces and tool calls written in as training renders them), and that answer as reference.

    Raises:
        TrainConfigError: for rows with tools under a template that renders tools itself: TRL
            renders RL prompts with one set of tools for every row, so each row's would be lost.
    """
    from tunesmith.train.sft import TrainConfigError

    rows = []
    for n, r in enumerate(records):
        if r["messages"][-1]["role"] != "assistant":
            continue
        prompt, kwargs = chat_messages(r["messages"][:-1], tokenizer, r.get("tools"))
        if kwargs:
            raise TrainConfigError(
                f"train row {n + 1} offers tools, and this model's chat template renders tools itself: "
                "TRL renders RL and on-policy distillation prompts with one set of tools for all rows, "
                "so the row's would be lost. Train tool calls with sft or dpo, or drop the rows' tools."
            )
        rows.append({"prompt": prompt, "reference": written_answer(r["messages"][-1])})
    return rows


def rl_config(train: TrainConfig, output_dir: Path, has_eval: bool, weights: list[float]) -> Any:
    """TRL's GRPOConfig or RLOOConfig from the project's train section.

    Raises:
        TrainConfigError: when a batch of answers cannot hold whole groups of `num_generations`.
    """
    from trl import GRPOConfig, RLOOConfig

    from tunesmith.train.sft import TrainConfigError, trainer_kwargs

    rl = train.rl
    batch = train.per_device_train_batch_size * train.accumulation_steps
    if batch % rl.num_generations:
        raise TrainConfigError(
            f"train.rl.num_generations={rl.num_generations} must divide the answers per optimizer step "
            f"(batch_size x accumulation = {batch}); set train.batch_size to a multiple of it"
        )
    args_class = GRPOConfig if rl.algorithm == "grpo" else RLOOConfig
    kwargs = trainer_kwargs(train, output_dir, has_eval, args_class)
    kwargs.update(rl.model_dump(include=_TRL_FIELDS))  # train.rl's fields under TRL's names
    if rl.algorithm == "grpo":
        kwargs.update({trl_name: getattr(rl, ours) for ours, trl_name in _GRPO_FIELDS.items()})
    kwargs.update(
        reward_weights=weights,
        train_sampling_strategy="random",  # prompts have no answers yet to group by length
        logging_steps=1,  # reward, KL and clip fraction at every step
    )
    # TRL hands the checkpointing kwargs to torch, which lacks every_n_layers
    kwargs.pop("activation_checkpointing_kwargs", None)
    kwargs.update(train.args)  # what the user set there wins
    if has_eval:
        kwargs.setdefault("num_generations_eval", rl.num_generations)
    return args_class(**kwargs)


def rl_trainer(job: TrainerJob) -> Any:
    """TRL's GRPOTrainer or RLOOTrainer on `records` (SFT rows), scored by `train.rl.rewards`.

    A reward-model reward is a registered version, so it needs the workspace.
    """
    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    from tunesmith.train.rewards import reward_functions
    from tunesmith.train.sft import lora_config

    config, base, records, workspace = job.config, job.base, job.records, job.workspace
    run_dir, callbacks = job.run_dir, job.callbacks
    train = config.train
    functions, weights = reward_functions(train.rl.rewards, workspace, config.base_dir)
    audit = RewardAudit([fn.__name__ for fn in functions], weights)
    rows, val = rl_rows(records["train"], base.tokenizer), rl_rows(records.get("val", []), base.tokenizer)
    trainer_class = GRPOTrainer if train.rl.algorithm == "grpo" else RLOOTrainer
    base.tokenizer.padding_side = "left"  # generation pads on the left
    trainer = trainer_class(
        model=base.model,
        reward_funcs=list[Any](audit.wrap(functions)),
        args=rl_config(train, run_dir / "trainer", bool(val), weights),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(val) if val else None,
        processing_class=base.tokenizer,
        peft_config=lora_config(train) if train.method in ("lora", "qlora") else None,
        callbacks=callbacks,
    )
    setattr(trainer, "reward_audit", audit)  # noqa: B010 (read by finish_rl)
    return trainer


def describe_rl(config: ProjectConfig, trainer: Any) -> str:
    train = config.train
    return f"{train.method} {train.rl.algorithm.upper()} ({len(trainer.reward_funcs)} rewards)"


def finish_rl(run: Any, trainer: Any, run_dir: Path, weights_dir: Path) -> dict[str, Any]:
    """The reward curves plotted, the reward's gain, the last KL and clip fraction, and the run's
    audit (`rl_audit`): printed, written to `rl_audit.json`, its verdict kept with the version."""
    from tunesmith.progress import console
    from tunesmith.train.sft import is_main_process

    history = trainer.state.log_history
    rl = run.config.train.rl
    checker = audit_checker(rl.audit_checker, [spec.checker for spec in rl.rewards])
    audit = run_audit(history, trainer.reward_audit.samples, checker)
    if is_main_process():
        plot_rl(history, run_dir / "rewards.png")
        (run_dir / "rl_audit.json").write_text(json.dumps(audit, indent=2), encoding="utf-8")
        for line in audit_lines(audit):
            console.print(line, highlight=False, markup=False)
    verdict = {"rl_verdict": audit["verdict"], "rl_verdict_rule": audit["rule"]}
    if audit.get("top_rewarded_wrong_share") is not None:
        verdict["rl_top_rewarded_wrong_share"] = audit["top_rewarded_wrong_share"]
    return {**reward_trend(history), **verdict}


def reward_trend(history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean reward over the first and the last quarter of the steps, and the last KL and clip fraction."""
    steps = [h for h in history if "reward" in h and "eval_reward" not in h]
    if not steps:
        return {}
    quarter = max(1, len(steps) // 4)
    first = sum(h["reward"] for h in steps[:quarter]) / quarter
    last = sum(h["reward"] for h in steps[-quarter:]) / quarter
    trend = {"reward_first_quarter": first, "reward_last_quarter": last, "reward_gain": last - first}
    for key, name in (("kl", "kl_last"), ("clip_ratio/region_mean", "clip_fraction_last")):
        values = [h[key] for h in steps if key in h]
        if values:
            trend[name] = float(values[-1])
    return trend


def plot_rl(history: list[dict[str, Any]], path: Path) -> None:
    """Reward per function, KL to the reference, and the clip fraction, per step."""
    from tunesmith.plots import pyplot

    plt = pyplot()

    steps = [h for h in history if "reward" in h]
    if not steps:
        return
    per_function = sorted({k for h in steps for k in h if k.startswith("rewards/") and k.endswith("/mean")})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    x = [h["step"] for h in steps]
    axes[0].plot(x, [h["reward"] for h in steps], label="reward (weighted)", linewidth=2)
    for key in per_function:
        axes[0].plot(x, [h.get(key, float("nan")) for h in steps], label=key.split("/")[1], alpha=0.7)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("mean reward")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    for key, label in (("kl", "KL to reference"), ("clip_ratio/region_mean", "clip fraction")):
        if any(key in h for h in steps):
            axes[1].plot(x, [h.get(key, float("nan")) for h in steps], label=label)
    axes[1].set_xlabel("step")
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
