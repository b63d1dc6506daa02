"""Aliases with append-only history, gated promotion, approvals and rollback, through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.registry.aliases import approvals, history
from tunesmith.registry.versions import alias_target, get_version
from tunesmith.serve.keys import create_key
from tunesmith.train.run import train
from tunesmith.workspace import open_workspace

runner = CliRunner()


def setup_project(tmp_path: Path, model_dir: Path, *extra: str) -> tuple[Path, list[str]]:
    config_path = write_demo_project(tmp_path)
    settings = [
        f"model.id={model_dir}",
        "train.method=full",
        "train.epochs=1",
        "eval.max_new_tokens=4",
        "eval.bootstrap_resamples=100",
        "eval.metrics=[rouge_l]",
        "eval.gates=[{metric: rouge_l, min: 0.0}]",
        *extra,
    ]
    return config_path, settings


def cli(config_path: Path, settings: list[str], *args: str):
    return runner.invoke(
        app, [*args, "--config", str(config_path)] + [a for s in settings for a in ("--set", s)]
    )


def registry(config_path: Path, *args: str):
    return runner.invoke(app, ["registry", *args, "--config", str(config_path)])


def test_promotion_needs_a_passing_gate_report_against_production_and_rollback_undoes_it(
    tmp_path, tiny_model_dir
):
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    config = load_config(config_path, settings)
    first = train(config).version.name

    refused = registry(config_path, "promote", first, "--to", "production")
    assert refused.exit_code == 1
    assert f"no passing gate report; run `tunesmith eval {first} --compare base --gate`" in " ".join(
        refused.output.split()
    )
    no_reason = registry(config_path, "promote", first, "--to", "production", "--force")
    assert no_reason.exit_code == 1 and "--force needs --reason" in no_reason.output

    assert cli(config_path, settings, "eval", first, "--compare", "base", "--gate").exit_code == 0
    promoted = registry(config_path, "promote", first, "--to", "production", "--reason", "first release")
    assert promoted.exit_code == 0, promoted.output
    assert "gate report er-" in promoted.output

    second = train(config).version.name
    assert cli(config_path, settings, "eval", second, "--compare", "base", "--gate").exit_code == 0
    refused = registry(config_path, "promote", second, "--to", "production")
    assert refused.exit_code == 1 and f"against production ({first})" in refused.output
    assert cli(config_path, settings, "eval", second, "--compare", "base,production", "--gate").exit_code == 0
    assert registry(config_path, "promote", second, "--to", "production").exit_code == 0
    assert registry(config_path, "promote", second, "--to", "staging").exit_code == 0  # not gated

    rolled = registry(config_path, "rollback", "--reason", "complaints about tone")
    assert rolled.exit_code == 0 and f"production → {first} (was {second})" in rolled.output

    workspace = open_workspace(config)
    registered = [e for e in history(workspace, config.project) if e.action == "register"]
    assert {e.alias for e in registered} == {"candidate"} and len(registered) == 2
    events = [e for e in history(workspace, config.project) if e.action != "register"]
    assert [(e.alias, e.action) for e in events] == [
        ("production", "rollback"),
        ("staging", "promote"),
        ("production", "promote"),
        ("production", "promote"),
    ]
    assert events[0].reason == "complaints about tone" and events[-1].reason == "first release"
    assert all(e.actor == "tester" and not e.forced for e in events)
    assert events[1].gate_report_id is None and events[2].gate_report_id.startswith("er-")

    shown = registry(config_path, "history")
    assert shown.exit_code == 0 and f"production → {first}" in shown.output and "rollback" in shown.output
    listed = registry(config_path, "list")
    assert "production" in listed.output and "staging" in listed.output
    record = yaml.safe_load(registry(config_path, "show", second).output)
    assert record["aliases"] == ["candidate", "staging"]
    assert [r["gates"] for r in record["eval_reports"]] == ["passed", "passed"]
    assert any(f"production ({first})" in r["compared"] for r in record["eval_reports"])


def test_forced_promotion_is_recorded_and_approval_must_come_from_someone_else(tmp_path, tiny_model_dir):
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    config = load_config(config_path, settings)
    first = train(config).version.name
    forced = registry(config_path, "promote", first, "--to", "production", "--force", "--reason", "hotfix")
    assert forced.exit_code == 0 and "(forced)" in forced.output

    config_path.write_text(
        config_path.read_text()
        + "\nregistry:\n  require_approval: true\n  aliases: [candidate, production, canary]\n"
    )
    second = train(load_config(config_path, settings)).version.name
    assert cli(config_path, settings, "eval", second, "--compare", "base,production", "--gate").exit_code == 0
    refused = registry(config_path, "promote", second, "--to", "production")
    assert refused.exit_code == 1 and "has no approval by someone other than tester" in refused.output

    # the OS user who trained it cannot approve it, whatever name --by gives
    own = registry(config_path, "approve", second, "--by", "alice", "--note", "looks fine")
    assert own.exit_code == 1 and "an approval must come from someone else" in own.output
    # nor can the owner of an admin key named like the trainer, and a non-admin key is no identity
    workspace = open_workspace(config)
    _, trainer_secret = create_key(workspace, "tester", admin=True)
    _, inference_secret = create_key(workspace, "alice", admin=False)
    _, alice_secret = create_key(workspace, "alice", admin=True)
    as_trainer = registry(config_path, "approve", second, "--api-key", trainer_secret)
    assert as_trainer.exit_code == 1 and "tester trained" in as_trainer.output
    no_admin = registry(config_path, "approve", second, "--api-key", inference_secret)
    assert no_admin.exit_code == 1 and "not an active admin key" in no_admin.output
    assert approvals(workspace, get_version(workspace, second)) == []  # nothing recorded

    approved = runner.invoke(
        app,
        [
            "registry",
            "approve",
            second,
            "--by",
            "bob",
            "--note",
            "read 50 answers",
            "--config",
            str(config_path),
        ],
        env={"TUNESMITH_API_KEY": alice_secret},
    )
    assert approved.exit_code == 0 and "alice approved" in approved.output
    (approval,) = approvals(workspace, get_version(workspace, second))
    assert approval.approver == "alice" and approval.note == "read 50 answers (by: bob)"
    assert registry(config_path, "promote", second, "--to", "production").exit_code == 0
    assert registry(config_path, "promote", second, "--to", "canary").exit_code == 0  # a user's own alias
    unknown = registry(config_path, "promote", second, "--to", "shadow")
    assert unknown.exit_code == 1 and "unknown alias 'shadow'" in unknown.output

    events = [
        e
        for e in history(open_workspace(load_config(config_path)), "fernwick-support")
        if e.alias != "candidate"
    ]
    assert [(e.alias, e.forced) for e in reversed(events)] == [
        ("production", True),
        ("production", False),
        ("canary", False),
    ]
    record = yaml.safe_load(registry(config_path, "show", second).output)
    assert record["approvals"][0]["by"] == "alice"
    assert record["aliases"] == ["candidate", "production", "canary"]


def test_diff_card_and_reproduce(tmp_path, tiny_model_dir):
    config_path, settings = setup_project(tmp_path, tiny_model_dir, "data.licence=cc-by-4.0")
    first = train(load_config(config_path, [*settings, "train.lr=1e-3"])).version.name
    second = train(load_config(config_path, [*settings, "train.lr=5e-3", "data.sample=150"])).version.name

    before = registry(config_path, "diff", first, second)
    assert before.exit_code == 0, before.output
    assert (
        "train.learning_rate: 0.001 → 0.005" in before.output and "data.sample: None → 150" in before.output
    )
    assert "Data: ds-" in before.output and "rows (" in before.output
    assert f"tunesmith eval {second} --compare {first}" in before.output  # no shared report yet
    assert cli(config_path, settings, "eval", second, "--compare", first).exit_code == 0
    after = registry(config_path, "diff", first, second)
    assert "Metrics (report er-" in after.output and "rouge_l:" in after.output and "p=" in after.output

    card_path = tmp_path / "card.md"
    assert registry(config_path, "card", second, "--output", str(card_path)).exit_code == 0
    card = card_path.read_text()
    for text in (
        f"# {second}",
        "licence not recorded",
        "Licence: cc-by-4.0",
        "Learning rate 0.005",
        "| rouge_l |",
        "## Forgetting",
        "Weights sha256",
        "Intended use",
    ):
        assert text in card, text

    reproduced = registry(config_path, "reproduce", first)
    assert reproduced.exit_code == 0, reproduced.output
    assert f"matches {first} within 2%" in reproduced.output and "eval_loss" in reproduced.output


def test_export_adapter_and_merged_with_parity(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.registry import get_version
    from tunesmith.registry.export import _parity

    config_path, settings = setup_project(tmp_path, tiny_model_dir, "train.method=lora", "train.lr=1e-2")
    config = load_config(config_path, settings)
    name = train(config).version.name

    adapter = registry(
        config_path, "export", name, "--format", "adapter", "--output", str(tmp_path / "adapter")
    )
    assert adapter.exit_code == 0, adapter.output
    assert "5/5 prompts gave identical tokens" in adapter.output
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "adapter" / "tokenizer_config.json").exists()

    merged = registry(config_path, "export", name, "--output", str(tmp_path / "merged"))
    assert merged.exit_code == 0, merged.output
    assert "5/5 prompts gave identical tokens" in merged.output and "round-trips: True" in merged.output
    folder = tmp_path / "merged"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["token_agreement"] == 1.0
    model = AutoModelForCausalLM.from_pretrained(folder)  # a plain model: no PEFT needed
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert not hasattr(model, "peft_config") and "<|im_end|>" in tokenizer.chat_template
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = model.generation_config.eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ." in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile

    # a tokenizer whose template was changed fails the check, and says so
    tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|start|>")
    version = get_version(open_workspace(config), name)
    report = _parity(version, [[1]], [[1]], AutoTokenizer.from_pretrained(folder), tokenizer, model)
    assert not report["passed"] and "the exported chat template is not the version's" in report["problems"]

    full = train(load_config(config_path, [*settings, "train.method=full"])).version.name
    refused = registry(config_path, "export", full, "--format", "adapter")
    assert refused.exit_code == 1 and "has no adapter; use merged" in refused.output


def test_push_says_what_is_missing_offline(tmp_path, tiny_model_dir, monkeypatch):
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    name = train(load_config(config_path, settings)).version.name
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login
    no_token = registry(config_path, "push", name, "--to", "hf", "--repo", "me/bot")
    assert no_token.exit_code == 1 and "no Hugging Face token: set HF_TOKEN" in no_token.output
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = registry(config_path, "push", name, "--to", "hf", "--repo", "me/bot")
    assert offline.exit_code == 1 and "HF_HUB_OFFLINE is set" in offline.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    unreachable = registry(config_path, "push", name, "--to", "hf", "--repo", "me/bot")
    assert unreachable.exit_code == 1 and "could not reach the Hugging Face Hub" in unreachable.output
    assert (
        tmp_path / ".tunesmith" / "exports" / f"{name}-merged" / "README.md"
    ).exists()  # exported with its card
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow = registry(config_path, "push", name, "--to", "mlflow", "--tracking-uri", "http://127.0.0.1:9")
    assert mlflow.exit_code == 1 and "MLflow at http://127.0.0.1:9 did not take" in mlflow.output
    assert registry(config_path, "push", name, "--to", "hf").exit_code == 2


def test_push_to_a_real_mlflow_registry(tmp_path, tiny_model_dir):
    import pytest

    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (the dev extra has mlflow-skinny)")
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    name = train(load_config(config_path, settings)).version.name
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pushed = registry(config_path, "push", name, "--to", "mlflow", "--tracking-uri", uri)
    assert pushed.exit_code == 0, pushed.output
    client = mlflow.MlflowClient(tracking_uri=uri)
    (model_version,) = client.search_model_versions("name = 'fernwick-support'")
    assert model_version.tags["tunesmith.version"] == name
    run = client.get_run(model_version.run_id)
    assert run.data.params["train.method"] == "full" and "train_loss" in run.data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/README.md", "model/model.safetensors", "model/parity.json"} <= files


@pytest.mark.slow
def test_gguf_export_of_the_bundled_model_agrees_when_llama_cpp_runs_it(tmp_path, monkeypatch):
    from tunesmith.models.llamacpp import find_server

    if find_server() is None:
        pytest.skip("llama.cpp's llama-server is not installed (make setup builds it)")
    config_path = write_demo_project(tmp_path)
    settings = ["train.method=lora", "train.max_steps=3", "train.forgetting.probe=false"]
    version = train(load_config(config_path, settings)).version
    name = version.name
    for quant in ("q8_0",):  # what serving uses; f16 takes the same path without quantising
        exported = registry(config_path, "export", name, "--format", "gguf", "--quant", quant)
        assert exported.exit_code == 0, exported.output
        folder = tmp_path / ".tunesmith" / "exports" / f"{name}-gguf-{quant}"
        parity = json.loads((folder / "parity.json").read_text())
        assert parity["passed"] and parity["token_agreement"] >= 0.9, parity
        assert parity["checked_with"] == "llama.cpp" and parity["prompt_tokens_identical"]
        assert parity["gguf_chat_template_sha256"] == parity["chat_template_sha256"]
        assert (folder / f"{name}-{quant}.gguf").exists() and not (folder / "merged").exists()
        assert f"FROM ./{name}-{quant}.gguf" in (folder / "Modelfile").read_text()
        import gguf

        reader = gguf.GGUFReader(folder / f"{name}-{quant}.gguf")
        assert reader.get_field("tokenizer.ggml.pre").contents() == "smollm"  # as llama.cpp names it
    size = (tmp_path / ".tunesmith" / "exports" / f"{name}-gguf-q8_0" / f"{name}-q8_0.gguf").stat().st_size
    assert (
        size < 0.3 * 4 * version.metrics["total_parameters"]
    )  # about one byte per weight, against four in float32

    # a conversion that forgets llama.cpp's rotary layout of q and k fails the check it runs
    from tunesmith.registry import export, gguf_export

    monkeypatch.setattr(gguf_export, "_permute", lambda weights, n_head: weights)
    workspace = open_workspace(load_config(config_path))
    with pytest.raises(export.ExportError, match=r"llama\.cpp ranks first only"):
        export.export_version(workspace, version, "gguf", tmp_path / "broken")
    assert not json.loads((tmp_path / "broken" / "parity.json").read_text())["passed"]


def test_gguf_export_refuses_what_it_cannot_write(tmp_path, tiny_model_dir):
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    name = train(load_config(config_path, settings)).version.name
    refused = registry(config_path, "export", name, "--format", "gguf")
    assert refused.exit_code == 1 and "GGUF export of" in refused.output  # a word-level tokenizer is not BPE
    assert registry(config_path, "export", name, "--format", "gguf", "--quant", "q4").exit_code == 2


def test_incremental_fine_tune_from_a_registered_version(tmp_path, tiny_model_dir):
    from tunesmith.registry import get_version
    from tunesmith.registry.loading import load_version

    config_path, settings = setup_project(tmp_path, tiny_model_dir, "train.method=lora", "train.lr=1e-2")
    config = load_config(config_path, settings)
    parent = train(config).version
    child = train(load_config(config_path, [*settings, f"train.init_from={parent.name}"])).version
    workspace = open_workspace(config)
    assert get_version(workspace, child.name).parent_id == parent.id
    record = yaml.safe_load(registry(config_path, "show", child.name).output)
    assert record["parent"] == parent.id
    # the child's adapter loads onto its parent; eval and export find the chain
    _, model, _ = load_version(workspace, child.name)
    assert hasattr(model, "peft_config")
    assert cli(config_path, settings, "eval", child.name, "--compare", f"base,{parent.name}").exit_code == 0
    merged = registry(config_path, "export", child.name, "--output", str(tmp_path / "child-merged"))
    assert merged.exit_code == 0 and "5/5 prompts gave identical tokens" in merged.output
    from tunesmith.registry import RegistryError

    wrong = load_config(config_path, [*settings, "train.init_from=no-such-version"])
    with pytest.raises(RegistryError, match="no model version 'no-such-version'"):
        train(wrong)


def _more_versions(config, workspace, first_name: str, count: int) -> list[str]:
    """Further versions of the family from the first one's run and weights (alias logic needs no new
    training): each is a real registry row in the project's store."""
    from pathlib import Path

    from tunesmith.registry.versions import get_version, register_version
    from tunesmith.store import Run, session

    first = get_version(workspace, first_name)
    with session(workspace.engine) as s:
        run = s.get(Run, first.run_id)
    names = []
    for _ in range(count):
        version = register_version(
            workspace,
            run,
            family=first.family,
            weights_dir=Path(first.path),
            base_revision=first.base_revision,
            method=first.method,
            seed=first.seed,
            metrics={},
            tokenizer=None,
        )
        names.append(version.name)
    return names


