"""`tunesmith registry parity`: a version's answers on its merged export, its GGUF under llama.cpp and
a running server, against the version itself; a broken export fails it, and a gate can require it.
The GGUF engine on the bundled model is checked in test_serve's llama.cpp test, beside the server
that runs the same export."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import write_jsonl
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.registry.versions import all_metrics, get_version
from tunesmith.serve import serve_in_background
from tunesmith.workspace import open_workspace

runner = CliRunner()


def parity(config: Path, version: str, *args: str):
    result = runner.invoke(app, ["registry", "parity", version, *args, "--config", str(config)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result, " ".join(result.output.split())


def latest_report(workspace) -> dict:
    """The report written last (by time: another version's name may sort after this one's)."""
    return json.loads(
        max((workspace.root / "parity").glob("*.json"), key=lambda p: p.stat().st_mtime_ns).read_text()
    )


def test_the_merged_export_and_the_server_answer_as_the_version_and_a_gate_can_require_it(serve_project):
    path, settings, name = serve_project["path"], serve_project["settings"], serve_project["first"]
    config = load_config(path, settings)
    workspace = open_workspace(config)
    gated = [*settings, "eval.gates=[{metric: parity_passed, min: 1}]", "eval.compare=[base]"]
    gates = [arg for s in gated for arg in ("--set", s)]
    before = runner.invoke(app, ["eval", name, "--gate", "--config", str(path), *gates])
    assert before.exit_code == 3, before.output
    assert "metric 'parity_passed' was not computed" in " ".join(before.output.split())

    with serve_in_background(load_config(path, [*settings, "serve.poll_seconds=0.2"])) as (url, _):
        served_as = ["--server", f"{url}/v1", "--server-model", serve_project["family"]]  # production: v1
        result, said = parity(path, name, "--engines", "merged,server", *served_as)
    assert result.exit_code == 0, result.output
    assert f"Parity of {name}: 5 prompts (locked, sha256" in said
    assert "merged: identical answers 100%, token agreement 100.0%" in said
    assert "server: identical answers" in said and "answers as" in said
    report = latest_report(workspace)
    assert report["passed"] and report["engines"]["merged"]["metrics"]["mean_kl"] < 1e-6
    served = report["engines"]["server"]  # fed the reference's answers through /v1/completions logprobs
    assert served["logprobs"] and served["metrics"]["token_agreement"] == 1.0, served
    assert served["metrics"]["mean_kl"] < 1e-6, served  # float32 weights here: the version itself
    recorded = all_metrics(workspace, get_version(workspace, name))
    assert recorded["parity_passed"] == 1.0 and recorded["parity_merged_token_agreement"] == 1.0

    after = runner.invoke(app, ["eval", name, "--gate", "--config", str(path), *gates])
    assert after.exit_code == 0, after.output
    assert "parity_passed = 1" in " ".join(after.output.split())


def test_an_export_whose_weights_were_changed_fails_parity(serve_project):
    path, settings, name = serve_project["path"], serve_project["settings"], serve_project["second"]
    workspace = open_workspace(load_config(path, settings))
    good, _ = parity(path, name, "--engines", "merged")
    assert good.exit_code == 0, good.output
    weights = workspace.root / "exports" / f"{name}-merged" / "model.safetensors"
    tensors = load_file(weights)
    head = next(k for k in tensors if "embed" in k or "lm_head" in k)
    tensors[head] = tensors[head][
        torch.randperm(tensors[head].shape[0], generator=torch.Generator().manual_seed(0))
    ]
    save_file(tensors, weights, metadata={"format": "pt"})

    broken, said = parity(path, name, "--engines", "merged")
    assert broken.exit_code == 3, broken.output
    assert "merged:" in said and "FAILED:" in said and ("token_agreement" in said or "mean_kl" in said)
    assert all_metrics(workspace, get_version(workspace, name))["parity_passed"] == 0.0


def test_unknown_engines_and_a_server_without_its_url_are_refused(serve_project):
    path, name = serve_project["path"], serve_project["first"]
    unknown, said = parity(path, name, "--engines", "merged,onnx")
    assert unknown.exit_code != 0 and "unknown parity engine 'onnx'" in said
    no_url, said = parity(path, name, "--engines", "server")
    assert no_url.exit_code != 0 and "the server engine needs --server URL" in said


def test_parity_on_your_own_prompts_with_their_tools_and_a_bad_file_says_where(serve_project, tmp_path):
    path, settings, name = serve_project["path"], serve_project["settings"], serve_project["first"]
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    asked = tmp_path / "asked.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [weather]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    ]
    write_jsonl(asked, rows)
    result, said = parity(path, name, "--engines", "merged", "--prompts", str(asked))
    assert result.exit_code == 0, result.output
    assert f"Parity of {name}: 2 prompts (" in said  # (the file's path, wrapped at 80 columns here)
    report = latest_report(open_workspace(load_config(path, settings)))
    assert report["prompt_set"] == str(asked) and len(report["answers"]) == 2
    assert report["engines"]["merged"]["metrics"]["identical_answers"] == 1.0
    locked = runner.invoke(app, ["registry", "parity", name, "--engines", "merged", "--config", str(path)])
    assert (
        latest_report(open_workspace(load_config(path, settings)))["prompt_set_sha256"]
        != report["prompt_set_sha256"]
    ), locked.output

    asked.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\nnot json\n')
    bad, said = parity(path, name, "--engines", "merged", "--prompts", str(asked))
    assert bad.exit_code == 2 and f"{asked}:2: not JSON" in said
