"""`tunesmith registry export | push | parity`: a version's artifacts, and whether each engine that
runs them answers as the version does."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.common import fail, out, project_workspace, reported
from tunesmith.cli.options import ConfigOpt, VersionArg
from tunesmith.cli.registry import registry_app


@registry_app.command("export")
def registry_export(
    version: VersionArg,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="adapter (PEFT), merged (safetensors), gguf (llama.cpp, Ollama) or gguf-lora (a GGUF "
            "LoRA adapter over the base model's GGUF).",
        ),
    ] = "merged",
    quant: Annotated[str, typer.Option(help="gguf: f16 or q8_0.")] = "q8_0",
    output: Annotated[
        Path | None, typer.Option(help="Folder to write (default: exports/ in the workspace).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Export a version as an adapter, a merged model or GGUF, with a parity check against the version."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.export import export_version

    if format_ not in ("adapter", "merged", "gguf", "gguf-lora"):
        raise fail(f"--format {format_!r}: use adapter, merged, gguf or gguf-lora", 2)
    if quant not in ("f16", "q8_0"):
        raise fail(f"--quant {quant!r}: use f16 or q8_0", 2)
    workspace = project_workspace(config)
    with reported(RegistryError):
        target, report = export_version(
            workspace,
            get_version(workspace, version),
            format_,  # type: ignore[arg-type]
            output,
            quant=quant,
        )
    out.print(f"Exported {version} ({format_}) to {target}")
    out.print(
        f"Parity: {report['identical_tokens']}/{report['prompts']} prompts gave identical tokens "
        f"(token agreement {report['token_agreement']:.1%}), "
        f"{report['answers_ending_at_a_stop_token']} ended at a stop token {report['stop_tokens']}, "
        f"chat template round-trips: {report['chat_template_round_trips']}",
        highlight=False,
    )


@registry_app.command("push")
def registry_push(
    version: VersionArg,
    to: Annotated[
        str, typer.Option("--to", help="hf (the Hugging Face Hub) or mlflow (an MLflow registry).")
    ],
    repo: Annotated[str | None, typer.Option(help="hf: the repository, owner/name.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="mlflow: the tracking server URI.")] = None,
    format_: Annotated[
        str | None, typer.Option("--format", help="adapter or merged (default: adapter for LoRA versions).")
    ] = None,
    public: Annotated[bool, typer.Option(help="hf: make a new repository public.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Push a version (exported, with its model card) to the Hugging Face Hub or an MLflow registry."""
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.sync import log_to_mlflow, push_to_hub

    if to not in ("hf", "mlflow"):
        raise fail(f"--to {to!r}: use hf or mlflow", 2)
    if to == "hf" and not repo:
        raise fail("--to hf needs --repo OWNER/NAME", 2)
    workspace = project_workspace(config)
    with reported(RegistryError):
        target = get_version(workspace, version)
        if to == "hf":
            assert repo is not None
            url = push_to_hub(workspace, target, repo, private=not public, fmt=format_)
            out.print(f"Pushed {target.name} to {url}")
        else:
            logged = log_to_mlflow(workspace, target, tracking_uri, fmt=format_)
            out.print(
                f"Logged {target.name} as MLflow run {logged['run_id']}, "
                f"model {logged['model']} version {logged['model_version']}"
            )


@registry_app.command("parity")
def registry_parity(
    version: VersionArg,
    engines: Annotated[
        str,
        typer.Option(
            help="Comma-separated: merged (the merged export), gguf (the GGUF export under llama.cpp, "
            "as serve runs it), server (a running OpenAI-compatible server, --server)."
        ),
    ] = "merged,gguf",
    server: Annotated[
        str | None, typer.Option(help="server: its /v1 base URL, e.g. http://127.0.0.1:8000/v1.")
    ] = None,
    server_model: Annotated[
        str | None,
        typer.Option(
            help="server: the model name it serves the version under (default: the version's name)."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens of each greedy answer.")] = 24,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="Your own prompts instead of the five locked ones: a .txt file (one per line) or "
            "JSONL rows (chat rows, their last answer dropped, or {prompt}; a row's tools come along)."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Compare a version's answers on every engine: token agreement and KL against the version itself.

    Exits 3 when an engine breaks a limit; the figures are recorded as the version's parity_* metrics,
    which eval.gates can require (e.g. {metric: parity_passed, min: 1}).
    """
    from tunesmith.data.prompts import read_prompts
    from tunesmith.registry import RegistryError, get_version
    from tunesmith.registry.parity import check_parity, parity_lines

    workspace = project_workspace(config)
    with reported(RegistryError):
        report = check_parity(
            workspace,
            get_version(workspace, version),
            [e.strip() for e in engines.split(",") if e.strip()],
            server=server,
            server_model=server_model,
            max_new_tokens=max_new_tokens,
            prompts=read_prompts(prompts) if prompts is not None else None,
            prompt_source=str(prompts) if prompts is not None else None,
        )
    for line in parity_lines(report):
        out.print(line, highlight=False, markup=False)
    if not report["passed"]:
        raise typer.Exit(3)