def test_rollbacks_in_a_row_walk_back_through_history_and_never_toggle(tmp_path, tiny_model_dir):
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    config = load_config(config_path, settings)
    workspace = open_workspace(config)
    v1 = train(config).version.name
    v2, v3, v4 = _more_versions(config, workspace, v1, 3)
    nothing = registry(config_path, "rollback")
    assert nothing.exit_code == 1 and "is not set; nothing to roll back" in nothing.output
    for name in (v1, v2, v3, v4):
        moved = registry(config_path, "promote", name, "--to", "production", "--force", "--reason", "test")
        assert moved.exit_code == 0, moved.output

    for expected, was in ((v3, v4), (v2, v3), (v1, v2)):  # 1, 2 and 3 rollbacks in a row
        rolled = registry(config_path, "rollback", "--reason", "bad answers")
        assert rolled.exit_code == 0, rolled.output
        assert f"production → {expected} (was {was})" in rolled.output

    before = len(history(workspace, config.project))
    refused = registry(config_path, "rollback")
    assert refused.exit_code == 1 and "no earlier version to roll back to" in refused.output
    assert len(history(workspace, config.project)) == before  # nothing moved

    # a version promoted again after it was rolled back from is trusted again; v4 never is
    assert (
        registry(config_path, "promote", v3, "--to", "production", "--force", "--reason", "fixed").exit_code
        == 0
    )
    rolled = registry(config_path, "rollback")
    assert rolled.exit_code == 0 and f"production → {v1} (was {v3})" in rolled.output


