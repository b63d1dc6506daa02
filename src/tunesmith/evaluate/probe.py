"""The forgetting probe: did fine-tuning cost the model what it knew before?

Two measures, each on the base model and on the candidate, compared item by item:

- `probe_accuracy`: general-knowledge multiple choice scored by log-likelihood. `scoring: choice`
  (the default) asks the question and compares the likelihood of each choice's own text per
  character (lm-eval's `acc_norm`, which small models handle); `scoring: letter` is MMLU's original
  format: the lettered choices in the prompt and the likeliest letter after `Answer:` (models
  under about 1B parameters mostly answer the same letter whatever the question);
- `general_perplexity`: perplexity of answers to general conversations (or plain text).

The bundled questions and conversations are ours; `eval.probe.questions` and `eval.probe.text`
take a user's files (`../shared/datasets/mmlu_redux/mmlu_redux_all.jsonl` has the same fields).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

from tunesmith.config import ProbeConfig
from tunesmith.data import DataError
from tunesmith.models.generate import answer_nll, continuation_nll, next_token_logprobs

LETTERS = "ABCDEFGHIJ"


def load_questions(config: ProbeConfig, base_dir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Multiple-choice rows {question, choices, answer (index), subject}.

    From the bundled set, or `eval.probe.questions`: a JSONL or CSV file, or a folder of them (MMLU
    style: one CSV per subject, named `mmlu_<subject>.csv`). CSVs may be `,`- or `;`-delimited and
    in any encoding; `choices` may be a JSON or Python list or `a|b|c`. Rows that MMLU-Redux marks
    with an error (an `error_type` other than `ok`) are left out: their keys are unreliable.

    Raises:
        DataError: naming the file and line of a row that is not a usable question.
    """
    if config.questions is None:
        text = (
            resources.files("tunesmith").joinpath("demo", "probe_questions.jsonl").read_text(encoding="utf-8")
        )
        files = [("bundled probe_questions.jsonl", text, ".jsonl")]
    else:
        path = Path(config.questions)
        path = path if path.is_absolute() else base_dir / path
        if not path.exists():
            raise DataError(f"eval.probe.questions: {path} does not exist")
        paths = (
            sorted(p for p in path.iterdir() if p.suffix in (".csv", ".jsonl")) if path.is_dir() else [path]
        )
        if not paths:
            raise DataError(f"eval.probe.questions: {path} holds no .csv or .jsonl files")
        files = [(str(p), _decode(p), p.suffix) for p in paths]
    questions = []
    for source, text, suffix in files:
        subject = Path(source).stem.removeprefix("mmlu_") if suffix == ".csv" else None
        for where, row in _rows(source, text, suffix):
            if str(row.get("error_type") or "ok").strip().lower() != "ok":
                continue
            if subject and not row.get("subject"):
                row["subject"] = subject
            questions.append(_question(row, where))
    if not questions:
        raise DataError(f"eval.probe.questions: no usable question in {config.questions}")
    if config.limit is not None and len(questions) > config.limit:
        questions = random.Random(seed).sample(questions, config.limit)
    return questions


def _decode(path: Path) -> str:
    """A file's text in whatever encoding it was written (a stray byte is not fatal)."""
    from charset_normalizer import from_bytes

    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        best = from_bytes(data).best()
        return str(best) if best is not None else data.decode("utf-8", errors="replace")


