"""`registry merge`: LoRA versions combined into a candidate that is evaluated, gated and reproduced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.pipeline import write_demo_project
from tunesmith.registry.loading import load_row
from tunesmith.registry.versions import alias_target, get_version
from tunesmith.train.run import train
from tunesmith.workspace import open_workspace

runner = CliRunner()


def lora_project(tmp_path: Path, model_dir: Path) -> tuple[Path, list[str]]:
    config_path = write_demo_project(tmp_path)
    return config_path, [
        f"model.id={model_dir}",
        "train.method=lora",
        "train.epochs=1",
        "train.lr=1e-2",
        "train.lora.r=4",
        "train.lora.lora_alpha=8",
        "train.forgetting.probe=false",
        "eval.max_new_tokens=4",
        "eval.bootstrap_resamples=100",
        "eval.metrics=[rouge_l]",
        "eval.gates=[{metric: rouge_l, min: 0.0}]",
    ]


def command(config_path: Path, *args: str, settings: tuple[str, ...] = ()):
    flags = [a for s in settings for a in ("--set", s)]
    return runner.invoke(app, [*args, "--config", str(config_path), *flags])


def deltas(model) -> dict[str, torch.Tensor]:
    """Each adapted layer's weight delta (B·A·scale), by layer name."""
    from peft.tuners.lora import LoraLayer

    return {
        name: module.get_delta_weight("default").detach().float()
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.lora_A
    }


@pytest.fixture
def two_versions(tmp_path, tiny_model_dir):
    config_path, settings = lora_project(tmp_path, tiny_model_dir)
    first = train(load_config(config_path, [*settings, "train.seed=1"])).version
    second = train(load_config(config_path, [*settings, "train.seed=2", "train.lr=2e-2"])).version
    return config_path, settings, first, second


def test_a_linear_merge_is_the_average_of_the_deltas_and_is_gated_and_reproduced_like_any_candidate(
    two_versions,
):
    config_path, settings, first, second = two_versions
    merged = command(config_path, "registry", "merge", first.name, second.name, "--method", "linear")
    assert merged.exit_code == 0, merged.output
    words = " ".join(merged.output.split())
    name = f"{first.family}-v3"
    assert f"Registered {name} (linear: {first.name} x0.5, {second.name} x0.5)" in words
    assert "keeps 100.0% of the merged deltas' energy" in words

    workspace = open_workspace(load_config(config_path, settings))
    version = get_version(workspace, name)
    assert [p["name"] for p in version.lineage["merge"]["parents"]] == [first.name, second.name]
    assert version.run_id != first.run_id and version.dataset_version_id == first.dataset_version_id
    assert alias_target(workspace, version.family, "candidate").id == version.id
    a, b = deltas(load_row(first)[0]), deltas(load_row(second)[0])
    expected = {key: (a[key] + b[key]) / 2 for key in a}
    got = deltas(load_row(version, workspace)[0])
    assert got.keys() == expected.keys() and len(got) > 0
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4)

    reproduced = command(config_path, "registry", "reproduce", name)
    assert reproduced.exit_code == 0 and "matches" in reproduced.output, reproduced.output
    assert (
        command(config_path, "eval", name, "--compare", "base", "--gate", settings=tuple(settings)).exit_code
        == 0
    )
    promoted = command(config_path, "registry", "promote", name, "--to", "production")
    assert promoted.exit_code == 0, promoted.output


def test_ties_and_dare_merges_record_the_energy_the_adapter_keeps_and_dare_is_seeded(two_versions):
    config_path, settings, first, second = two_versions
    workspace = open_workspace(load_config(config_path, settings))
    shas = {}
    for number, (method, seed) in enumerate(
        [("ties", 0), ("dare_ties", 0), ("dare_ties", 0), ("dare_ties", 1)], 3
    ):
        result = command(
            config_path, "registry", "merge", first.name, second.name, "--method", method,
            "--density", "0.4", "--seed", str(seed), "--weights", "1,0.5",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        version = get_version(workspace, f"{first.family}-v{number}")
        merge = version.lineage["merge"]
        assert merge["method"] == method and merge["density"] == 0.4
        assert [p["weight"] for p in merge["parents"]] == [1.0, 0.5]
        assert (
            0.0 < merge["energy_kept"] < 1.0 and version.metrics["merge_energy_kept"] == merge["energy_kept"]
        )
        shas[(method, seed, number)] = version.weights_sha256
    dare = [sha for (method, seed, _), sha in shas.items() if method == "dare_ties" and seed == 0]
    assert dare[0] == dare[1]  # the same seed draws the same drop
    assert shas[("dare_ties", 1, 6)] != dare[0]
    reproduced = command(config_path, "registry", "reproduce", f"{first.family}-v6")
    assert reproduced.exit_code == 0 and "matches" in reproduced.output, reproduced.output


def test_merges_that_cannot_work_are_refused_before_any_weights_load(tmp_path, tiny_model_dir, two_versions):
    config_path, settings, first, second = two_versions
    cases = [
        (["registry", "merge", first.name], 2, "merge needs two or more distinct versions"),
        (
            ["registry", "merge", first.name, second.name, "--method", "slerp"],
            2,
            "use linear, ties, dare_linear, dare_ties",
        ),
        (
            ["registry", "merge", first.name, second.name, "--weights", "1"],
            2,
            "--weights has 1 value(s) for 2 versions",
        ),
        (
            ["registry", "merge", first.name, second.name, "--weights", "a,b"],
            2,
            "numbers separated by commas",
        ),
        (["registry", "merge", first.name, second.name, "--density", "0"], 2, "in (0, 1]"),
        (["registry", "merge", first.name, "nope-v9"], 1, "no model version 'nope-v9'"),
    ]
    for args, code, message in cases:
        result = command(config_path, *args)
        assert result.exit_code == code, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    full = train(load_config(config_path, [*settings, "train.method=full"])).version
    refused = command(config_path, "registry", "merge", first.name, full.name)
    assert refused.exit_code == 1
    assert f"{full.name} is a full version: only LoRA versions merge" in " ".join(refused.output.split())


@pytest.mark.slow
def test_merging_two_versions_of_the_bundled_model_answers_what_each_learned(tmp_path):
    """bench/merge_results.py at reduced size: A learns 6 Fernwick facts, B 6 others; their average
    answers held-out questions on both halves, where each parent knows only its own."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from merge_results import run

    result = run(tmp_path, groups=6, merges=[("linear", "0.5,0.5", 0.5)], base=False)  # base: not compared
    (a, b), merged = result["parents"], result["merged"]["linear 0.5,0.5"]["version"]
    key_fact = {
        half: {name: score["value"] for name, score in scores.items()}
        for half, scores in result["halves"].items()
    }
    assert key_fact["A"][a] >= 0.5 and key_fact["B"][b] >= 0.5, key_fact
    assert key_fact["A"][merged] > key_fact["A"][b] and key_fact["B"][merged] > key_fact["B"][a], key_fact
