"""The metrics an eval reports by default follow what the task's items are, and say why."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from conftest import demo_rows
from tunesmith.cli import app
from tunesmith.evaluate.defaults import default_metrics

runner = CliRunner()

ENGLISH_GERMAN = [
    ("The cat is sleeping on the warm sofa.", "Die Katze schläft auf dem warmen Sofa."),
    ("We are going to the market tomorrow morning.", "Wir gehen morgen früh auf den Markt."),
    ("My brother works in a large hospital.", "Mein Bruder arbeitet in einem großen Krankenhaus."),
    ("The train to Berlin is late again today.", "Der Zug nach Berlin hat heute wieder Verspätung."),
    ("Please close the window before you leave.", "Bitte schließ das Fenster, bevor du gehst."),
    ("The children are playing in the garden.", "Die Kinder spielen im Garten."),
    ("I would like a cup of coffee with milk.", "Ich hätte gern eine Tasse Kaffee mit Milch."),
    ("This book is much better than the film.", "Dieses Buch ist viel besser als der Film."),
]


def chat(prompt: str, answer: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        **extra,
    }


def translation_items() -> list[dict]:
    return [chat(f"Translate into German: {english}", german) for english, german in ENGLISH_GERMAN]


def test_translation_leads_with_chrf_and_bleu_not_exact_match():
    chosen = default_metrics("generation", translation_items())
    assert chosen.metrics[:2] == ["chrf", "bleu"] and "key_fact" not in chosen.metrics
    assert "translation" in chosen.reason and "en -> de" in chosen.reason
    assert re.search(r"in (\d) of \1 items", chosen.reason)  # every item whose languages are sure


def test_key_facts_short_answers_summaries_and_open_answers():
    facts = default_metrics("generation", demo_rows()[:20])
    assert facts.metrics[0] == "key_fact" and "list key facts" in facts.reason
    sums = [chat(f"What is {a} plus {b}?", str(a + b)) for a, b in zip(range(10), range(10, 20), strict=True)]
    short = default_metrics("generation", sums)
    assert short.metrics[0] == "exact_match" and "short answers" in short.reason
    worked = [
        chat(f"Ann has {a} apples and buys {b} more. How many now?", f"{a} + {b} = {a + b}.\n#### {a + b}")
        for a, b in zip(range(10), range(10, 20), strict=True)
    ]
    finals = default_metrics("generation", worked)
    assert finals.metrics[0] == "numeric_match" and "10 of 10 answers end in a final answer" in finals.reason
    story = " ".join(
        f"On day {i} the committee met again and discussed the budget at length." for i in range(12)
    )
    summaries = default_metrics(
        "generation",
        [chat(f"Summarise: {story} {n}", "The committee met daily about the budget.") for n in range(6)],
    )
    assert summaries.metrics[0] == "rouge_1" and "summaries" in summaries.reason
    english = [chat(f"Tell me about item {n}.", english) for n, (english, _) in enumerate(ENGLISH_GERMAN)]
    open_answers = default_metrics("generation", english)  # the same language both ways: no translation
    assert open_answers.metrics[0] == "rouge_l" and "open answers" in open_answers.reason
    # the other tasks keep their one standard set
    assert default_metrics("classification", sums).metrics[0] == "accuracy"
    assert default_metrics("classification", sums).reason is None


def test_eval_prints_the_choice_and_eval_metrics_overrides_it(tmp_path, tiny_byte_model_dir):
    rows = [dict(chat(f"Translate into German: {e}", g), split="test") for e, g in ENGLISH_GERMAN]
    rows += [
        dict(chat(f"Translate into German: {e} ({n})", g), split="train")
        for n in range(3)
        for e, g in ENGLISH_GERMAN
    ]
    data = tmp_path / "de.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = tmp_path / "tunesmith.yaml"
    config.write_text(
        f"project: de\nmodel:\n  id: {tiny_byte_model_dir}\ndata:\n  path: {data}\n"
        "  clean: {near_dedup: false}\n  split: {leakage: 'off'}\n"
        "train:\n  max_steps: 1\n  save_strategy: 'no'\n  forgetting: {probe: false}\n"
        "eval:\n  max_new_tokens: 4\n  bootstrap_resamples: 100\n  compare: []\n",
        encoding="utf-8",
    )
    trained = runner.invoke(app, ["train", str(config)])
    assert trained.exit_code == 0, trained.output
    shown = runner.invoke(app, ["eval", "de-v1", "--config", str(config)])
    said = " ".join(shown.output.split())
    assert shown.exit_code == 0, said
    assert (
        "metrics chrf, bleu, rouge_l, exact_match: translation" in said and "eval.metrics overrides" in said
    )
    assert said.index("chrf") < said.index("exact_match")
    named = runner.invoke(
        app, ["eval", "de-v1", "--config", str(config), "--set", "eval.metrics=[exact_match]"]
    )
    assert named.exit_code == 0 and "translation" not in " ".join(named.output.split())
    sampled = runner.invoke(app, ["eval", "de-v1", "--config", str(config), "--set", "eval.max_items=5"])
    said = " ".join(sampled.output.split())
    assert sampled.exit_code == 0 and "a seeded sample of 5 of the 8 items (eval.max_items)" in said
    assert "5 items" in said or "on 5" in said, said
