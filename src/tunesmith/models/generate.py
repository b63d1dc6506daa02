"""Generation and likelihoods: batched, greedy, with the chat template used in training (eval, synth, export).

Answers stop where training taught the model to stop: at the tokenizer's end-of-sequence tokens and
at the token the chat template puts after an assistant turn. Generated answers are cached on disk,
keyed by the model's identity, the prompt and the decoding settings, so a report can be re-run
(or a model compared again with a new one) without generating twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.chat import render_chat
from tunesmith.progress import progress_bar
from tunesmith.reasoning import split_answer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def prompt_messages(item: dict[str, Any], shots: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The conversation the model answers: the item's messages without the reference answer.

    With few-shot examples, each example's user/assistant turns come first, after the item's system
    prompt if it has one.
    """
    messages = list(item["messages"][:-1])
    if not shots:
        return messages
    system = [messages.pop(0)] if messages and messages[0]["role"] == "system" else []
    examples = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]
    return [*system, *examples, *messages]


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, item: dict[str, Any], shots: Sequence[dict] = ()
) -> str:
    """The item's prompt as the model sees it: its chat template, with reasoning traces of earlier
    turns and the item's tools written in as they were trained (`tunesmith.chat`)."""
    return render_chat(tokenizer, prompt_messages(item, shots), item.get("tools"), add_generation_prompt=True)


def turn_end_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """What the chat template writes right after an assistant's answer ("" without a template)."""
    marker = "TUNESMITH_END_MARKER"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # a tokenizer without a chat template: eos is all there is
        text = ""
    return str(text).split(marker, 1)[1] if marker in str(text) else ""


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> list[int]:
    """End-of-sequence ids plus the special token the chat template closes an assistant turn with."""
    ids: list[int] = []
    generation_config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if source is None:
            continue
        ids.extend(source if isinstance(source, list) else [source])
    after = turn_end_text(tokenizer)
    if after:
        first = tokenizer(after, add_special_tokens=False)["input_ids"][:1]
        if first and first[0] in set(tokenizer.all_special_ids):
            ids.append(first[0])
    return sorted(set(ids))


@contextmanager
def inference(model: Any, tokenizer: Any = None) -> Iterator[None]:
    """Eval mode, no autograd, and (given a tokenizer) left padding, so every row ends at the last
    position; all restored afterwards."""
    import torch

    padding_side = tokenizer.padding_side if tokenizer is not None else None
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
        if tokenizer is not None:
            tokenizer.padding_side = padding_side


class AnswerCache:
    """Answers of one model under one decoding setting, by prompt hash, in a JSON file."""

    save_every = 10.0  # seconds: a run killed mid-way keeps the answers of all but its last moments

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.answers: dict[str, str] = {}
        if path is not None and path.exists():
            self.answers = json.loads(path.read_text(encoding="utf-8"))
        self.hits = 0
        self._saved = time.monotonic()

    @staticmethod
    def key(prompt: str) -> str:
        return hashlib.sha256(prompt.encode()).hexdigest()

    def get(self, prompt: str) -> str | None:
        answer = self.answers.get(self.key(prompt))
        self.hits += answer is not None
        return answer

    def put(self, prompt: str, answer: str) -> None:
        self.answers[self.key(prompt)] = answer

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.answers, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.path)  # a killed run never leaves half a cache
        self._saved = time.monotonic()

    def save_now_and_then(self) -> None:
        """Save when `save_every` seconds have passed since the last save."""
        if time.monotonic() - self._saved >= self.save_every:
            self.save()


def cache_path(directory: Path, model_identity: str, settings: dict[str, Any]) -> Path:
    """Where the answers of a model (weights hash or hub id and revision) under `settings` are kept."""
    blob = json.dumps({"model": model_identity, **settings}, sort_keys=True)
    return directory / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"


