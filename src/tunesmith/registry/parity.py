"""Cross-engine parity (`tunesmith registry parity VERSION`): does every engine that runs a version
answer as the version does?

A locked prompt set (`export.PARITY_PROMPTS`), or the user's own (`--prompts FILE`: a version that
learned a format, such as thinking first or calling tools, shows it on its own prompts), is
rendered with the version's chat template; the set's sha256 is in the report. The reference is the
version as it was trained: its PEFT adapter over its base (or its own weights), in float32,
answering greedily. Each engine is then fed the reference's answers token by token (teacher
forcing) and measured:

- token agreement: the share of the reference's answer tokens the engine also ranks first;
- mean KL: KL(reference || engine) of the next-token distributions, averaged over the answer
  tokens, on the reference's top 20 tokens with the rest of the vocabulary as one more outcome (a
  lower bound on the full KL, computed the same way for every engine);
- identical answers: free-running greedy answers that are the reference's, token for token.

Engines: `merged` (the merged export's weights, loaded from disk), `gguf` (the GGUF export as
`tunesmith serve` runs it under llama.cpp: a LoRA adapter over its base's GGUF), and `server` (a
running OpenAI-compatible server, `--server URL`). The server is fed through its completions
endpoint with `logprobs` (its top 20 at each position, matched to the reference's tokens by their
text); a server that gives no logprobs is measured on its free-running answers only. A server runs
one of the engines, so its answers are also matched against the reference's and every engine's
measured beside it (`matches_engine`, and which one it matched).

Each engine has limits; the report (each engine's answers as text beside the reference's, the
template's markers left in) goes to `parity/VERSION-<time>.json` in the workspace, and its
figures are recorded as the version's metrics (`parity_ENGINE_token_agreement`,
`parity_ENGINE_mean_kl`, `parity_ENGINE_identical_answers`, `parity_server_matches_engine`,
`parity_passed`), which `eval.gates` can require like any metric: `{metric: parity_passed, min: 1}`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tunesmith.config import GENERATIVE_OBJECTIVES
from tunesmith.reasoning import rejoin
from tunesmith.registry.export import (
    PARITY_PROMPTS,
    greedy_answers,
    prompt_ids,
    served_gguf,
    workspace_export,
)
from tunesmith.registry.versions import RegistryError, add_metrics
from tunesmith.store import ModelVersion
from tunesmith.toolcalls import written_answer
from tunesmith.workspace import Workspace

ENGINES = ("merged", "gguf", "server")
TOP_K = 20  # the reference's tokens the KL is measured on (the rest of the vocabulary is one outcome)
ENGINE_TOP_K = 50  # llama.cpp's top tokens asked for, to find the reference's top 20 among them
# engine -> metric -> (bound, "min" or "max"). merged: the same weights, so the same answers up to
# float32 rounding; gguf: q8_0 rounds every weight, so near-ties flip and answers drift apart once
# they do, but the distributions stay close; server: what it runs (the GGUF under llama.cpp, or the
# version under transformers with a LoRA version's base weights in bfloat16) rounds as much at most,
# so the gguf limits, on its logprobs. Its free-running answers part from every engine once a
# near-tie flips in the precision it runs in; `matches_engine`, its best share of identical answers
# with the reference or an engine measured beside it, is recorded for a gate where it runs one of
# them (llama.cpp on the GGUF export answers as the gguf engine does)
LIMITS: dict[str, dict[str, tuple[float, str]]] = {
    "merged": {"token_agreement": (0.99, "min"), "mean_kl": (0.001, "max")},
    "gguf": {"token_agreement": (0.9, "min"), "mean_kl": (0.05, "max")},
    "server": {"token_agreement": (0.9, "min"), "mean_kl": (0.05, "max")},
}

Forced = list[dict[int, float]]  # per answer token: log-probabilities of some of the next tokens
Measured = Sequence[dict[int, float] | None]  # an engine's per answer token (None: not measured)


@dataclass
class Reference:
    """The version's own greedy answers to the locked prompts, and its next-token top-K at each."""

    asked: list[dict[str, Any]]  # {"prompt": messages, ["tools"]}
    prompts: list[list[int]]
    answers: list[list[int]]
    top: list[Forced]
    tokenizer: Any


@dataclass
class EngineRun:
    """What one engine gave: free-running answers (token ids), and teacher-forced log-probabilities
    (None: the engine gives none)."""

    answers: list[list[int]]
    forced: Sequence[Measured] | None
    detail: dict[str, Any] = field(default_factory=dict)
    texts: list[str] | None = None  # a server's answers as text: compared as text, not re-tokenised


