"""GGUF export (llama.cpp, Ollama) of Llama-architecture models, written with the `gguf` library.

The merged model's tensors are renamed with gguf's own tensor map, the query and key projections
permuted the way llama.cpp's converter does, and the BPE vocabulary, merges, special tokens and
chat template written from the tokenizer files by gguf's vocab helpers. `f16` keeps matrices in
half precision; `q8_0` quantises them with gguf's reference Q8_0 quantiser. Norms stay float32.
llama.cpp picks its pre-tokenizer by name: catalogue models carry theirs (SmolLM2: `smollm`, as in
its bundled GGUF); other models get `default`.

The parity check (`registry.export`) runs the file with llama.cpp itself and measures how many of
the version's answer tokens it also ranks first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

GgufType = Literal["f16", "q8_0"]
SUPPORTED = ("LlamaForCausalLM",)


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout of a q/k projection to llama.cpp's (as convert_hf_to_gguf.py does)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(merged_dir: Path, target: Path, qtype: GgufType, name: str, pre: str = "default") -> Path:
    """Write `merged_dir` (a saved Llama-architecture model with its tokenizer) as one GGUF file.

    Raises:
        ValueError: for an architecture this writer does not cover.
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in SUPPORTED:
        raise ValueError(f"GGUF export covers {', '.join(SUPPORTED)}; this model is {architecture}")
    arch = gguf.MODEL_ARCH.LLAMA
    n_layers, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    writer = gguf.GGUFWriter(str(target), gguf.MODEL_ARCH_NAMES[arch])
    _metadata(writer, config, qtype, name)
    _vocabulary(writer, merged_dir, pre)
    names = gguf.get_tensor_name_map(arch, n_layers)
    tensors: dict[str, Any] = {}
    for file in sorted(merged_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    for hf_name, value in tensors.items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"tensor {hf_name} has no GGUF name")
        data = value.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if data.ndim == 1:
            writer.add_tensor(gguf_name, data)
        elif qtype == "q8_0" and data.shape[-1] % 32 == 0:
            quantised = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, quantised, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, data.astype(np.float16))
    return _written(writer, target)


def write_gguf_lora(adapter_dir: Path, base_config: dict[str, Any], target: Path, name: str) -> Path:
    """Write the PEFT LoRA adapter in `adapter_dir` as a GGUF LoRA adapter for llama.cpp.

    As convert_lora_to_gguf.py writes one: each A and B matrix under the base tensor's GGUF name
    with `.lora_a` / `.lora_b`, B's rows of q and k permuted as the base's are, and `lora_alpha` for
    llama.cpp's scale alpha / r (rsLoRA's alpha / sqrt(r) folded into alpha). float32: an adapter is small.

    Raises:
        ValueError: an architecture this writer does not cover, or an adapter llama.cpp cannot apply
            (DoRA, per-module ranks, trained modules besides the LoRA matrices).
    """
    import math

    import gguf
    from safetensors.numpy import load_file

    settings = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    architecture = (base_config.get("architectures") or ["?"])[0]
    if architecture not in SUPPORTED:
        raise ValueError(f"GGUF export covers {', '.join(SUPPORTED)}; this model is {architecture}")
    if settings.get("use_dora") or settings.get("rank_pattern") or settings.get("alpha_pattern"):
        raise ValueError("a DoRA adapter, or one with per-module ranks, has no GGUF LoRA form: export merged")
    alpha = float(settings["lora_alpha"]) * (math.sqrt(settings["r"]) if settings.get("use_rslora") else 1.0)
    n_layers, n_head = base_config["num_hidden_layers"], base_config["num_attention_heads"]
    n_kv = base_config.get("num_key_value_heads", n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    writer = gguf.GGUFWriter(str(target), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for key, value in sorted(load_file(adapter_dir / "adapter_model.safetensors").items()):
        part = "lora_a" if ".lora_A." in key else "lora_b" if ".lora_B." in key else None
        if part is None:
            raise ValueError(f"{key} is not a LoRA matrix; a GGUF LoRA adapter holds only those")
        hf_name = key.removeprefix("base_model.model.").replace(f".lora_{part[-1].upper()}.", ".")
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"tensor {hf_name} has no GGUF name")
        data = value.astype(np.float32)
        if part == "lora_b" and hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif part == "lora_b" and hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        writer.add_tensor(f"{gguf_name}.{part}", data)
    return _written(writer, target)


def _written(writer: Any, target: Path) -> Path:
    """Write the header, the key-values and the tensors `writer` holds to `target`, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def _metadata(writer: Any, config: dict[str, Any], qtype: GgufType, name: str) -> None:
    import gguf

    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // n_head)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    rope = config.get("rope_parameters") or {}  # transformers 5 keeps rope_theta here
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)


def _vocabulary(writer: Any, merged_dir: Path, pre: str) -> None:
    """BPE tokens, merges, special tokens and the chat template, from the tokenizer files."""
    import gguf
    from transformers import AutoTokenizer

    vocab = gguf.BpeVocab(merged_dir)
    added = AutoTokenizer.from_pretrained(merged_dir).added_tokens_decoder
    tokens, toktypes = [], []
    for index, (text, _score, kind) in enumerate(vocab.all_tokens()):
        tokens.append(text)
        extra = added.get(index)  # as convert_hf_to_gguf.py: llama.cpp parses these in text as one token
        special = (
            gguf.TokenType.CONTROL if extra is not None and extra.special else gguf.TokenType.USER_DEFINED
        )
        toktypes.append(kind if extra is None else special)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)  # llama.cpp splits text before BPE by this name
    writer.add_vocab_size(len(tokens))
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(merged_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer)
