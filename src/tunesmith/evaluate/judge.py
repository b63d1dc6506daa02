"""LLM-as-judge: G-Eval scores, pairwise preference with position swap, and calibration against humans.

G-Eval (Liu et al. 2023): the judge turns the criteria into evaluation steps once, then rates each
answer 1-5. When the judge exposes log-probabilities (a local model always does; an
OpenAI-compatible endpoint with `logprobs`), the score is the probability-weighted mean over the
five digits instead of the single most likely one, which separates answers a sampled digit
would tie.

Pairwise: the judge sees answers A and B twice, once in each order; a win counts only when it
prefers the same answer both times, so a judge that favours the first position cancels out.

A judge's scores may be used in a gate only after calibration: on a small human-labelled set its
scores must agree with the humans' (Spearman's rho at least `judge.min_agreement`).

The judge is any OpenAI-compatible endpoint (`tunesmith serve`, a local server, a hosted API with
a key) or a local model (`base`, or a registered version).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tunesmith.config import JudgeConfig, endpoint_api_key
from tunesmith.data import DataError
from tunesmith.models.generate import AnswerCache
from tunesmith.progress import progress_bar

DIGITS = ("1", "2", "3", "4", "5")

STEPS_PROMPT = """You will be given one response to a user's request.
Your task is to rate the response on one metric.

Evaluation criteria:
{criteria}

Write the evaluation steps a careful grader follows to rate a response on these criteria,
as a short numbered list. Write only the list."""

SCORE_PROMPT = """You will be given one response to a user's request.
Your task is to rate the response on one metric.

Evaluation criteria:
{criteria}

Evaluation steps:
{steps}

Request:
{prompt}
{reference}
Response:
{answer}

Rate the response from 1 (worst) to 5 (best). Reply with the digit only."""

PAIR_PROMPT = """You will be given a user's request and two responses, A and B.
Decide which response better meets the criteria.

Criteria:
{criteria}

Request:
{prompt}
{reference}
Response A:
{first}

Response B:
{second}