def test_a_significantly_worse_candidate_never_passes_a_threshold_only_gate(tmp_path, tiny_model_dir):
    """Threshold gates alone would pass a wrecked version; the built-in no-regression check does not,
    and promote names the metric, both scores and the p-value. --force still moves it, on record."""
    config_path, settings = setup_project(
        tmp_path,
        tiny_model_dir,
        "eval.metrics=[perplexity]",
        "eval.gates=[{metric: perplexity, max: 1.0e300}]",
        "eval.max_new_tokens=2",
    )
    config = load_config(config_path, settings)
    good = train(config).version.name
    assert cli(config_path, settings, "eval", good, "--compare", "base", "--gate").exit_code == 0
    assert registry(config_path, "promote", good, "--to", "production").exit_code == 0

    wrecked = train(load_config(config_path, [*settings, "train.learning_rate=3.0"])).version.name
    # naming production by its version name compares with production all the same
    gated = cli(config_path, settings, "eval", wrecked, "--compare", f"base,{good}", "--gate")
    assert gated.exit_code == 3, gated.output  # a failed gate
    refused = registry(config_path, "promote", wrecked, "--to", "production")
    message = " ".join(refused.output.split())
    assert refused.exit_code == 1, message
    assert f"significantly worse than production ({good}): perplexity" in message
    assert re.search(r"perplexity [\d.e+]+ vs [\d.e+]+ \(p=[\d.e-]+\)", message), message
    workspace = open_workspace(config)
    assert alias_target(workspace, config.project, "production").name == good  # nothing moved

    forced = registry(config_path, "promote", wrecked, "--to", "production", "--force", "--reason", "drill")
    assert forced.exit_code == 0 and "(forced)" in forced.output
    latest = history(workspace, config.project, "production")[0]
    assert latest.forced and latest.reason == "drill"


