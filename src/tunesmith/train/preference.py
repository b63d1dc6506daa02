"""Preference learning on TRL: reward models (`objective: reward`) and preference optimisation of the
LM itself (`objective: dpo`: DPO and every loss of TRL's DPOTrainer, KTO, ORPO and SimPO).

Rows are the data stage's preference pairs (ranked lists arrive already expanded to pairs, with the
score gap as `margin`) or, for KTO, thumbs-up/down rows. Both become conversations, so training
sees the chat template that serving will use. A human/assistant transcript (`\\n\\nHuman: ...
\\n\\nAssistant: ...`) is split into its turns.

With LoRA the reference model is the same network with its adapter switched off (TRL does this when
no reference model is passed), so DPO and KTO keep one copy of the weights in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.chat import chat_messages
from tunesmith.config import ProjectConfig, TrainConfig
from tunesmith.data import load_split
from tunesmith.data.formats import as_messages
from tunesmith.progress import console
from tunesmith.store import DatasetVersion

if TYPE_CHECKING:
    from tunesmith.models import LoadedModel
    from tunesmith.train.objectives import TrainerJob


def _split_shared_turns(
    chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Two full conversations as their shared leading turns and the two differing endings."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def _written(
    prompt: list[dict[str, Any]], answers: list[list[dict[str, Any]]], tokenizer: Any, tools: Any
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]], dict[str, Any]]:
    """A prompt and its answers as the chat template should see them (traces, tool definitions and
    calls written in, as SFT renders them), and the `tools` column TRL passes a template that takes
    them itself (JSON text: rows' tool schemas differ, which a dataset column cannot hold)."""
    written = [chat_messages(prompt + answer, tokenizer, tools) for answer in answers]
    kwargs = written[0][1]
    cut = len(written[0][0]) - len(answers[0])
    endings = [w[len(w) - len(a) :] for (w, _), a in zip(written, answers, strict=True)]
    return written[0][0][:cut], endings, ({"tools": json.dumps(kwargs["tools"])} if kwargs else {})


def pair_messages(
    record: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A preference record as (prompt, chosen, rejected) messages; a pair of whole transcripts is
    split at its last shared turn."""
    prompt = as_messages(record["prompt"], "user") if record["prompt"] else []
    chosen, rejected = (
        as_messages(record["chosen"], "assistant"),
        as_messages(record["rejected"], "assistant"),
    )
    return (prompt, chosen, rejected) if prompt else _split_shared_turns(chosen, rejected)


def preference_rows(
    records: list[dict[str, Any]], tokenizer: Any, margin: bool = False
) -> list[dict[str, Any]]:
    """Preference records as TRL's conversational prompt/chosen/rejected rows (with `margin` if asked),
    written as the chat template should see them."""
    rows = []
    for record in records:
        prompt, chosen, rejected = pair_messages(record)
        prompt, (chosen, rejected), tools = _written(
            prompt, [chosen, rejected], tokenizer, record.get("tools")
        )
        row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected, **tools}
        if margin:
            row["margin"] = float(record.get("margin", 0.0))
        rows.append(row)
    return rows


def unpaired_rows(records: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """Thumbs-up/down rows for KTO; preference pairs are split into one good and one bad answer."""
    rows = []
    for record in records:
        if "completion" in record:
            prompt, (completion,), tools = _written(
                as_messages(record["prompt"], "user"),
                [as_messages(record["completion"], "assistant")],
                tokenizer,
                record.get("tools"),
            )
            rows.append({"prompt": prompt, "completion": completion, "label": bool(record["label"]), **tools})
            continue
        (pair,) = preference_rows([record], tokenizer)
        extra = {"tools": pair["tools"]} if "tools" in pair else {}
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True, **extra})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False, **extra})
    return rows


def _config(args_class: Any, train: TrainConfig, output_dir: Path, has_eval: bool, **extra: Any) -> Any:
    from tunesmith.train.sft import trainer_kwargs

    kwargs = trainer_kwargs(train, output_dir, has_eval, args_class)
    kwargs.setdefault("max_length", train.max_length)
    kwargs["train_sampling_strategy"] = "random"  # pairs have no single length to group by
    if args_class.__name__ != "RewardConfig":
        # These trainers hand the kwargs to torch's checkpoint, which does not know every_n_layers.
        kwargs.pop("activation_checkpointing_kwargs", None)
    for key, value in extra.items():
        if key == "train_sampling_strategy" or key not in train.args:
            kwargs[key] = value
    return args_class(**kwargs)


def reward_trainer(
    train: TrainConfig, base: LoadedModel, rows: list[dict], val: list[dict], run_dir: Path, callbacks: list
) -> Any:
    """TRL's RewardTrainer on a one-output sequence-classification model (the pad token set)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    args = _config(RewardConfig, train, run_dir / "trainer", bool(val))
    lora = (
        LoraConfig(task_type="SEQ_CLS", **train.lora.model_dump())
        if train.method in ("lora", "qlora")
        else None
    )
    return RewardTrainer(
        model=base.model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(val) if val else None,
        processing_class=base.tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )


def dpo_trainer(
    train: TrainConfig, base: LoadedModel, rows: list[dict], val: list[dict], run_dir: Path, callbacks: list
) -> Any:
    """The TRL trainer for `train.preference`: DPOTrainer, KTOTrainer, ORPOTrainer, or CPOTrainer (SimPO)."""
    from datasets import Dataset

    from tunesmith.train.sft import lora_config

    pref = train.preference
    out, has_eval = run_dir / "trainer", bool(val)
    common: dict[str, Any] = {
        "model": base.model,
        "train_dataset": Dataset.from_list(rows),
        "eval_dataset": Dataset.from_list(val) if val else None,
        "processing_class": base.tokenizer,
        "peft_config": lora_config(train) if train.method in ("lora", "qlora") else None,
        "callbacks": callbacks,
    }
    if pref.trainer == "kto":
        from trl import KTOConfig, KTOTrainer

        args = _config(
            KTOConfig,
            train,
            out,
            has_eval,
            beta=pref.beta,
            # the KL estimate pairs each row with its neighbour in a fixed order (rows are shuffled at split)
            train_sampling_strategy="sequential",
            desirable_weight=pref.desirable_weight,
            undesirable_weight=pref.undesirable_weight,
        )
        return KTOTrainer(args=args, **common)
    if pref.trainer == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(args=_config(ORPOConfig, train, out, has_eval, beta=pref.beta), **common)
    if pref.trainer == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = _config(
            CPOConfig,
            train,
            out,
            has_eval,
            loss_type="simpo",
            cpo_alpha=0.0,  # pure SimPO: no behaviour-cloning term
            beta=pref.beta,
            simpo_gamma=pref.simpo_gamma,
            label_smoothing=pref.label_smoothing,
        )
        return CPOTrainer(args=args, **common)
    from trl import DPOConfig, DPOTrainer

    losses = [pref.loss_type] if isinstance(pref.loss_type, str) else list(pref.loss_type)
    args = _config(
        DPOConfig,
        train,
        out,
        has_eval,
        beta=pref.beta,
        loss_type=losses,
        loss_weights=pref.loss_weights,
        label_smoothing=pref.label_smoothing,
    )
    return DPOTrainer(ref_model=None, args=args, **common)


def preference_trainer(job: TrainerJob) -> Any:
    """The objective's TRL trainer on `records`: RewardTrainer (`reward`), or the `dpo` family's."""
    config, base, records, run_dir, callbacks = job.config, job.base, job.records, job.run_dir, job.callbacks
    train = config.train
    reward = train.objective == "reward"
    if not reward and train.preference.trainer == "kto":
        rows, val = (unpaired_rows(records.get(split, []), base.tokenizer) for split in ("train", "val"))
    else:
        rows, val = (
            preference_rows(records.get(split, []), base.tokenizer, margin=reward)
            for split in ("train", "val")
        )
    _warn_too_long(rows, base.tokenizer, train.max_length)
    make = reward_trainer if reward else dpo_trainer
    return make(train, base, rows, val, run_dir, callbacks)


def describe_preference(config: ProjectConfig, trainer: Any) -> str:
    train = config.train
    what = "reward model" if train.objective == "reward" else train.preference.trainer.upper()
    return f"{train.method} {what}"


def finish_reward(run: Any, trainer: Any, run_dir: Path, weights_dir: Path) -> dict[str, Any]:
    """A reward model scored on the test split's pairs: the share of pairs whose chosen answer it rates
    above the rejected one, with a 95% interval, written to `reward_report.json`."""
    return _reward_test_report(trainer.model, run.base.tokenizer, run.dataset, run.config.train, run_dir)


def _warn_too_long(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> None:
    """Say how many rows TRL will leave out (or cut) because they exceed train.max_length."""
    keys = ("chosen", "rejected") if rows and "chosen" in rows[0] else ("completion",)
    over = 0
    for row in rows:
        longest = max(
            len(
                tokenizer.apply_chat_template(
                    row["prompt"] + row[k], tokenize=True, return_dict=True, **_template_tools(row)
                )["input_ids"]
            )
            for k in keys
        )
        over += longest > max_length
    if over:
        console.print(
            f"[yellow]{over} of {len(rows)} rows are longer than train.max_length={max_length} tokens; "
            f"the trainer truncates or leaves them out. Raise train.max_length to keep them whole.[/yellow]"
        )


def _template_tools(row: dict[str, Any]) -> dict[str, Any]:
    return {"tools": json.loads(row["tools"])} if "tools" in row else {}


def _reward_test_report(
    model: Any, tokenizer: Any, dataset: DatasetVersion, train: TrainConfig, run_dir: Path
) -> dict[str, Any]:
    """Pairwise accuracy of the trained reward model on the test split's pairs, with a 95% interval."""
    from tunesmith.models.reward import score_conversations, wilson_interval

    pairs = preference_rows(load_split(dataset, "test"), tokenizer)
    if not pairs:
        return {}
    chosen = score_conversations(
        model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs], train.max_length, label="Scoring chosen"
    )
    rejected = score_conversations(
        model,
        tokenizer,
        [p["prompt"] + p["rejected"] for p in pairs],
        train.max_length,
        label="Scoring rejected",
    )
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    low, high = wilson_interval(wins, len(pairs))
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    report: dict[str, Any] = {
        "test_pairs": len(pairs),
        "test_pairwise_accuracy": wins / len(pairs),
        "test_pairwise_accuracy_ci": [low, high],
        "test_mean_margin": sum(margins) / len(margins),
    }
    from tunesmith.train.sft import is_main_process

    if not is_main_process():  # every process scores a sharded model; the main one writes
        return report
    (run_dir / "reward_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    console.print(
        f"Reward model on {len(pairs)} held-out pairs: pairwise accuracy "
        f"{100 * report['test_pairwise_accuracy']:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%)"
    )
    return report
