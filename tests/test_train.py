"""Training controls on a tiny random Llama: methods, checkpoints, early stopping, metrics, exact resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import logged_metrics, train_killed_at_checkpoint
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.store import Run, RunMetric, session
from tunesmith.train.methods import MethodError, apply_freeze, check_method_supported
from tunesmith.train.run import resume_run, train
from tunesmith.workspace import open_workspace

runner = CliRunner()


def project(tmp_path: Path, model_dir: Path, *overrides: str):
    config_path = write_demo_project(tmp_path)
    return config_path, load_config(config_path, [f"model.id={model_dir}", "train.epochs=1", *overrides])


def test_qlora_without_cuda_stops_at_once_with_what_to_do(tmp_path, tiny_model_dir):
    config_path, config = project(tmp_path, tiny_model_dir, "train.method=qlora")
    with pytest.raises(MethodError, match=r"needs a CUDA GPU.*Use train\.method=lora"):
        check_method_supported(config.train)
    result = runner.invoke(
        app, ["train", str(config_path), "--set", f"model.id={tiny_model_dir}", "--set", "train.method=qlora"]
    )
    assert result.exit_code == 1 and "needs a CUDA GPU" in result.output
    assert not (tmp_path / ".tunesmith" / "runs").exists()  # refused before any run started


@pytest.mark.parametrize(
    ("method", "extra", "trainable_blocks"),
    [
        ("freeze", ["train.freeze.layers=1"], [1]),
        ("freeze", ["train.freeze.train_top=1"], [1]),
        ("head", [], []),
    ],
)
def test_freeze_and_head_leave_only_the_named_parts_trainable(
    tmp_path, tiny_model_dir, method, extra, trainable_blocks
):
    from transformers import AutoModelForCausalLM

    _, config = project(tmp_path, tiny_model_dir, f"train.method={method}", *extra)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    apply_freeze(model, config.train)
    blocks = {
        int(n.split(".")[2]) for n, p in model.named_parameters() if p.requires_grad and ".layers." in n
    }
    assert sorted(blocks) == trainable_blocks
    assert model.get_output_embeddings().weight.requires_grad


def test_full_training_saves_full_weights_that_changed(tmp_path, tiny_model_dir):
    _, config = project(
        tmp_path, tiny_model_dir, "train.method=full", "train.lr=1e-2", "train.save_strategy=no"
    )
    outcome = train(config)
    weights = load_file(outcome.run_dir / "model" / "model.safetensors")
    before = load_file(tiny_model_dir / "model.safetensors")
    changed = [name for name in before if name in weights and not (weights[name] == before[name]).all()]
    assert len(changed) > len(before) // 2


def test_metrics_go_to_jsonl_and_the_store_and_checkpoints_rotate(tmp_path, tiny_model_dir):
    _, config = project(
        tmp_path,
        tiny_model_dir,
        "train.logging_steps=2",
        "train.save_strategy=steps",
        "train.save_steps=5",
        "train.save_total_limit=2",
        "train.report_to=[tensorboard]",
        "train.recipe=off",  # the steps of the plain defaults: 10 logged losses
    )
    outcome = train(config)
    lines = logged_metrics(outcome.run_dir)
    losses = [entry for entry in lines if "loss" in entry]
    assert len(losses) == 10 and all({"learning_rate", "memory_mb", "step"} <= set(e) for e in losses)
    with session(open_workspace(config).engine) as s:
        stored = s.scalars(
            select(RunMetric).where(RunMetric.run_id == outcome.run_id, RunMetric.name == "loss")
        )
        assert [m.step for m in stored] == [e["step"] for e in losses]
    checkpoints = sorted(p.name for p in (outcome.run_dir / "trainer").glob("checkpoint-*"))
    assert len(checkpoints) == 2 and "checkpoint-20" in checkpoints
    # report_to passes through to the Trainer: TensorBoard event files beside the checkpoints
    assert list((outcome.run_dir / "trainer" / "runs").rglob("events.out.tfevents.*"))


def test_a_reporter_that_is_not_installed_is_named_with_the_install_command(tmp_path, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config_path, _ = project(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["train", str(config_path), "--set", "train.report_to=[wandb]"])
    assert result.exit_code == 1
    assert "train.report_to: wandb is not installed; run `pip install wandb`" in result.output


def test_effective_batch_sets_accumulation_and_early_stopping_stops(tmp_path, tiny_model_dir):
    _, config = project(
        tmp_path,
        tiny_model_dir,
        "train.batch_size=4",
        "train.effective_batch_size=16",
        "train.epochs=30",
        "train.lr=0.3",  # far too high: the validation loss soon stops improving
        "train.save_strategy=epoch",
        "train.early_stopping_patience=1",
    )
    assert config.train.accumulation_steps == 4
    outcome = train(config)
    epochs = outcome.version.metrics["global_step"] / 10  # 160 rows / 16 per step
    assert epochs < 30  # the validation loss stopped improving long before
    assert "best_checkpoint" in outcome.version.metrics


def test_train_args_cannot_set_what_the_config_owns(tmp_path, tiny_model_dir):
    config_path, _ = project(tmp_path, tiny_model_dir)
    result = runner.invoke(
        app,
        [
            "train",
            str(config_path),
            "--set",
            f"model.id={tiny_model_dir}",
            "--set",
            "train.args.save_steps=3",
        ],
    )
    assert (
        result.exit_code == 1 and "train.args.save_steps: set it as train.save_steps instead" in result.output
    )


def _losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "log_history.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_killed_run_resumes_exactly(tmp_path, tiny_model_dir):
    """kill -9 a run after a checkpoint; `train --resume` continues with the very same loss curve."""
    settings = [
        f"model.id={tiny_model_dir}",
        "train.max_steps=80",
        "train.batch_size=2",
        "train.logging_steps=1",
        "train.save_strategy=steps",
        "train.save_steps=10",
        "train.save_total_limit=3",
        "data.split.val=0",
        "train.recipe=off",  # no early stopping on the demo's own validation rows: all 80 steps
    ]
    reference = train(load_config(write_demo_project(tmp_path / "a"), settings))

    config_b = write_demo_project(tmp_path / "b")
    command = [sys.executable, "-m", "tunesmith.cli", "train", str(config_b)]
    for setting in settings:
        command += ["--set", setting]
    train_killed_at_checkpoint(command, tmp_path / "b", 30, timeout=120)

    config = load_config(config_b)
    with session(open_workspace(config).engine) as s:
        killed = s.scalars(select(Run)).one()
    assert killed.status == "running"  # killed: never closed
    resumed = resume_run(config, killed.id)
    with session(open_workspace(config).engine) as s:
        assert s.get(Run, killed.id).status == "finished"
    expected, got = _losses(reference.run_dir), _losses(resumed.run_dir)
    assert max(got) == 80
    resumed_from = min(step for step in got if step > 30)
    for step in range(resumed_from, 81):
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-6), step
    # the registered figure is the whole run's, not only the steps after the checkpoint
    assert resumed.version.metrics["train_loss"] == pytest.approx(
        reference.version.metrics["train_loss"], rel=1e-4
    )


def test_fit_estimate_counts_exactly_and_refuses_what_cannot_fit(tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith.train.fit import DoesNotFitError
    from tunesmith.train.run import checked_dataset

    config_path, config = project(tmp_path, tiny_model_dir)
    _, _, estimate = checked_dataset(config, open_workspace(config))  # as the run plans it (the recipe)
    outcome = train(config)
    assert estimate.trainable_parameters == outcome.version.metrics["trainable_parameters"]
    assert estimate.total_parameters == outcome.version.metrics["total_parameters"]
    assert estimate.fits and estimate.peak_bytes > estimate.weights_bytes > 0

    from tunesmith.train import fit as fit_module  # `tunesmith.train` as an attribute is the API function

    monkeypatch.setattr(fit_module, "available_memory", lambda: ("CPU RAM", 1_000))
    runs_before = len(list((tmp_path / ".tunesmith" / "runs").iterdir()))
    with pytest.raises(DoesNotFitError, match=r"estimated peak memory .* GiB exceeds 90% of the 0\.00 GiB"):
        train(config)
    assert len(list((tmp_path / ".tunesmith" / "runs").iterdir())) == runs_before  # refused before any run
    result = runner.invoke(
        app, ["train", str(config_path), "--dry-run", "--set", f"model.id={tiny_model_dir}"]
    )
    assert result.exit_code == 1 and "optimizer state (AdamW)" in result.output and "exceeds" in result.output


def test_auto_checkpointing_keeps_activations_when_memory_allows_and_recomputes_when_not(
    tmp_path, tiny_model_dir, monkeypatch
):
    from transformers import AutoConfig

    from tunesmith.data import prepare_data
    from tunesmith.store import Run
    from tunesmith.train import fit as fit_module
    from tunesmith.train.fit import decide_checkpointing

    _, config = project(tmp_path, tiny_model_dir)
    assert config.train.activation_checkpointing == "auto"
    model_config = AutoConfig.from_pretrained(tiny_model_dir)
    decided, reason = decide_checkpointing(config, model_config, 128)
    assert decided.train.activation_checkpointing is False
    assert reason.startswith("activation checkpointing off")
    assert decided.base_dir == config.base_dir
    monkeypatch.setattr(fit_module, "available_memory", lambda: ("CPU RAM", 20_000))
    decided, reason = decide_checkpointing(config, model_config, 128)
    assert decided.train.activation_checkpointing is True and "one block in 2" in reason
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four workers on this machine share its memory
    monkeypatch.setattr(fit_module, "available_memory", lambda: ("CPU RAM", 50_000_000))
    assert decide_checkpointing(config, model_config, 128)[0].train.activation_checkpointing is True
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert decide_checkpointing(config, model_config, 128)[0].train.activation_checkpointing is False
    explicit = load_config(
        tmp_path / "tunesmith.yaml", [f"model.id={tiny_model_dir}", "train.activation_checkpointing=true"]
    )
    assert decide_checkpointing(explicit, model_config, 128) == (explicit, None)
    # the run records what was decided, so `registry reproduce` and `--resume` train the same way
    monkeypatch.undo()
    prepare_data(config)
    outcome = train(config)
    with session(open_workspace(config).engine) as s:
        recorded = s.get(Run, outcome.run_id).config["train"]["activation_checkpointing"]
    assert recorded is False


def test_the_trainer_counts_the_same_flops_with_the_parameters_counted_once(tmp_path, tiny_model_dir):
    import torch
    from transformers import Trainer

    from tunesmith.data import prepare_data
    from tunesmith.train.objectives import TrainerJob, get_objective
    from tunesmith.train.recipe import plan_run
    from tunesmith.train.run import load_base

    _, config = project(tmp_path, tiny_model_dir)
    dataset = prepare_data(config)
    config = plan_run(config, dataset)
    base = load_base(config, dataset)
    objective = get_objective("sft")
    workspace = open_workspace(config)
    job = TrainerJob(config, base, objective.records(config, dataset), tmp_path / "run", [], workspace)
    trainer = objective.build_trainer(job)
    inputs = {"input_ids": torch.ones(4, 17, dtype=torch.long)}
    assert trainer.floating_point_ops(inputs) == Trainer.floating_point_ops(trainer, inputs) > 0


def test_a_training_process_waits_actively_for_its_threads_unless_told_otherwise(tmp_path):
    script = (
        "import os, sys\n"
        "import tunesmith.cli\n"
        "assert 'torch' not in sys.modules  # so `tunesmith train` sets it before torch loads\n"
        "from tunesmith.train.openmp import prepare_training_process\n"
        "print(prepare_training_process(), os.environ.get('OMP_WAIT_POLICY'))\n"
        "import torch\n"
        "print(prepare_training_process())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["{'OMP_WAIT_POLICY': 'ACTIVE'} ACTIVE", "{}"]
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # the user's setting wins
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("{} PASSIVE")


def test_lora_adapters_share_their_layers_input_under_autocast(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.train.methods import share_lora_inputs_under_autocast

    ids = torch.randint(3, 50, (4, 24))

    def run(share: bool) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)  # as after a few steps: the adapters take part
        if share:
            assert share_lora_inputs_under_autocast(model) > 0
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
        with torch.inference_mode():  # outside autocast the adapters get their float32 input as before
            model(input_ids=ids)
        return sum(storages.values()), loss.detach().float(), grads

    before, shared = run(False), run(True)
    # no second copy of each layer input (on this tiny model the logits are most of what is kept)
    assert shared[0] < 0.95 * before[0], (shared[0], before[0])
    assert torch.allclose(shared[1], before[1], rtol=1e-2)
    for name, grad in before[2].items():
        assert torch.allclose(shared[2][name], grad, rtol=0.05, atol=1e-3), name


def test_dry_run_reports_memory_and_a_measured_time(tmp_path, tiny_model_dir):
    config_path, _ = project(tmp_path, tiny_model_dir)
    result = runner.invoke(
        app, ["train", str(config_path), "--dry-run", "--set", f"model.id={tiny_model_dir}"]
    )
    assert result.exit_code == 0, result.output
    assert "estimated peak" in result.output and "tokens/s" in result.output and "It fits" in result.output
    assert not (tmp_path / ".tunesmith" / "runs").exists()


def test_replay_mixes_general_rows_and_the_probe_is_held_out():
    from tunesmith.config import ForgettingConfig
    from tunesmith.train.forgetting import general_rows, replay_mix

    replay, probe = general_rows(ForgettingConfig(), Path.cwd())
    assert len(replay) == 32 and len(probe) == 16
    assert not {r["messages"][0]["content"] for r in replay} & {r["messages"][0]["content"] for r in probe}
    mixed = replay_mix(
        [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(100)], replay, 0.2, 0
    )
    assert len(mixed) == 120 and sum(m in replay for m in mixed) == 20


def _weight_change(outcome, reference_dir: Path) -> float:
    weights = load_file(outcome.run_dir / "model" / "model.safetensors")
    before = load_file(reference_dir / "model.safetensors")
    return sum(float(((weights[n] - before[n]) ** 2).sum()) for n in before if n in weights)


@pytest.mark.parametrize("guard", ["l2sp", "ewc"])
def test_penalties_hold_weights_near_the_start_and_forgetting_is_reported(tmp_path, tiny_model_dir, guard):
    common = ["train.method=full", "train.lr=5e-3", "train.save_strategy=no"]
    _, free = project(tmp_path / "free", tiny_model_dir, *common)
    free_run = train(free)
    strength = "train.forgetting.l2sp_alpha=100" if guard == "l2sp" else "train.forgetting.ewc_lambda=1e6"
    _, held = project(
        tmp_path / "held", tiny_model_dir, *common, f"train.forgetting.method={guard}", strength
    )
    held_run = train(held)
    assert _weight_change(held_run, tiny_model_dir) < 0.5 * _weight_change(free_run, tiny_model_dir)
    for run in (free_run, held_run):
        m = run.version.metrics
        assert m["forgetting"] == pytest.approx(m["general_loss_after"] - m["general_loss_base"])


def test_pretrain_on_raw_text_and_objective_kind_mismatch(tmp_path, tiny_model_dir):
    text = tmp_path / "domain.txt"
    text.write_text(
        "\n\n".join(
            f"Fernwick sensors measure soil moisture every {i} minutes in the garden." for i in range(40)
        ),
        encoding="utf-8",
    )
    config_path = tmp_path / "tunesmith.yaml"
    config_path.write_text(
        f"project: domain\nmodel:\n  id: {tiny_model_dir}\ndata:\n  path: {text}\n"
        "train:\n  epochs: 1\n  save_strategy: 'no'\n",
        encoding="utf-8",
    )
    refused = runner.invoke(app, ["train", str(config_path), "--set", "train.objective=sft"])
    assert refused.exit_code == 1
    assert "train.objective=sft needs sft rows, but dataset" in refused.output
    assert "set train.objective: pretrain" in refused.output
    outcome = train(load_config(config_path))  # train.objective auto: raw text is continued pre-training
    assert outcome.version.config["train"]["objective"] == "pretrain"
    assert outcome.version.metrics["train_loss"] > 0
    assert (outcome.run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_packing_joins_rows_into_full_sequences(tmp_path, tiny_model_dir):
    _, config = project(
        tmp_path, tiny_model_dir, "train.packing=true", "train.max_length=256", "train.save_strategy=no"
    )
    packed = train(config).version.metrics
    # 160 short rows packed into 256-token sequences: far fewer than the 20 steps of batch 8 unpacked
    assert 0 < packed["global_step"] < 10
    assert packed["train_loss"] > 0


@pytest.mark.parametrize("native", [True, False])
def test_every_trainer_autocasts_to_bfloat16_only_where_the_hardware_multiplies_it(
    tmp_path, tiny_model_dir, monkeypatch, native
):
    """Where bfloat16 is not native, torch's bfloat16 matrix products fall back to a single-threaded
    loop (about 1/90 of the float32 speed here): TRL's own default (`bf16=True`) would take it."""
    from transformers import TrainingArguments
    from trl import DPOConfig, GRPOConfig, RewardConfig, SFTConfig

    import tunesmith.config
    from tunesmith.train.sft import trainer_kwargs

    monkeypatch.setattr(tunesmith.config, "native_bf16", lambda: native)
    _, config = project(tmp_path, tiny_model_dir)
    for args_class in (SFTConfig, DPOConfig, RewardConfig, GRPOConfig, TrainingArguments):
        assert trainer_kwargs(config.train, tmp_path, False, args_class)["bf16"] is native, args_class