def test_a_report_made_before_production_moved_is_stale(tmp_path, tiny_model_dir):
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    config = load_config(config_path, settings)
    workspace = open_workspace(config)
    first = train(config).version.name
    second, third = _more_versions(config, workspace, first, 2)
    assert (
        registry(config_path, "promote", first, "--to", "production", "--force", "--reason", "t").exit_code
        == 0
    )
    assert cli(config_path, settings, "eval", third, "--compare", "base,production", "--gate").exit_code == 0
    assert (
        registry(config_path, "promote", second, "--to", "production", "--force", "--reason", "t").exit_code
        == 0
    )
    refused = registry(config_path, "promote", third, "--to", "production")
    message = " ".join(refused.output.split())
    assert refused.exit_code == 1
    assert f"has no passing gate report against production ({second})" in message
    assert f"is stale: it was made when production was {first}" in message


def test_a_version_refuses_a_base_whose_weights_changed(tmp_path, tiny_model_dir):
    """The base is pinned by content hash: eval, load (export) and reproduce refuse other weights,
    naming both hashes and the fix."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, base)
    config_path, settings = setup_project(tmp_path, base, "train.method=lora")
    config = load_config(config_path, settings)
    version = train(config).version
    assert version.base_revision.startswith("sha256:")

    weights = base / "model.safetensors"
    tensors = load_file(weights)
    save_file(
        {k: v + 0.01 * torch.ones_like(v) for k, v in tensors.items()}, weights, metadata={"format": "pt"}
    )
    for args in (
        ["eval", version.name, "--compare", "base"],
        ["registry", "export", version.name, "--format", "merged"],
        ["registry", "reproduce", version.name],
    ):
        refused = cli(config_path, settings if args[0] == "eval" else [], *args)
        message = " ".join(refused.output.split())
        assert refused.exit_code == 1, (args, message)
        assert (
            f"it was trained on {base} at {version.base_revision}, but that base now resolves to sha256:"
            in message
        )
        assert "restore the weights" in message


def test_items_a_compared_version_trained_on_are_excluded_and_counted(tmp_path, tiny_model_dir):
    """v2 trained on 15 of v1's test questions: comparing on them would flatter v2. They are left out
    and counted; too few left cannot gate."""
    config_path, settings = setup_project(tmp_path, tiny_model_dir)
    config = load_config(config_path, settings)
    first = train(config).version.name
    rows = [json.loads(line) for line in config.resolve_path(config.data.path).read_text().splitlines()]
    tests = [row for row in rows if row.get("split") == "test"]
    for row in tests[:15]:
        row["split"] = "train"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    second = train(load_config(config_path, [*settings, f"data.path={mixed}"])).version.name

    def report_of(result) -> dict:
        report_id = re.search(r"Report (er-\w+)", result.output).group(1)
        return json.loads((config.workspace_dir / "reports" / report_id / "report.json").read_text())

    gated = cli(config_path, settings, "eval", first, "--compare", f"base,{second}", "--gate")
    report = report_of(gated)
    (row,) = report["excluded"]
    assert row["system"] == second and row["items"] == 15
    assert report["items"] == len(tests) - 15
    assert f"15 items excluded: {second} trained on them" in report["notes"]
    (too_few,) = [g for g in report["gates"] if g["kind"] == "min_items"]
    assert (
        not too_few["passed"]
        and "15 were left out because a compared system trained on them" in too_few["detail"]
    )
    assert gated.exit_code == 3

    # against the base alone every item counts, and 40 items are enough to gate on
    alone = cli(config_path, settings, "eval", first, "--compare", "base", "--gate")
    assert alone.exit_code == 0 and report_of(alone)["excluded"] == []
