"""Metrics agree with the libraries the field uses; intervals and paired tests behave as statistics should."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tunesmith.evaluate import (
    DEFAULT_METRICS,
    Context,
    bootstrap_interval,
    get_metric,
    metric_names,
    paired_test,
    register_corpus_metric,
    register_metric,
)
from tunesmith.evaluate.comparison import SystemResult, pairwise, score_system, slice_scores, verdict_lines


def labelled(n: int = 300, accuracy: float = 0.7, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    labels = ["billing", "delivery", "refund", "account", "other"]
    truth = [rng.choice(labels) for _ in range(n)]
    guesses = [t if rng.random() < accuracy else rng.choice(labels[:3]) for t in truth]
    return truth, guesses


def test_classification_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    truth, guesses = labelled()
    guesses[0] = "a label the data never had"
    items = [{}] * len(truth)
    expected = {
        "accuracy": accuracy_score(truth, guesses),
        "macro_f1": f1_score(truth, guesses, average="macro", zero_division=0),
        "micro_f1": f1_score(truth, guesses, average="micro", zero_division=0),
        "macro_precision": precision_score(truth, guesses, average="macro", zero_division=0),
        "macro_recall": recall_score(truth, guesses, average="macro", zero_division=0),
    }
    for name, value in expected.items():
        assert get_metric(name).compute(guesses, truth, items)[0] == pytest.approx(value), name


def test_bleu_and_chrf_equal_sacrebleu_and_carry_its_signature():
    import sacrebleu

    answers = ["the parcel ships on monday", "refunds take five days", "call us any time", "yes"]
    references = ["your parcel ships monday", "a refund takes five working days", "call us at any time", "no"]
    items = [{}] * 4
    assert get_metric("bleu").compute(answers, references, items)[0] == pytest.approx(
        sacrebleu.corpus_bleu(answers, [references]).score
    )
    assert get_metric("chrf").compute(answers, references, items)[0] == pytest.approx(
        sacrebleu.corpus_chrf(answers, [references]).score
    )
    signature = get_metric("bleu").signature()
    assert "tok:13a" in signature and "version:" in signature


def test_rouge_and_entity_metrics_equal_their_libraries():
    from rouge_score import rouge_scorer
    from seqeval.metrics import f1_score, precision_score, recall_score

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    answers, references = ["the cats are sleeping", "open the app"], ["a cat sleeps", "open the mobile app"]
    for name, key in (("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l", "rougeL")):
        expected = np.mean(
            [scorer.score(r, a)[key].fmeasure for a, r in zip(answers, references, strict=True)]
        )
        assert get_metric(name).compute(answers, references, [{}, {}])[0] == pytest.approx(expected)

    truth = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "O"], ["B-LOC", "O"]]
    guess = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "I-ORG"], ["B-PER", "O"]]
    items = [{}] * 3
    assert get_metric("entity_f1").compute(guess, truth, items)[0] == pytest.approx(f1_score(truth, guess))
    assert get_metric("entity_precision").compute(guess, truth, items)[0] == pytest.approx(
        precision_score(truth, guess)
    )
    assert get_metric("entity_recall").compute(guess, truth, items)[0] == pytest.approx(
        recall_score(truth, guess)
    )


def test_perplexity_pools_tokens_and_key_fact_reads_item_facts():
    value, _ = get_metric("perplexity").compute([(4.0, 2), (2.0, 2)], ["", ""], [{}, {}])
    assert value == pytest.approx(np.exp(6.0 / 4))
    item = {"key_facts": ["€4.99", "two days"]}
    assert get_metric("key_fact").compute(["It costs €4.99."], ["ref"], [item])[0] == 0.5


def test_registry_takes_item_functions_and_corpus_metrics_and_rejects_duplicates():
    @register_metric("test_starts_with_yes")
    def starts_with_yes(answer, reference, item):
        """1 when the answer starts with yes."""
        return float(answer.lower().startswith("yes"))

    register_corpus_metric(
        "test_share_of_words_kept",
        stats=lambda answers, references, items, context: np.array(
            [[len(a.split()), len(r.split())] for a, r in zip(answers, references, strict=True)]
        ),
        score=lambda sums: float(sums[0] / sums[1]),
    )
    assert {"test_starts_with_yes", "test_share_of_words_kept"} <= set(metric_names("generation"))
    assert get_metric("test_starts_with_yes").compute(["Yes!", "no"], ["", ""], [{}, {}])[0] == 0.5
    assert (
        get_metric("test_share_of_words_kept").compute(["a b", "c"], ["a b c", "d e f"], [{}, {}])[0] == 0.5
    )
    with pytest.raises(ValueError, match="already registered"):
        register_metric("test_starts_with_yes")(starts_with_yes)
    with pytest.raises(KeyError, match=r"known: .*accuracy"):
        get_metric("no_such_metric")
    for kind, names in DEFAULT_METRICS.items():
        assert all(get_metric(n).kind == kind for n in names)


def test_metrics_load_from_an_entry_point(tmp_path, monkeypatch):
    from importlib import metadata

    from tunesmith.evaluate import metrics as metrics_module

    module = tmp_path / "my_metrics.py"
    module.write_text("def shouting(answer, reference, item):\n    return float(answer.isupper())\n")
    dist = tmp_path / "my_metrics-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-metrics\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tunesmith.metrics]\nshouting = my_metrics:shouting\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(metrics_module._ENTRY_POINTS, "loaded", False)
    assert any(e.name == "shouting" for e in metadata.entry_points(group="tunesmith.metrics"))
    assert get_metric("shouting").compute(["LOUD", "quiet"], ["", ""], [{}, {}])[0] == 0.5
    metrics_module._METRICS.pop("shouting")


def test_bootstrap_interval_covers_the_value_and_narrows_with_more_items():
    accuracy = get_metric("accuracy")
    widths = []
    for n in (50, 800):
        truth, guesses = labelled(n, accuracy=0.7, seed=n)
        stats = accuracy.stats(guesses, truth, [{}] * n, Context())
        interval = bootstrap_interval(np.asarray(stats), accuracy.score, seed=1)
        assert interval.low <= interval.value <= interval.high
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(16) as wide


def test_paired_test_finds_a_real_difference_and_not_a_fake_one():
    accuracy = get_metric("accuracy")
    truth, weak = labelled(400, accuracy=0.55, seed=3)
    _, strong = labelled(400, accuracy=0.85, seed=3)
    _, same = labelled(400, accuracy=0.55, seed=3)
    stats = {
        name: np.asarray(accuracy.stats(g, truth, [{}] * 400, Context()))
        for name, g in (("weak", weak), ("strong", strong), ("same", same))
    }
    better = paired_test(stats["weak"], stats["strong"], accuracy.score)
    assert better.verdict == "better" and better.p_value < 0.01 and better.delta.low > 0
    worse = paired_test(stats["strong"], stats["weak"], accuracy.score)
    assert worse.verdict == "worse"
    tie = paired_test(stats["weak"], stats["same"], accuracy.score)
    assert tie.verdict == "no significant difference" and tie.p_value == 1.0
    lower_is_better = paired_test(stats["weak"], stats["strong"], accuracy.score, higher_is_better=False)
    assert lower_is_better.verdict == "worse"
    with pytest.raises(ValueError, match="same items"):
        paired_test(stats["weak"], stats["weak"][:10], accuracy.score)


def test_compare_systems_gives_verdict_lines_and_slice_gaps():
    truth, weak = labelled(200, accuracy=0.3, seed=5)
    _, strong = labelled(200, accuracy=0.95, seed=5)
    items = [{"text": "x", "label": t, "region": "north" if i % 2 else "south"} for i, t in enumerate(truth)]
    # v2 is far better in the north and no better than base in the south
    strong = [s if item["region"] == "north" else w for s, w, item in zip(strong, weak, items, strict=True)]
    metrics = ["accuracy", "macro_f1"]
    systems = [
        score_system(SystemResult(label, label, None, outputs), truth, items, metrics, resamples=300)
        for label, outputs in (("base", weak), ("v2", strong))
    ]
    rows = pairwise(systems, metrics, resamples=300)
    assert {(r["a"], r["b"], r["metric"]) for r in rows} == {
        ("base", "v2", "accuracy"),
        ("base", "v2", "macro_f1"),
    }
    lines = verdict_lines(rows, "v2")
    assert any(line.startswith("accuracy: v2 is better than base") for line in lines)
    sliced = slice_scores(systems, items, "region", metrics, resamples=300)
    assert set(sliced["slices"]) == {"north", "south"}
    gap = sliced["gaps"]["v2"]["accuracy"]
    assert gap["highest"] == "north" and gap["lowest"] == "south" and gap["gap"] > 0.4


def test_gates_on_a_synthetic_report():
    from tunesmith.config import EvalConfig
    from tunesmith.evaluate.gates import check_gates

    truth, weak = labelled(300, accuracy=0.1, seed=7)
    _, strong = labelled(300, accuracy=0.9, seed=7)
    items = [{"label": t, "region": "north" if i % 3 else "south"} for i, t in enumerate(truth)]
    # the candidate is much better overall but worse than production in the south
    candidate = [s if item["region"] == "north" else "other" for s, item in zip(strong, items, strict=True)]
    production = [
        t if item["region"] == "south" else w for t, w, item in zip(truth, weak, items, strict=True)
    ]
    systems = [
        score_system(SystemResult(label, ref, None, outputs), truth, items, ["accuracy"], resamples=200)
        for label, ref, outputs in (("production (v1)", "production", production), ("v2", "v2", candidate))
    ]
    report = {
        "probe": {
            "systems": {"base": {"general_perplexity": {"value": 10.0}}},
            "change": {
                "probe_accuracy": {"delta": {"value": -0.08}},
                "general_perplexity": {"delta": {"value": 0.5}},
            },
        }
    }
    settings = EvalConfig.model_validate(
        {
            "bootstrap_resamples": 200,
            "gates": [
                {"metric": "accuracy", "min": 0.5},
                {"metric": "accuracy", "min_improvement": 0.02, "over": "production"},
                {"metric": "probe_accuracy", "max_forgetting": 0.05},
                {"metric": "general_perplexity", "max_forgetting": 0.10},
                {"metric": "accuracy", "slice": "region", "margin": 0.05},
                {"metric": "macro_f1", "min": 0.1},
            ],
        }
    )
    rows = check_gates(settings.gates, report, systems, items, settings)
    assert [r["passed"] for r in rows] == [True, True, False, True, False, False]
    assert "changed by -0.08" in rows[2]["detail"] and "+5.0%" in rows[3]["detail"]
    assert "region = south" in rows[4]["detail"] and "north" not in rows[4]["detail"]
    assert "was not computed" in rows[5]["detail"]


def test_quickstart_sweeps_and_reports_score_corpus_metrics_one_way(monkeypatch):
    """`evaluate_model` (quickstart, sweep objectives, learning curves) gives the BLEU a report gives:
    corpus BLEU from summed statistics, not the mean of sentence BLEUs."""
    import sacrebleu

    from tunesmith.config import EvalConfig
    from tunesmith.evaluate import evaluate_model
    from tunesmith.models import generate

    references = [
        "The quarterly report lists every shipment that left the northern warehouse last spring.",
        "Yes.",
    ]
    answers = [references[0], "No, never."]
    items = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": r}]}
        for i, r in enumerate(references)
    ]
    monkeypatch.setattr(generate, "generate_answers", lambda *args, **kwargs: list(answers))
    result = evaluate_model(None, None, items, EvalConfig(metrics=["bleu", "rouge_l"]), label="after")

    corpus = sacrebleu.corpus_bleu(answers, [references]).score
    sentence_mean = sum(s["bleu"] for s in result.scores) / len(items)
    assert result.means["bleu"] == pytest.approx(corpus)
    assert abs(sentence_mean - corpus) > 5  # the two ways differ here: only one is right
    reported = score_system(SystemResult("after", "after", None, answers), references, items, ["bleu"])
    assert result.means["bleu"] == pytest.approx(reported.scores["bleu"].value)
    low, high = result.intervals["bleu"].low, result.intervals["bleu"].high
    assert low <= result.means["bleu"] <= high


def test_numeric_match_scores_the_final_number_as_the_rl_checker_does():
    metric = get_metric("numeric_match")
    reference = "She sells 16 - 3 - 4 = 9 eggs.\n#### 18"
    answers = ["9 eggs at $2 is 18.\n#### 18", "The answer is 18", "So 9 * 2 = 18 dollars", "#### 9", ""]
    stats = metric.stats(answers, [reference] * 5, [{}] * 5, None)
    assert [row[0] for row in stats] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert metric.score(stats.sum(0)) == pytest.approx(0.6)