def generate_answers(
    model: Any,  # a PreTrainedModel or a PeftModel around one
    tokenizer: PreTrainedTokenizerBase,
    items: list[dict[str, Any]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    label: str = "Generating",
    shots: Sequence[dict[str, Any]] = (),
    seed: int = 0,
    cache: AnswerCache | None = None,
) -> list[str]:
    """Answer each item's conversation greedily; answers come back in item order, without the
    reasoning trace a model may write first (a leading <think> block): what is scored is the answer.

    Batches are sorted by prompt length so padding stays small. Answers already in `cache` are
    not generated again; new ones are added to it and saved.
    """
    import torch

    prompts = [render_prompt(tokenizer, item, shots) for item in items]
    answers: list[str | None] = [cache.get(p) if cache else None for p in prompts]
    todo = sorted((i for i, a in enumerate(answers) if a is None), key=lambda i: len(prompts[i]))
    if todo:
        torch.manual_seed(seed)
        stops = stop_token_ids(tokenizer, model)
        try:
            with inference(model, tokenizer), progress_bar(label, total=len(todo)) as advance:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start : start + batch_size]
                    encoded = tokenizer(
                        [prompts[i] for i in batch],
                        return_tensors="pt",
                        padding=True,
                        add_special_tokens=False,
                    ).to(model.device)
                    output = model.generate(
                        **encoded,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        eos_token_id=stops or None,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                    new_tokens = output[:, encoded["input_ids"].shape[1] :]
                    for i, tokens in zip(batch, new_tokens, strict=True):
                        answer = str(tokenizer.decode(tokens, skip_special_tokens=True)).strip()
                        answers[i] = answer
                        if cache:
                            cache.put(prompts[i], answer)
                    if cache:
                        cache.save_now_and_then()
                    advance(len(batch))
        finally:
            if cache:
                cache.save()
    return [split_answer(a or "")[1].strip() for a in answers]


def continuation_nll(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    label: str = "Scoring",
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of each continuation given its context.

    The context is tokenized on its own and the continuation's tokens are those after it, so the
    score is of exactly the text the model would have to produce.
    """
    import torch

    rows = []
    for context, continuation in pairs:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        full_ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        if not context_ids and tokenizer.bos_token_id is not None:
            full_ids, context_ids = [tokenizer.bos_token_id, *full_ids], [tokenizer.bos_token_id]
        rows.append((full_ids, len(context_ids)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with inference(model), progress_bar(label, total=len(rows)) as advance:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(rows[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):
                seq = rows[i][0]
                ids[b, : len(seq)] = torch.tensor(seq)
                mask[b, : len(seq)] = 1
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = ids[:, 1:].to(logprobs.device)
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            for b, i in enumerate(batch):
                seq, start_at = rows[i]
                span = picked[b, max(start_at - 1, 0) : len(seq) - 1]
                results[i] = (float(-span.sum()), int(span.numel()))
            advance(len(batch))
    return results


def choices_nll(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    continuations: Sequence[str],
    *,
    batch_size: int = 32,
) -> list[tuple[float, int]]:
    """`continuation_nll` of several continuations of one context, the context run once: its key/value
    cache is copied to each batch of continuations, so scoring 77 labels costs one long forward pass
    and a few short ones instead of 77 long ones. A continuation whose tokens merge with the end of
    the context (rare: chat templates end a turn on a special token) is scored the slow way."""
    import copy

    import torch

    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    tails: dict[int, list[int]] = {}
    for index, continuation in enumerate(continuations):
        full = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        if context_ids and full[: len(context_ids)] == context_ids and len(full) > len(context_ids):
            tails[index] = full[len(context_ids) :]
    slow = [i for i in range(len(continuations)) if i not in tails]
    results = (
        dict(
            zip(
                slow,
                continuation_nll(model, tokenizer, [(context, continuations[i]) for i in slow]),
                strict=True,
            )
        )
        if slow
        else {}
    )
    if not tails:
        return [results[i] for i in range(len(continuations))]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with inference(model):
        out = model(input_ids=torch.tensor([context_ids], device=model.device), use_cache=True)
        cache, first = out.cache, torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        order = list(tails)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(tails[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), len(context_ids) + width), dtype=torch.long)
            mask[:, : len(context_ids)] = 1
            for b, i in enumerate(batch):
                ids[b, : len(tails[i])] = torch.tensor(tails[i])
                mask[b, len(context_ids) : len(context_ids) + len(tails[i])] = 1
            shared = copy.deepcopy(cache)
            shared.batch_repeat_interleave(len(batch))
            logits = model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device), cache=shared
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for b, i in enumerate(batch):
                tail = tails[i]
                total = -float(first[tail[0]])
                for j in range(1, len(tail)):
                    total -= float(logprobs[b, j - 1, tail[j]])
                results[i] = (total, len(tail))
    return [results[i] for i in range(len(continuations))]


def answer_nll(
    model: Any, tokenizer: PreTrainedTokenizerBase, items: list[dict[str, Any]], *, batch_size: int = 8
) -> list[tuple[float, int]]:
    """Negative log-likelihood of each item's reference answer (chat items) or whole text (text items)."""
    pairs = []
    for item in items:
        if "messages" in item:
            prompt = render_prompt(tokenizer, item)
            full = render_chat(tokenizer, item["messages"], item.get("tools"))  # traces and calls as trained
            answer = full[len(prompt) :] if full.startswith(prompt) else item["messages"][-1]["content"]
            pairs.append((prompt, answer))
        else:
            pairs.append(("", str(item["text"])))
    return continuation_nll(model, tokenizer, pairs, batch_size=batch_size, label="Perplexity")


def next_token_logprobs(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    token_ids: Sequence[int],
    *,
    batch_size: int = 8,
    label: str = "Scoring",
) -> list[list[float]]:
    """Log-probability of each of `token_ids` as the next token after each context: one forward each."""
    import torch

    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    results: list[list[float]] = [[] for _ in contexts]
    with inference(model, tokenizer), progress_bar(label, total=len(contexts)) as advance:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            encoded = tokenizer(
                [contexts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            logits = model(**encoded).logits[:, -1].float()
            picked = torch.log_softmax(logits, dim=-1)[:, list(token_ids)]
            for row, i in enumerate(batch):
                results[i] = [float(x) for x in picked[row]]
            advance(len(batch))
    return results
