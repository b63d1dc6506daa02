"""Export a version as a PEFT adapter or a merged model, and prove the export behaves like the version.

Every export ends with a parity check, written to `parity.json` beside the files:

- tokens: greedy answers of the exported artefact to a fixed prompt set are the same tokens as
  the registered version's (both in float32, so the comparison is of the weights, not of rounding);
  a GGUF file is run by llama.cpp itself (`llama-server`), with the template and tokenizer inside
  the file, and must rank first at least 90% of the version's answer tokens (GGUF is lossy);
- stop: the exported generation config stops at the chat template's end-of-turn token and the
  tokenizer's end-of-sequence token, as training taught;
- template: the exported tokenizer's chat template is the version's (same sha256) and renders a
  conversation to the same text.

A merged export also gets an Ollama `Modelfile` (Ollama imports safetensors of Llama-family models
directly). The export is written to a temporary folder and moved into place only once complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from tunesmith.chat import render_chat
from tunesmith.config import GENERATIVE_OBJECTIVES
from tunesmith.registry.versions import RegistryError
from tunesmith.store import ModelVersion
from tunesmith.workspace import Workspace, atomic_dir

ExportFormat = Literal["adapter", "merged", "gguf", "gguf-lora"]
log = logging.getLogger("tunesmith.registry")
GGUF_MIN_AGREEMENT = 0.9  # top-1 agreement below this means a broken conversion, not rounding

PARITY_PROMPTS = [
    "What can you help me with?",
    "Explain in one sentence what a refund is.",
    "List three colours.",
    "How do I reset my password?",
    "Say hello in French.",
]

CHATML_MODELFILE_TEMPLATE = (
    '"""{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"""'
)


class ExportError(RegistryError):
    """An export that cannot be made, or whose parity check failed."""


def export_version(
    workspace: Workspace,
    version: ModelVersion,
    fmt: ExportFormat,
    output: Path | None = None,
    *,
    quant: str = "q8_0",
    max_new_tokens: int = 24,
) -> tuple[Path, dict[str, Any]]:
    """Write `version` as `fmt` to `output` (default `exports/NAME-FMT/` in the workspace).

    `gguf` writes one `NAME-QUANT.gguf` (`quant`: f16 or q8_0) with an Ollama Modelfile.
    `gguf-lora` writes the LoRA adapter as `NAME-lora.gguf` for llama.cpp to apply over the base
    model's GGUF (`base_gguf`, written once per base), so versions of one base share it.

    Returns the folder and the parity report.

    Raises:
        ExportError: an adapter export of a version that has no adapter, or a failed parity check
            (the files are kept, so the failure can be inspected, and the report says what differs).
    """
    from tunesmith.registry.loading import load_row

    if version.config.get("train", {}).get("objective", "sft") not in GENERATIVE_OBJECTIVES:
        raise ExportError(f"{version.name} is a classifier; export covers generative versions")
    if fmt == "gguf-lora" and (version.method not in ("lora", "qlora") or version.parent_id is not None):
        raise ExportError(f"{version.name} is not a LoRA adapter on its base model: export it as gguf")
    if fmt == "adapter" and version.method not in ("lora", "qlora"):
        raise ExportError(
            f"{version.name} was trained with method {version.method}: it has no adapter; use merged"
        )
    suffix = f"gguf-{quant}" if fmt == "gguf" else fmt
    base = base_gguf(workspace, version, quant) if fmt == "gguf-lora" else None
    target = output or workspace.root / "exports" / f"{version.name}-{suffix}"
    model, tokenizer = load_row(version, workspace)
    model = model.float()
    with atomic_dir(target) as tmp:
        if fmt == "adapter":
            for item in Path(version.path).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
        elif base is not None:
            _write_gguf_lora(tmp, version, base)
        else:
            _write_merged(tmp, model, tokenizer, version, fmt, quant)
        tokenizer.save_pretrained(tmp)
        (tmp / "tunesmith-export.json").write_text(
            json.dumps(
                {
                    "version": version.name,
                    "version_id": version.id,
                    "format": suffix,
                    "base_model": version.base_model,
                    "base_revision": version.base_revision,
                    "weights_sha256": version.weights_sha256,
                    "parent_version": version.parent_id,  # an adapter export needs its parent merged in
                    "base_gguf": str(base) if base is not None else None,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    del model
    report = _check_parity(target, version, fmt, workspace, max_new_tokens, base)
    (target / "parity.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if not report["passed"]:
        raise ExportError(f"the {fmt} export of {version.name} failed its parity check: {report['problems']}")
    return target, report


def gguf_refusal(version: ModelVersion) -> str | None:
    """Why `version` has no GGUF export llama.cpp could run, seen from its files without loading
    it; None when it may have one (whether it does is the export's parity check)."""
    from tunesmith.registry.gguf_export import SUPPORTED

    if version.config.get("train", {}).get("objective", "sft") not in GENERATIVE_OBJECTIVES:
        return "it is a classifier"
    folder = Path(version.path)
    tokenizer = folder / "tokenizer.json"
    kind = (
        json.loads(tokenizer.read_text(encoding="utf-8")).get("model", {}).get("type")
        if tokenizer.exists()
        else None
    )
    if kind != "BPE":
        return f"GGUF export covers BPE tokenizers; this one is {kind or 'not a tokenizer.json'}"
    config = folder / "config.json"
    if not config.exists() and (folder / "adapter_config.json").exists():
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
        config = Path(base or "") / "config.json"
    if config.is_file():
        architecture = (json.loads(config.read_text(encoding="utf-8")).get("architectures") or ["?"])[0]
        if architecture not in SUPPORTED:
            return f"GGUF export covers {', '.join(SUPPORTED)}; this model is {architecture}"
    return None


def base_gguf(workspace: Workspace, version: ModelVersion, quant: str = "q8_0") -> Path:
    """The base model of `version` as one GGUF file, written once per base model and revision into
    `exports/bases/` and shared by the GGUF LoRA adapters of every version trained on it."""
    import os
    import re

    from filelock import FileLock

    from tunesmith.models.loading import local_dir
    from tunesmith.registry.gguf_export import write_gguf

    model_id = str(version.config["model"]["id"])
    key = hashlib.sha256(f"{model_id}@{version.base_revision}".encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id.strip("/"))[-40:]
    target = workspace.root / "exports" / "bases" / f"{slug}-{key}-{quant}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if not target.exists():
            partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                write_gguf(local_dir(version.config["model"]), partial, quant, model_id, _gguf_pre(version))  # type: ignore[arg-type]
            except (ValueError, FileNotFoundError) as exc:
                partial.unlink(missing_ok=True)
                raise ExportError(f"GGUF export of the base model {model_id}: {exc}") from None
            partial.replace(target)
    return target


def _write_gguf_lora(tmp: Path, version: ModelVersion, base: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from tunesmith.models.loading import local_dir
    from tunesmith.registry.gguf_export import write_gguf_lora

    base_config = AutoConfig.from_pretrained(local_dir(version.config["model"])).to_dict()
    adapter = f"{version.name}-lora.gguf"
    try:
        write_gguf_lora(Path(version.path), base_config, tmp / adapter, version.name)
    except (ValueError, FileNotFoundError) as exc:
        raise ExportError(f"GGUF LoRA export of {version.name}: {exc}") from None
    _write_modelfile(tmp, AutoTokenizer.from_pretrained(version.path), version, str(base), f"./{adapter}")


def _write_merged(
    tmp: Path, model: Any, tokenizer: Any, version: ModelVersion, fmt: ExportFormat, quant: str
) -> None:
    """The adapter merged into full weights, as safetensors or (`gguf`) one GGUF file, with a Modelfile."""
    from tunesmith.models.generate import stop_token_ids

    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.generation_config.eos_token_id = stop_token_ids(tokenizer, merged)
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    folder = tmp / "merged" if fmt == "gguf" else tmp
    merged.save_pretrained(folder, safe_serialization=True)
    if fmt == "gguf":
        from tunesmith.registry.gguf_export import write_gguf

        tokenizer.save_pretrained(folder)
        gguf_file = f"{version.name}-{quant}.gguf"
        try:
            write_gguf(folder, tmp / gguf_file, quant, version.name, _gguf_pre(version))  # type: ignore[arg-type]
        except (ValueError, FileNotFoundError) as exc:  # another architecture or tokenizer kind
            raise ExportError(f"GGUF export of {version.name}: {exc}") from None
        shutil.rmtree(folder)
        _write_modelfile(tmp, tokenizer, version, source=f"./{gguf_file}")
    else:
        _write_modelfile(tmp, tokenizer, version)


def _check_parity(
    target: Path,
    version: ModelVersion,
    fmt: ExportFormat,
    workspace: Workspace,
    max_new_tokens: int,
    base: Path | None = None,
) -> dict[str, Any]:
    """Greedy answers of the version and of its export, compared (GGUF: through llama.cpp itself)."""
    from tunesmith.registry.loading import load_row

    reference_model, reference_tokenizer = load_row(version, workspace)
    reference = greedy_answers(reference_model.float(), reference_tokenizer, max_new_tokens)
    if fmt in ("gguf", "gguf-lora"):
        return _gguf_parity(target, version, reference, reference_tokenizer, max_new_tokens, base)
    exported_model, exported_tokenizer = _load_export(target, fmt, version, workspace)
    exported = greedy_answers(exported_model.float(), exported_tokenizer, max_new_tokens)
    return _parity(version, reference, exported, reference_tokenizer, exported_tokenizer, exported_model)


def _load_export(
    target: Path, fmt: ExportFormat, version: ModelVersion, workspace: Workspace
) -> tuple[Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.loading import LOAD_LOCK
    from tunesmith.registry.loading import adapter_base

    tokenizer = AutoTokenizer.from_pretrained(target)
    if fmt == "merged":
        with LOAD_LOCK:
            return AutoModelForCausalLM.from_pretrained(target, dtype="float32"), tokenizer
    model, _, _ = adapter_base(version, workspace, action="exporting")
    return PeftModel.from_pretrained(model, target), tokenizer


def greedy_answers(
    model: Any, tokenizer: Any, max_new_tokens: int, prompts: Sequence[str | dict[str, Any]] = PARITY_PROMPTS
) -> list[list[int]]:
    """Greedy new tokens for each prompt (the locked parity set unless given), one at a time (no
    padding to differ)."""
    import torch

    from tunesmith.models.generate import inference, stop_token_ids

    stops = stop_token_ids(tokenizer, model)
    out = []
    with inference(model):
        for prompt in prompts:
            ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=model.device)
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.append([int(t) for t in generated[0, ids.shape[1] :]])
    return out


def _parity(
    version: ModelVersion,
    reference: list[list[int]],
    exported: list[list[int]],
    reference_tokenizer: Any,
    exported_tokenizer: Any,
    exported_model: Any,
) -> dict[str, Any]:
    from tunesmith.models.generate import stop_token_ids

    same = [a == b for a, b in zip(reference, exported, strict=True)]
    problems = []
    if not all(same):
        problems.append(f"{same.count(False)} of {len(same)} prompts gave other tokens")
    expected_stops = set(stop_token_ids(reference_tokenizer))
    exported_stops = set(stop_token_ids(exported_tokenizer, exported_model))
    if not expected_stops <= exported_stops:
        problems.append(f"stop tokens {sorted(expected_stops - exported_stops)} are missing from the export")
    template = exported_tokenizer.chat_template or ""
    template_sha = hashlib.sha256(template.encode()).hexdigest()
    conversation = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ]
    rendered_same = reference_tokenizer.apply_chat_template(
        conversation, tokenize=False
    ) == exported_tokenizer.apply_chat_template(conversation, tokenize=False)
    if template_sha != version.lineage.get("chat_template_sha256"):
        problems.append("the exported chat template is not the version's")
    if not rendered_same:
        problems.append("the chat template renders a conversation differently")
    stopped = [bool(tokens) and tokens[-1] in expected_stops for tokens in exported]
    return {
        "prompts": len(PARITY_PROMPTS),
        "identical_tokens": sum(same),
        "token_agreement": sum(same) / len(same),
        "stop_tokens": sorted(exported_stops),
        "answers_ending_at_a_stop_token": sum(stopped),
        "chat_template_sha256": template_sha,
        "chat_template_round_trips": rendered_same,
        "problems": problems,
        "passed": not problems,
    }


def _gguf_pre(version: ModelVersion) -> str:
    from tunesmith.models.catalog import CATALOG

    entry = CATALOG.get(version.config["model"]["id"])
    return entry.gguf_pre if entry is not None else "default"


def _gguf_parity(
    target: Path,
    version: ModelVersion,
    reference: list[list[int]],
    reference_tokenizer: Any,
    max_new_tokens: int,
    base: Path | None = None,
) -> dict[str, Any]:
    """The GGUF file run by llama.cpp itself, with the chat template and tokenizer inside the file.

    GGUF is lossy (f16, q8_0), so identical answers are reported but the gate is the top-1 agreement
    rate: fed the version's own answer, how many of its tokens llama.cpp also ranks first (free-running
    answers of a lossy copy drift apart after the first near-tie). The prompt tokens that the file's
    template and tokenizer give must be the version's, and so must the embedded template. A
    `gguf-lora` export is run as llama.cpp serves it: over the `base` GGUF, with the adapter applied.
    """
    from transformers import AutoTokenizer

    from tunesmith.models.llamacpp import LlamaServer, LlamaServerError

    (gguf_file,) = target.glob("*.gguf")
    exported_tokenizer = AutoTokenizer.from_pretrained(target)
    model, loras, lora = (gguf_file, [], None) if base is None else (base, [gguf_file], 0)
    try:
        with LlamaServer(model, slots=1, context=2048, loras=loras) as server:
            embedded = str(server.call("/props").get("chat_template") or "")
            prompts = [server.chat_prompt([{"role": "user", "content": p}]) for p in PARITY_PROMPTS]
            exported = [server.greedy(ids, max_new_tokens, lora) for ids in prompts]
            same = total = 0
            for ids, answer in zip(prompts, reference, strict=True):
                for k, token in enumerate(answer):
                    same += server.greedy(ids + answer[:k], 1, lora) == [token]
                    total += 1
    except LlamaServerError as exc:
        raise ExportError(
            f"the GGUF export of {version.name} could not be checked with llama.cpp: {exc}"
        ) from None
    report = _parity(version, reference, exported, reference_tokenizer, exported_tokenizer, None)
    report["token_agreement"] = same / total if total else 0.0
    embedded_sha = hashlib.sha256(embedded.encode()).hexdigest()
    problems = [p for p in report["problems"] if "gave other tokens" not in p]
    if embedded_sha != version.lineage.get("chat_template_sha256"):
        problems.append("the chat template inside the GGUF file is not the version's")
    expected = [prompt_ids(reference_tokenizer, p) for p in PARITY_PROMPTS]
    if prompts != expected:
        problems.append("llama.cpp tokenises the prompts differently from the version's tokenizer")
    if report["token_agreement"] < GGUF_MIN_AGREEMENT:
        problems.append(
            f"llama.cpp ranks first only {report['token_agreement']:.0%} of the version's answer tokens "
            f"(at least {GGUF_MIN_AGREEMENT:.0%} expected of a faithful conversion)"
        )
    report.update(
        {
            "checked_with": "llama.cpp",
            "gguf_file": gguf_file.name,
            "gguf_chat_template_sha256": embedded_sha,
            "prompt_tokens_identical": prompts == expected,
            "problems": problems,
            "passed": not problems,
        }
    )
    return report


def prompt_ids(tokenizer: Any, prompt: str | dict[str, Any]) -> list[int]:
    """A prompt rendered as training renders it: a user message, or `{"prompt": messages, "tools"}`
    (`tunesmith.data.prompts` reads them from a file)."""
    if isinstance(prompt, str):
        prompt = {"prompt": [{"role": "user", "content": prompt}]}
    text = render_chat(tokenizer, prompt["prompt"], prompt.get("tools"), add_generation_prompt=True)
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _write_modelfile(
    directory: Path, tokenizer: Any, version: ModelVersion, source: str = ".", adapter: str | None = None
) -> None:
    """An Ollama Modelfile for the export, with the template and stop token spelled out."""
    template = tokenizer.chat_template or ""
    lines = [f"# Ollama: `ollama create {version.name} -f Modelfile` in this folder", f"FROM {source}"]
    if adapter is not None:
        lines.append(f"ADAPTER {adapter}")
    if "<|im_start|>" in template:
        lines += [f"TEMPLATE {CHATML_MODELFILE_TEMPLATE}", 'PARAMETER stop "<|im_end|>"']
    else:
        lines.append("# The chat template is not ChatML: Ollama reads it from tokenizer_config.json.")
    if tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    lines.append("PARAMETER temperature 0")
    (directory / "Modelfile").write_text("\n".join(dict.fromkeys(lines)) + "\n", encoding="utf-8")


GGUF_QUANT = "q8_0"  # what llama.cpp serves: near-lossless, half the size of f16


def workspace_export(
    workspace: Workspace, version: ModelVersion, fmt: ExportFormat, quant: str = GGUF_QUANT
) -> Path:
    """The folder of the version's `fmt` export in the workspace (`exports/NAME-FORMAT`), exported
    now when there is none there that passed its parity check."""
    suffix = f"gguf-{quant}" if fmt == "gguf" else fmt
    folder = workspace.root / "exports" / f"{version.name}-{suffix}"
    parity = folder / "parity.json"
    if parity.exists() and json.loads(parity.read_text(encoding="utf-8")).get("passed"):
        return folder
    log.info("exporting %s (%s)", version.name, suffix)
    target, _ = export_version(workspace, version, fmt, folder, quant=quant)
    return target


def served_gguf(workspace: Workspace, version: ModelVersion) -> tuple[Path, Path | None]:
    """(GGUF model file, GGUF LoRA adapter or None) as llama.cpp serves the version: a LoRA adapter
    trained on its base model over the base's GGUF (versions of one base share it), anything else
    (or an adapter llama.cpp cannot take) as a GGUF of its own."""
    if version.method in ("lora", "qlora") and version.parent_id is None:
        try:
            folder = workspace_export(workspace, version, "gguf-lora")
        except RegistryError as exc:
            log.info("%s runs as a GGUF of its own: %s", version.name, exc)
        else:
            export = json.loads((folder / "tunesmith-export.json").read_text(encoding="utf-8"))
            return Path(export["base_gguf"]), next(folder.glob("*-lora.gguf"))
    return next(workspace_export(workspace, version, "gguf").glob("*.gguf")), None