def _rows(source: str, text: str, suffix: str) -> list[tuple[str, dict[str, Any]]]:
    if suffix == ".csv":
        first = text.split("\n", 1)[0]
        delimiter = ";" if first.count(";") > first.count(",") else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        return [(f"{source}:{reader.line_num}", row) for row in reader]
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            rows.append((f"{source}:{n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{n}: not JSON ({exc.msg})") from None
    return rows


def _choices(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            try:
                return ast.literal_eval(text)  # MMLU CSVs hold Python lists: ['a', "b's"]
            except (ValueError, SyntaxError):
                return None
    return text.split("|")


def _question(row: dict[str, Any], where: str) -> dict[str, Any]:
    choices = _choices(row.get("choices"))
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip().upper() in LETTERS and not answer.strip().isdigit():
        answer = LETTERS.index(answer.strip().upper())
    try:
        answer = int(answer)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: answer must be a choice index or letter, got {answer!r}") from None
    if not isinstance(choices, list) or len(choices) < 2 or not row.get("question"):
        raise DataError(f"{where}: a probe question needs `question` and a list of at least two `choices`")
    if not 0 <= answer < len(choices):
        raise DataError(f"{where}: answer {answer} is not one of the {len(choices)} choices")
    return {
        "question": str(row["question"]),
        "choices": [str(c) for c in choices],
        "answer": answer,
        "subject": str(row.get("subject") or "general"),
    }


def load_text(config: ProbeConfig, base_dir: Path) -> list[dict[str, Any]]:
    """General rows whose likelihood is measured: chat rows ({messages}) or text rows ({text})."""
    if config.text is None:
        text = resources.files("tunesmith").joinpath("demo", "general.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [{"messages": r["messages"]} for r in rows if r.get("use") == "probe"]
    path = Path(config.text)
    path = path if path.is_absolute() else base_dir / path
    if not path.exists():
        raise DataError(f"eval.probe.text: {path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "messages" not in row and not isinstance(row.get("text"), str):
            raise DataError(f"{path}:{n}: a probe text row needs `text` or `messages`")
        rows.append({"messages": row["messages"]} if "messages" in row else {"text": row["text"]})
    return rows


def mc_prompt(question: dict[str, Any]) -> str:
    lines = [
        f"The following is a multiple choice question about {question['subject'].replace('_', ' ')}.",
        "",
    ]
    lines.append(question["question"])
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(question["choices"])]
    lines.append("Answer:")
    return "\n".join(lines)


def cloze_prompt(question: dict[str, Any]) -> str:
    return f"Question: {question['question']}\nAnswer:"


def answer_questions(
    model: Any, tokenizer: Any, questions: list[dict[str, Any]], scoring: str, *, batch_size: int = 8
) -> list[int]:
    """The index of the choice the model finds likeliest for each question."""
    if scoring == "letter":
        letters = [tokenizer(f" {letter}", add_special_tokens=False)["input_ids"] for letter in LETTERS]
        if all(len(ids) == 1 for ids in letters):  # one forward pass per question reads every letter
            width = max(len(q["choices"]) for q in questions)
            logprobs = next_token_logprobs(
                model,
                tokenizer,
                [mc_prompt(q) for q in questions],
                [ids[0] for ids in letters[:width]],
                batch_size=batch_size,
                label="Probe questions",
            )
            return [_argmax(row[: len(q["choices"])]) for q, row in zip(questions, logprobs, strict=True)]
    pairs = []
    for question in questions:
        for c_index, choice in enumerate(question["choices"]):
            if scoring == "letter":
                pairs.append((mc_prompt(question), f" {LETTERS[c_index]}"))
            else:
                pairs.append((cloze_prompt(question), f" {choice}"))
    nll = continuation_nll(model, tokenizer, pairs, batch_size=batch_size, label="Probe questions")
    chosen, position = [], 0
    for question in questions:
        scores = []
        for choice in question["choices"]:
            total, _ = nll[position]
            # choice: likelihood per character of the answer text (lm-eval's acc_norm), so long
            # answers are not penalised for their length
            scores.append(-total / max(len(choice), 1) if scoring == "choice" else -total)
            position += 1
        chosen.append(_argmax(scores))
    return chosen


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def run_probe(
    model: Any, tokenizer: Any, questions: list[dict[str, Any]], texts: list[dict[str, Any]], scoring: str
) -> dict[str, Any]:
    """The model's probe outputs: chosen answers and the likelihood of each general text."""
    return {
        "choices": answer_questions(model, tokenizer, questions, scoring),
        "nll": answer_nll(model, tokenizer, texts),
    }