def test_auto_attention_trains_short_chat_rows_eagerly_on_a_cpu_and_sets_the_model_back_for_scoring(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Eager attention is faster than sdpa for rows up to 256 tokens on a CPU (`bench/attention.py`):
    SFT trains with it, and the trained model answers with sdpa, as `tunesmith eval` and the server
    load it; the forgetting probe before and after is measured with sdpa too."""
    import torch
    from transformers.models.llama import modeling_llama

    from tunesmith.train.run import decide_attention

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, config = project(tmp_path, tiny_model_dir, "train.method=lora", "train.max_steps=2")
    assert decide_attention(config, 96)[0] == "eager"
    for objective in ("rl", "distill"):  # they generate while training: a row plus an answer is longer
        assert decide_attention(config.model_copy(update={"train": config.train.model_copy(
            update={"objective": objective})}), 96) == (None, None)  # fmt: skip

    eager_calls = {"training": 0}
    eager = modeling_llama.eager_attention_forward

    def counted(*args, **kwargs):
        eager_calls["training"] += 1
        return eager(*args, **kwargs)

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", counted)
    outcome = train(config)
    assert eager_calls["training"] > 0  # the steps ran eagerly
    assert outcome.model.config._attn_implementation == "sdpa"
    assert "forgetting" in outcome.version.metrics  # the probe, measured after training: with sdpa
    before = eager_calls["training"]
    ids = outcome.tokenizer("When does the library open?", return_tensors="pt")
    outcome.model.generate(**ids, max_new_tokens=3)
    assert eager_calls["training"] == before