Reply with exactly one letter: A if response A is better, B if response B is better,
or T if they are equally good."""


class Judge(Protocol):
    identity: str

    def complete(self, prompt: str, max_tokens: int) -> str: ...

    def choice_probabilities(self, prompt: str, choices: Sequence[str]) -> dict[str, float] | None: ...


class EndpointJudge:
    """A judge behind an OpenAI-compatible chat completions API."""

    def __init__(self, base_url: str, model: str, api_key: str | None) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=2, timeout=120)
        self.model = model
        self.identity = f"endpoint:{base_url}:{model}"
        self._logprobs = True

    def _create(self, prompt: str, max_tokens: int, logprobs: bool) -> Any:
        kwargs: dict[str, Any] = {"logprobs": True, "top_logprobs": 20} if logprobs else {}
        return self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=max_tokens,
            seed=0,
            **kwargs,
        )

    def complete(self, prompt: str, max_tokens: int) -> str:
        return self._create(prompt, max_tokens, False).choices[0].message.content or ""

    def choice_probabilities(self, prompt: str, choices: Sequence[str]) -> dict[str, float] | None:
        """Probabilities of each choice as the first token, or the reply alone when logprobs are refused."""
        from openai import BadRequestError

        if self._logprobs:
            try:
                response = self._create(prompt, 1, True)
            except BadRequestError:
                self._logprobs = False  # this server does not return log-probabilities: read the text
            else:
                content = response.choices[0].logprobs
                if content is not None and content.content:
                    top = content.content[0].top_logprobs or []
                    found: dict[str, float] = {}
                    for entry in top:
                        token = entry.token.strip().upper()
                        if token in choices:
                            found[token] = found.get(token, 0.0) + math.exp(entry.logprob)
                    if found:
                        return found
                text = response.choices[0].message.content or ""
                return _parse_choice(text, choices)
        return _parse_choice(self.complete(prompt, 4), choices)


class LocalJudge:
    """A judge that is a local causal LM: reads the next-token distribution over the choices directly."""

    def __init__(self, model: Any, tokenizer: Any, identity: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.identity = f"local:{identity}"

    def _encode(self, prompt: str) -> Any:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)

    def complete(self, prompt: str, max_tokens: int) -> str:
        import torch

        encoded = self._encode(prompt)
        with torch.inference_mode():
            output = self.model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return str(
            self.tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        )

    def choice_probabilities(self, prompt: str, choices: Sequence[str]) -> dict[str, float] | None:
        import torch

        encoded = self._encode(prompt)
        with torch.inference_mode():
            logits = self.model(**encoded).logits[0, -1].float()
        probabilities = torch.softmax(logits, dim=-1)
        found = {}
        for choice in choices:
            ids = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
            if ids:
                found[choice] = float(probabilities[ids[0]])
        return found


def _parse_choice(text: str, choices: Sequence[str]) -> dict[str, float] | None:
    match = re.search("|".join(re.escape(c) for c in choices), text.upper())
    return {match.group(0): 1.0} if match else None


@dataclass
class JudgeRun:
    """A judge with its criteria and evaluation steps, and a cache of its verdicts."""

    judge: Judge
    criteria: str
    steps: str
    cache: AnswerCache
    reference_label: str = "Reference answer"  # what the reference is called in the prompt ("Passage")

    def _cached(self, key: str, compute: Any) -> Any:
        hit = self.cache.get(key)
        if hit is not None:
            return json.loads(hit)
        value = compute()
        self.cache.put(key, json.dumps(value))
        return value

    def score(self, prompt: str, answer: str, reference: str | None) -> float | None:
        """The G-Eval score 1-5 of one answer (probability-weighted), or None when the judge gave none."""
        text = SCORE_PROMPT.format(
            criteria=self.criteria,
            steps=self.steps,
            prompt=prompt,
            reference=f"\n{self.reference_label}:\n{reference}\n" if reference else "",
            answer=answer,
        )

        def compute() -> float | None:
            probabilities = self.judge.choice_probabilities(text, DIGITS)
            if not probabilities:
                return None
            total = sum(probabilities.values())
            return sum(int(d) * p for d, p in probabilities.items()) / total

        return self._cached("score:" + text, compute)

    def prefer(self, prompt: str, first: str, second: str, reference: str | None) -> str:
        """'A', 'B' or 'T' for one order of the two answers."""
        text = PAIR_PROMPT.format(
            criteria=self.criteria,
            prompt=prompt,
            reference=f"\n{self.reference_label}:\n{reference}\n" if reference else "",
            first=first,
            second=second,
        )

        def compute() -> str:
            probabilities = self.judge.choice_probabilities(text, ("A", "B", "T")) or {"T": 1.0}
            return max(probabilities, key=probabilities.__getitem__)

        return self._cached("pair:" + text, compute)

    def compare(self, prompt: str, candidate: str, other: str, reference: str | None) -> str:
        """'win', 'loss' or 'tie' for the candidate, asking in both orders."""
        forward = self.prefer(prompt, candidate, other, reference)  # candidate is A
        backward = self.prefer(prompt, other, candidate, reference)  # candidate is B
        votes = (
            {"A": "win", "B": "loss", "T": "tie"}[forward],
            {"A": "loss", "B": "win", "T": "tie"}[backward],
        )
        return votes[0] if votes[0] == votes[1] else "tie"


def make_judge(config: JudgeConfig, load_local: Any) -> Judge:
    """The configured judge: an endpoint when `judge.endpoint` is set, else a local model.

    `load_local(ref)` loads a local model (base or a version) and returns (model, tokenizer, identity).
    """
    if config.endpoint:
        return EndpointJudge(
            config.endpoint, config.model, endpoint_api_key(config.endpoint, config.api_key_env)
        )
    model, tokenizer, identity = load_local(config.model)
    return LocalJudge(model, tokenizer, identity)


def start(config: JudgeConfig, judge: Judge, cache_dir: Path) -> JudgeRun:
    """The judge with evaluation steps: the configured ones, or written by the judge from the criteria."""
    from tunesmith.models.generate import cache_path

    cache = AnswerCache(cache_path(cache_dir, judge.identity, {"judge": 1, "criteria": config.criteria}))
    run = JudgeRun(judge, config.criteria, "", cache)
    if config.steps:
        run.steps = "\n".join(f"{i}. {step}" for i, step in enumerate(config.steps, 1))
    else:
        prompt = STEPS_PROMPT.format(criteria=config.criteria)
        run.steps = run._cached("steps:" + prompt, lambda: judge.complete(prompt, 200).strip())
    return run


def score_all(run: JudgeRun, rows: list[tuple[str, str, str | None]], label: str) -> list[float | None]:
    """G-Eval scores of (prompt, answer, reference) rows, with a progress bar; the cache is saved."""
    scores = []
    try:
        with progress_bar(label, total=len(rows)) as advance:
            for prompt, answer, reference in rows:
                scores.append(run.score(prompt, answer, reference))
                advance(1)
    finally:
        run.cache.save()
    return scores


def compare_all(run: JudgeRun, rows: list[tuple[str, str, str, str | None]], label: str) -> list[str]:
    """Pairwise outcomes for the candidate over (prompt, candidate answer, other answer, reference) rows."""
    outcomes = []
    try:
        with progress_bar(label, total=len(rows)) as advance:
            for prompt, candidate, other, reference in rows:
                outcomes.append(run.compare(prompt, candidate, other, reference))
                advance(1)
    finally:
        run.cache.save()
    return outcomes


def load_calibration(path: Path) -> list[dict[str, Any]]:
    """Human-labelled rows {prompt, answer, score (1-5), [reference]} from JSONL or CSV.

    Raises:
        DataError: naming the file and line of a row without a prompt, an answer or a numeric score.
    """
    import csv

    if not path.exists():
        raise DataError(f"eval.judge.calibration: {path} does not exist")
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            raw = list(enumerate(csv.DictReader(handle), 2))
    else:
        raw = [
            (n, json.loads(line))
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip()
        ]
    rows = []
    for n, row in raw:
        try:
            score = float(row["score"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}:{n}: a calibration row needs a numeric `score` (the human rating)"
            ) from None
        if not row.get("prompt") or row.get("answer") is None:
            raise DataError(f"{path}:{n}: a calibration row needs `prompt` and `answer`")
        rows.append(
            {
                "prompt": row["prompt"],
                "answer": row["answer"],
                "score": score,
                "reference": row.get("reference"),
            }
        )
    if len(rows) < 5:
        raise DataError(f"{path}: calibration needs at least 5 human-labelled rows, found {len(rows)}")
    return rows


def calibrate(
    run: JudgeRun, rows: list[dict[str, Any]], min_agreement: float, min_rows: int = 30
) -> dict[str, Any]:
    """Spearman's rho (with its 95% interval) and Kendall's tau between the judge's scores and the
    humans'. The judge is calibrated, and may gate, only when it scored at least `min_rows` rows and
    the interval's lower bound reaches `min_agreement`: agreement shown, not guessed from a few rows."""
    from scipy.stats import kendalltau, spearmanr

    judged = score_all(
        run, [(r["prompt"], r["answer"], r.get("reference")) for r in rows], "Calibrating judge"
    )
    pairs = [(h["score"], j) for h, j in zip(rows, judged, strict=True) if j is not None]
    humans, judge = [p[0] for p in pairs], [p[1] for p in pairs]
    rho = spearmanr(humans, judge).statistic if len(set(judge)) > 1 else float("nan")
    tau = kendalltau(humans, judge).statistic if len(set(judge)) > 1 else float("nan")
    rho, tau = float(rho), float(tau)
    low, high = rho_interval(rho, len(pairs))
    enough = len(pairs) >= min_rows
    return {
        "rows": len(rows),
        "scored": len(pairs),
        "spearman": rho,
        "spearman_interval": [low, high],
        "kendall": tau,
        "min_agreement": min_agreement,
        "min_rows": min_rows,
        "calibrated": enough and not math.isnan(low) and low >= min_agreement,
    }


def rho_interval(rho: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The interval of a Spearman correlation over `n` pairs (Fisher's z with the Bonett-Wright
    standard error, sqrt((1 + rho^2 / 2) / (n - 3))); NaN when it cannot be told."""
    from scipy.stats import norm

    if math.isnan(rho) or n < 4:
        return float("nan"), float("nan")
    clipped = max(min(rho, 0.999999), -0.999999)
    z, se = math.atanh(clipped), math.sqrt((1 + clipped**2 / 2) / (n - 3))
    half = float(norm.ppf(0.5 + confidence / 2)) * se
    return math.tanh(z - half), math.tanh(z + half)