def check_parity(
    workspace: Workspace,
    version: ModelVersion,
    engines: Sequence[str] = ("merged", "gguf"),
    *,
    server: str | None = None,
    server_model: str | None = None,
    max_new_tokens: int = 24,
    prompts: list[dict[str, Any]] | None = None,
    prompt_source: str | None = None,
) -> dict[str, Any]:
    """Measure each engine against the version on `prompts` (`{"prompt": messages, ["tools"]}`, as
    `tunesmith.data.prompts` reads them; the locked set when None), write the report and record its
    figures.

    Raises:
        RegistryError: an unknown engine, `server` without its URL, or a version that is not a
            causal LM.
    """
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise RegistryError(f"unknown parity engine {unknown[0]!r}; choose from {', '.join(ENGINES)}")
    if "server" in engines and not server:
        raise RegistryError("the server engine needs --server URL: the running server's /v1 base URL")
    asked = prompts or [{"prompt": [{"role": "user", "content": p}]} for p in PARITY_PROMPTS]
    reference = _reference(workspace, version, max_new_tokens, asked)
    runs: dict[str, Callable[[], EngineRun]] = {
        "merged": lambda: _merged(workspace, version, reference),
        "gguf": lambda: _gguf(workspace, version, reference),
        "server": lambda: _server(str(server), server_model or version.name, reference, max_new_tokens),
    }
    results: dict[str, dict[str, Any]] = {}
    answers = {"reference": reference.answers}
    for engine in sorted(engines, key=ENGINES.index):  # the server last: it is matched to the others
        run = runs[engine]()
        results[engine] = compare(reference, run, LIMITS[engine], answers if engine == "server" else None)
        results[engine]["answers"] = run.texts or [_text(reference, a) for a in run.answers]
        answers[engine] = run.answers
    report = {
        "version": version.name,
        "version_id": version.id,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompt_set": prompt_source or "locked",
        "prompt_set_sha256": _fingerprint(prompts),
        "prompts": len(asked),
        "answer_tokens": sum(len(a) for a in reference.answers),
        "answers": [_text(reference, a) for a in reference.answers],  # each engine's beside its figures
        "max_new_tokens": max_new_tokens,
        "engines": results,
        "passed": all(r["passed"] for r in results.values()),
    }
    folder = workspace.root / "parity"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{version.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    report["path"] = str(path)
    add_metrics(workspace, version, recorded_metrics(report), source="parity")
    return report


def _fingerprint(prompts: list[dict[str, Any]] | None) -> str:
    """The sha256 of a prompt set (what was asked: where it was read from is left out)."""
    asked = (
        PARITY_PROMPTS
        if prompts is None
        else [{k: p[k] for k in ("prompt", "tools") if k in p} for p in prompts]
    )
    return hashlib.sha256(json.dumps(asked).encode()).hexdigest()


def recorded_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's figures as version metrics: parity_ENGINE_METRIC, and parity_passed (1 or 0)."""
    metrics = {
        f"parity_{engine}_{name}": value
        for engine, result in report["engines"].items()
        for name, value in result["metrics"].items()
        if value is not None
    }
    return {**metrics, "parity_passed": float(report["passed"])}


def compare(
    reference: Reference,
    run: EngineRun,
    limits: dict[str, tuple[float, str]],
    engines: dict[str, list[list[int]]] | None = None,
) -> dict[str, Any]:
    """The engine's figures against the reference (and, given `engines`' answers, its best match
    among them), and which limits it breaks."""

    def same(expected: list[list[int]]) -> float:
        if run.texts is None:
            return _identical(expected, run.answers)
        decoded = [str(reference.tokenizer.decode(a, skip_special_tokens=True)).strip() for a in expected]
        return _identical(decoded, [t.strip() for t in run.texts])

    metrics: dict[str, float | None] = {
        "identical_answers": same(reference.answers),
        "token_agreement": None,
        "mean_kl": None,
    }
    closest = {}
    if engines is not None:
        shares = {name: same(answers) for name, answers in engines.items()}
        best = max(shares, key=shares.__getitem__)
        metrics["matches_engine"] = shares[best]
        closest = {"closest_engine": best, "identical_by_engine": shares}
    if run.forced is not None:
        agree = kls = 0.0
        count = measured = 0
        for answer, top, forced in zip(reference.answers, reference.top, run.forced, strict=True):
            for token, p, q in zip(answer, top, forced, strict=True):
                if q is None:  # a position the engine could not be fed exactly: not measured
                    continue
                agree += bool(q) and max(q, key=q.__getitem__) == token
                count += 1
                if q:  # an empty distribution (the engine would end there) counts against agreement only
                    kls += coarse_kl(p, q)
                    measured += 1
        metrics["token_agreement"] = agree / count if count else 0.0
        metrics["mean_kl"] = kls / measured if measured else 0.0
        metrics["positions_measured"] = count
    problems = []
    for name, (bound, kind) in limits.items():
        value = metrics[name]
        if value is not None and (value < bound if kind == "min" else value > bound):
            problems.append(f"{name} {value:.4g} is {'below' if kind == 'min' else 'above'} {bound:g}")
    return {
        "metrics": metrics,
        "limits": limits,
        "problems": problems,
        "passed": not problems,
        **closest,
        **run.detail,
    }


def _text(reference: Reference, answer: list[int]) -> str:
    """An answer as a reader sees it: special tokens left in (a template's markers are part of it)."""
    return str(reference.tokenizer.decode(answer, skip_special_tokens=False))


def _identical(expected: Sequence[Any], answers: Sequence[Any]) -> float:
    same = [a == b for a, b in zip(expected, answers, strict=True)]
    return sum(same) / len(same)


def coarse_kl(p: dict[int, float], q: dict[int, float]) -> float:
    """KL(p || q) over the tokens both know the log-probability of, the rest of the vocabulary as one
    outcome: a lower bound on the full KL (merging outcomes never raises a divergence)."""
    shared = [t for t in p if t in q]
    p_rest = max(1.0 - sum(math.exp(p[t]) for t in shared), 0.0)
    q_rest = max(1.0 - sum(math.exp(q[t]) for t in shared), 1e-12)
    kl = sum(math.exp(p[t]) * (p[t] - q[t]) for t in shared)
    if p_rest > 0:
        kl += p_rest * (math.log(p_rest) - math.log(q_rest))
    return max(kl, 0.0)


def _reference(
    workspace: Workspace, version: ModelVersion, max_new_tokens: int, asked: list[dict[str, Any]]
) -> Reference:
    from tunesmith.registry.loading import load_row

    if version.config["train"]["objective"] not in GENERATIVE_OBJECTIVES:
        raise RegistryError(f"{version.name} is not a language model: parity compares generated answers")
    model, tokenizer = load_row(version, workspace)
    model = model.float()
    prompts = [prompt_ids(tokenizer, p) for p in asked]
    answers = greedy_answers(model, tokenizer, max_new_tokens, asked)
    top = [_forced(model, ids, answer, None) for ids, answer in zip(prompts, answers, strict=True)]
    return Reference(asked, prompts, answers, top, tokenizer)


def _forced(model: Any, prompt: list[int], answer: list[int], wanted: Forced | None) -> Forced:
    """Teacher-forced next-token log-probabilities at each answer token: the top K, or those of the
    tokens `wanted` names at each position."""
    import torch

    from tunesmith.models.generate import inference

    with inference(model), torch.no_grad():
        ids = torch.tensor([prompt + answer], device=model.device)
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(answer)]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
    if wanted is None:
        values, indices = logprobs.topk(TOP_K, dim=-1)
        return [dict(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(indices, values, strict=True)]
    return [{t: float(row[t]) for t in want} for row, want in zip(logprobs, wanted, strict=True)]


def _merged(workspace: Workspace, version: ModelVersion, reference: Reference) -> EngineRun:
    from transformers import AutoModelForCausalLM

    from tunesmith.models.loading import LOAD_LOCK

    folder = workspace_export(workspace, version, "merged")
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    longest = len(max(reference.answers, key=len)) or 1
    answers = greedy_answers(model, reference.tokenizer, longest, reference.asked)
    forced = [
        _forced(model, ids, answer, top)
        for ids, answer, top in zip(reference.prompts, reference.answers, reference.top, strict=True)
    ]
    return EngineRun(_cut(answers, reference), forced, {"export": str(folder)})


def _gguf(workspace: Workspace, version: ModelVersion, reference: Reference) -> EngineRun:
    from tunesmith.models.llamacpp import LlamaServer, LlamaServerError

    try:
        model_file, adapter = served_gguf(workspace, version)
        lora = None if adapter is None else 0
        with LlamaServer(model_file, slots=1, context=2048, loras=[adapter] if adapter else []) as server:
            answers, forced = [], []
            for ids, answer in zip(reference.prompts, reference.answers, strict=True):
                answers.append(server.greedy(ids, max(len(answer), 1), lora))
                forced.append(
                    [server.top_logprobs(ids + answer[:k], ENGINE_TOP_K, lora) for k in range(len(answer))]
                )
    except LlamaServerError as exc:
        raise RegistryError(f"llama.cpp could not run the GGUF export of {version.name}: {exc}") from None
    files = {"gguf": str(model_file), "lora": str(adapter) if adapter else None}
    return EngineRun(_cut(answers, reference), forced, files)


def _server(url: str, model: str, reference: Reference, max_new_tokens: int) -> EngineRun:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=1)
    texts = []
    try:
        for asked in reference.asked:
            tools = {"tools": asked["tools"]} if asked.get("tools") else {}
            reply = client.chat.completions.create(
                model=model, messages=asked["prompt"], max_tokens=max_new_tokens, temperature=0, **tools
            )
            choice = reply.choices[0]
            trace = getattr(choice.message, "reasoning_content", None)  # a <think> block, split off
            said = written_answer(choice.message.model_dump())  # calls read back as the model wrote them
            texts.append(rejoin(trace, said, cut=choice.finish_reason == "length"))
        forced = _server_forced(client, model, reference)
    except openai.OpenAIError as exc:
        raise RegistryError(f"the server at {url} did not answer as {model}: {exc}") from None
    answers = [list(reference.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    detail = {"server": url, "model": model, "logprobs": forced is not None}
    return EngineRun(answers, forced, detail, texts)


def _server_forced(client: Any, model: str, reference: Reference) -> list[Measured] | None:
    """The server fed the reference's answers token by token: at each, its top next tokens through
    the completions endpoint (`logprobs`, every position of an answer in one request), matched to
    the reference's top tokens by their text. None when the server gives no logprobs.

    A position the server cannot be fed exactly (its text tokenizes otherwise) is None: not
    measured. One where the server's likeliest token ends the answer (an end of turn has no entry)
    is an empty distribution: measured, and not in agreement.
    """
    import openai

    tokenizer = reference.tokenizer
    forced: list[Measured] = []
    for prompt, answer, top in zip(reference.prompts, reference.answers, reference.top, strict=True):
        contexts = [prompt + answer[:k] for k in range(len(top))]
        texts = [tokenizer.decode(context, skip_special_tokens=False) for context in contexts]
        exact = [
            i for i, (t, c) in enumerate(zip(texts, contexts, strict=True)) if tokenizer(t)["input_ids"] == c
        ]
        steps: list[dict[int, float] | None] = [None] * len(top)
        for start in range(0, len(exact), 64):  # a completions request takes up to 64 prompts
            batch = exact[start : start + 64]
            try:
                reply = client.completions.create(
                    model=model, prompt=[texts[i] for i in batch], max_tokens=1, temperature=0, logprobs=TOP_K
                )
            except openai.BadRequestError as exc:
                if "logprobs" in str(exc):
                    return None  # a server that reports no logprobs: answers only
                raise
            for choice in reply.choices:
                i = batch[choice.index]
                logprobs = choice.logprobs
                given = dict(logprobs.top_logprobs[0]) if logprobs and logprobs.top_logprobs else {}
                names = {tokenizer.decode([t], skip_special_tokens=False): t for t in top[i]}
                steps[i] = {names[name]: value for name, value in given.items() if name in names}
        forced.append(steps)
    return forced


def _cut(answers: list[list[int]], reference: Reference) -> list[list[int]]:
    """Each answer cut to its reference's length: the engines were asked for at most that many."""
    return [a[: len(r)] for a, r in zip(answers, reference.answers, strict=True)]


def parity_lines(report: dict[str, Any]) -> list[str]:
    """The report as a few printable lines."""
    lines = [
        f"Parity of {report['version']}: {report['prompts']} prompts ({report['prompt_set']}, "
        f"sha256 {report['prompt_set_sha256'][:12]}), {report['answer_tokens']} answer tokens"
    ]
    for engine, result in report["engines"].items():
        m = result["metrics"]
        figures = [f"identical answers {m['identical_answers']:.0%}"]
        if "matches_engine" in m:
            figures.append(f"answers as {result['closest_engine']} does {m['matches_engine']:.0%}")
        if m["token_agreement"] is not None:
            figures += [f"token agreement {m['token_agreement']:.1%}", f"mean KL {m['mean_kl']:.2e}"]
        verdict = "passed" if result["passed"] else "FAILED: " + "; ".join(result["problems"])
        lines.append(f"  {engine}: {', '.join(figures)} — {verdict}")
    lines.append(f"Written to {report['path']}; recorded as {report['version']}'s parity_* metrics")
    return lines
