"""`tunesmith eval` end to end on a tiny model: compare, cache, few-shot, probe, slices, gates, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import write_jsonl
from tunesmith.cli import app
from tunesmith.config import ConfigError, load_config
from tunesmith.data import DataError
from tunesmith.evaluate.runner import run_eval
from tunesmith.pipeline import write_demo_project
from tunesmith.registry.versions import RegistryError, get_version, move_alias
from tunesmith.store import EvalReport, session
from tunesmith.train.run import train
from tunesmith.workspace import open_workspace

runner = CliRunner()


def project(tmp_path: Path, model_dir: Path, *overrides: str) -> tuple[Path, list[str]]:
    """The demo project on the tiny model, each row tagged with a region (a column to slice by)."""
    config_path = write_demo_project(tmp_path)
    data = tmp_path / "data" / "fernwick.jsonl"
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["region"] = "north" if sum(map(ord, row["group"])) % 2 else "south"
    write_jsonl(data, rows)
    settings = [
        f"model.id={model_dir}",
        "train.epochs=1",
        "eval.max_new_tokens=8",
        "eval.bootstrap_resamples=200",
        "eval.metrics=null",  # the standard set for generation
        *overrides,
    ]
    return config_path, settings


@pytest.fixture
def trained(tmp_path, tiny_model_dir):
    config_path, settings = project(tmp_path, tiny_model_dir, "train.method=full", "train.lr=1e-3")
    config = load_config(config_path, settings)
    outcome = train(config)
    return config_path, settings, outcome


def test_eval_compares_base_and_version_on_the_same_items_and_stores_the_report(trained):
    config_path, settings, outcome = trained
    config = load_config(config_path, [*settings, "eval.slices=[region]"])
    result = run_eval(config, outcome.version.name)
    report = result.report
    assert [s["label"] for s in report["systems"]] == ["base", outcome.version.name]
    assert report["notes"] == [
        f"production is not set in {config.project}: not compared",
        "metrics key_fact, exact_match, rouge_l, rouge_1, rouge_2, bleu, chrf: 40 of 40 items list key facts "
        "(eval.metrics overrides)",
    ]
    names = [m["name"] for m in report["metrics"]]
    assert names == ["key_fact", "exact_match", "rouge_l", "rouge_1", "rouge_2", "bleu", "chrf", "perplexity"]
    for system in report["systems"]:
        for name in names:
            score = system["scores"][name]
            assert score["low"] <= score["value"] <= score["high"]
    assert {(c["a"], c["b"]) for c in report["comparisons"]} == {("base", outcome.version.name)}
    assert len(report["verdicts"]) == len(names)
    assert next(m for m in report["metrics"] if m["name"] == "bleu")["signature"].startswith("nrefs:1")
    # every item: prompt, reference, both outputs and per-item scores
    assert len(report["per_item"]) == report["items"] == 40
    first = report["per_item"][0]
    assert set(first["outputs"]) == {"base", outcome.version.name}
    assert set(first["scores"]["base"]) == set(names)
    assert report["slices"][0]["column"] == "region"
    assert set(report["slices"][0]["slices"]) == {"north", "south"}
    assert report["lengths"]["reference"]["mean"] > 3
    # files and the store row
    assert json.loads((result.directory / "report.json").read_text())["id"] == result.report_id
    html = (result.directory / "report.html").read_text()
    assert "data:image/png;base64," in html and "Paired tests" in html and "By region" in html
    assert "generation eval on 40 items" in html
    assert len((result.directory / "answers.jsonl").read_text().splitlines()) == 40
    with session(open_workspace(config).engine) as s:
        row = s.get(EvalReport, result.report_id)
    assert row is not None and row.version_id == outcome.version.id and row.gate_passed is None


def test_answers_are_cached_per_model_and_settings(trained, monkeypatch):
    from tunesmith.models import generate

    config_path, settings, outcome = trained
    config = load_config(config_path, settings)
    first = run_eval(config, outcome.version.name, compare=["base"])
    calls = []
    original = generate.AnswerCache.put
    monkeypatch.setattr(
        generate.AnswerCache, "put", lambda self, p, a: calls.append(p) or original(self, p, a)
    )
    again = run_eval(config, outcome.version.name, compare=["base"])
    assert calls == []  # nothing generated the second time
    assert again.report["systems"] == first.report["systems"]
    longer = load_config(config_path, [*settings, "eval.max_new_tokens=9"])
    run_eval(longer, outcome.version.name, compare=["base"])
    assert len(calls) == 80  # other settings: both models answer again


def test_compare_with_production_alias_few_shot_and_probe(trained, tmp_path):
    config_path, settings, outcome = trained
    config = load_config(config_path, settings)
    workspace = open_workspace(config)
    with pytest.raises(RegistryError, match=r"alias 'production' .* is not set"):
        run_eval(config, outcome.version.name, compare=["base", "production"])
    second = train(load_config(config_path, [*settings, "train.lr=5e-3"]))
    move_alias(workspace, config.project, "production", get_version(workspace, outcome.version.name))
    result = run_eval(config, second.version.name, few_shot=2, probe=True)
    labels = [s["label"] for s in result.report["systems"]]
    assert labels == ["base", "base 2-shot", f"production ({outcome.version.name})", second.version.name]
    pairs = {(c["a"], c["b"]) for c in result.report["comparisons"]}
    assert len(pairs) == 6  # every pair of the four systems
    move_alias(workspace, config.project, "candidate", get_version(workspace, second.version.name))
    shown = runner.invoke(
        app,
        ["eval", "--compare", "base,candidate,production", "--config", str(config_path)]
        + [a for s in settings for a in ("--set", s)],
    )
    assert shown.exit_code == 0, shown.output
    assert f"production ({outcome.version.name})" in shown.output and second.version.name in shown.output
    probe = result.report["probe"]
    assert probe["questions"] == 40 and probe["texts"] > 0
    assert set(probe["systems"]) == {"base", second.version.name}
    assert set(probe["change"]) == {"probe_accuracy", "general_perplexity"}


def test_gates_pass_fail_and_exit_code_for_ci(trained):
    config_path, settings, outcome = trained
    gates = [
        "eval.gates=[{metric: rouge_l, min: 0.0}, {metric: perplexity, max: 1.0e9}]",
    ]
    passing = runner.invoke(
        app,
        ["eval", outcome.version.name, "--gate", "--compare", "base", "--config", str(config_path)]
        + [arg for s in [*settings, *gates] for arg in ("--set", s)],
    )
    assert passing.exit_code == 0, passing.output
    assert "gate threshold pass" in passing.output and "report.html" in passing.output
    failing_gates = [
        "eval.gates=[{metric: rouge_l, min: 0.99}, {metric: rouge_l, min_improvement: 0.5, over: production},"
        " {metric: key_fact, slice: region, margin: 0.0}, {metric: probe_accuracy, max_forgetting: 0.1}]"
    ]
    failing = runner.invoke(
        app,
        ["eval", outcome.version.name, "--gate", "--compare", "base", "--config", str(config_path)]
        + [arg for s in [*settings, *failing_gates] for arg in ("--set", s)],
    )
    assert failing.exit_code == 3, failing.output
    config = load_config(config_path, [*settings, *failing_gates])
    with session(open_workspace(config).engine) as s:
        reports = list(s.scalars(select(EvalReport).order_by(EvalReport.created_at)))
    assert [r.gate_passed for r in reports] == [True, False]
    rows = reports[-1].gates
    assert [r["kind"] for r in rows] == ["threshold", "improvement", "slice", "forgetting"]
    assert not rows[0]["passed"] and "below the minimum" in rows[0]["detail"]
    assert "production is not set; compared with base instead" in rows[1]["detail"]
    assert not rows[3]["passed"] and "probe did not run" in rows[3]["detail"]
    no_gates = runner.invoke(app, ["eval", outcome.version.name, "--gate", "--config", str(config_path)])
    assert no_gates.exit_code == 2 and "no gates are configured" in no_gates.output


def test_gate_config_is_validated():
    with pytest.raises(ConfigError, match="set exactly one of"):
        load_config(None, ["eval.gates=[{metric: rouge_l, min: 0.2, min_improvement: 0.1}]"])
    with pytest.raises(ConfigError, match="max_forgetting gates take"):
        load_config(None, ["eval.gates=[{metric: rouge_l, max_forgetting: 0.1}]"])


def test_list_metrics_and_unknown_metric(trained):
    config_path, settings, outcome = trained
    listed = runner.invoke(app, ["eval", "--list-metrics"])
    assert listed.exit_code == 0 and "entity_f1" in listed.output and "sacrebleu" in listed.output
    bad = runner.invoke(
        app,
        ["eval", outcome.version.name, "--config", str(config_path)]
        + [arg for s in [*settings, "eval.metrics=[rouge_x]"] for arg in ("--set", s)],
    )
    assert bad.exit_code == 1 and "unknown metric 'rouge_x'" in bad.output


def calibration_file(tmp_path: Path, agree: bool, pairs: int = 15) -> Path:
    """Human ratings: answers that state the fact score high (or, when `agree` is false, low); two
    rows per pair."""
    rows = []
    facts = [("2017", "1999"), ("Lisbon", "Paris"), ("Tuesday", "Friday")] * pairs
    for i, (fact, other) in enumerate(facts[:pairs]):
        reference = f"The answer is {fact}"
        rows.append(
            {"prompt": f"q{i}", "reference": reference, "answer": f"It is {fact}", "score": 5 if agree else 1}
        )
        rows.append(
            {
                "prompt": f"q{i}",
                "reference": reference,
                "answer": f"It is {other}",
                "score": 1 if agree else 5,
            }
        )
    path = tmp_path / f"human-{agree}-{pairs}.jsonl"
    write_jsonl(path, rows)
    return path


def test_endpoint_judge_scores_compares_calibrates_and_gates(trained, tmp_path):
    from judge_server import serve

    config_path, settings, outcome = trained
    with serve() as (url, app):
        judge = [
            "eval.judge.enabled=true",
            f"eval.judge.endpoint={url}",
            "eval.judge.model=fair",
            f"eval.judge.calibration={calibration_file(tmp_path, agree=True)}",
            "eval.judge.max_items=10",
            "eval.gates=[{metric: judge_score, min: 1.0}]",
        ]
        config = load_config(config_path, [*settings, *judge])
        result = run_eval(config, outcome.version.name, compare=["base"])
        report = result.report
        judged = report["judge"]
        assert judged["judge"] == f"endpoint:{url}:fair" and judged["steps"].startswith("1. Check")
        calibration = judged["calibration"]
        assert calibration["spearman"] == pytest.approx(1.0) and calibration["calibrated"]
        assert calibration["scored"] == 30 and calibration["spearman_interval"][0] > 0.99
        for system in report["systems"]:
            assert 2.0 <= system["scores"]["judge_score"]["value"] <= 5.0
        assert any(c["metric"] == "judge_score" for c in report["comparisons"])
        (pair,) = judged["pairwise"]
        assert pair["win"] + pair["tie"] + pair["loss"] == 10
        assert report["gate_passed"] is True
        calls = app.state.calls
        run_eval(config, outcome.version.name, compare=["base"])
        assert app.state.calls == calls  # every verdict came from the cache

        # A judge with pure position bias: swapping the order cancels it into ties.
        biased = load_config(config_path, [*settings, *judge, "eval.judge.model=first"])
        (pair,) = run_eval(biased, outcome.version.name, compare=["base"]).report["judge"]["pairwise"]
        assert (pair["win"], pair["tie"], pair["loss"]) == (0, 10, 0)

        # A judge that disagrees with the humans cannot gate.
        disagreeing = load_config(
            config_path,
            [*settings, *judge, f"eval.judge.calibration={calibration_file(tmp_path, agree=False)}"],
        )
        report = run_eval(disagreeing, outcome.version.name, compare=["base"]).report
        assert report["judge"]["calibration"]["calibrated"] is False
        assert (
            report["gate_passed"] is False and "agrees too little with humans" in report["gates"][0]["detail"]
        )

        # Perfect agreement on too few rows does not earn a vote.
        few = load_config(
            config_path,
            [*settings, *judge, f"eval.judge.calibration={calibration_file(tmp_path, agree=True, pairs=6)}"],
        )
        report = run_eval(few, outcome.version.name, compare=["base"]).report
        calibration = report["judge"]["calibration"]
        assert calibration["spearman"] == pytest.approx(1.0) and calibration["scored"] == 12
        assert calibration["calibrated"] is False and report["gate_passed"] is False
        assert "calibrated on 12 scored rows; gating needs at least 30" in report["gates"][0]["detail"]

        # A server that refuses logprobs: the judge reads the digit from the reply.
        plain = load_config(config_path, [*settings, *judge, "eval.judge.model=nologprobs"])
        report = run_eval(plain, outcome.version.name, compare=["base"]).report
        assert report["judge"]["calibration"]["calibrated"]


def test_local_judge_reads_digit_probabilities(trained):
    config_path, settings, outcome = trained
    config = load_config(
        config_path,
        [*settings, "eval.judge.enabled=true", "eval.judge.max_items=4", "eval.judge.steps=[Check facts]"],
    )
    result = run_eval(config, outcome.version.name, compare=["base"])
    report = result.report
    assert report["judge"]["judge"].startswith("local:") and report["judge"]["steps"] == "1. Check facts"
    assert report["judge"]["calibration"] is None
    for system in report["systems"]:
        assert 1.0 <= system["scores"]["judge_score"]["value"] <= 5.0
    html = (result.directory / "report.html").read_text()
    assert "LLM judge" in html and "its scores cannot gate" in html and " · 4 items · " in html


def filled_sheet(review_dir: Path, rater: str, prefer_candidate: float, path: Path) -> Path:
    """A rater who prefers the candidate on the first `prefer_candidate` share of pairs, ties after."""
    import csv

    key = json.loads((review_dir / "key.json").read_text())
    with (review_dir / "sheet.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    cut = round(len(rows) * prefer_candidate)
    for i, row in enumerate(rows):
        sides = key["pairs"][row["pair_id"]]
        candidate_side = "1" if sides["1"] == key["candidate"] else "2"
        row["preference"] = candidate_side if i < cut else "tie"
        row["rater"] = rater
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_blind_review_export_import_rates_and_agreement(trained, tmp_path):
    config_path, settings, outcome = trained
    config = load_config(config_path, settings)
    result = run_eval(config, outcome.version.name, compare=["base"])
    args = ["--config", str(config_path)]
    exported = runner.invoke(app, ["review", "export", result.report_id, "--limit", "20", *args])
    assert exported.exit_code == 0, exported.output
    review_dir = result.directory / "review-base"
    sheet = (review_dir / "sheet.csv").read_text()
    html = (review_dir / "sheet.html").read_text()
    for text in (sheet, html):
        assert outcome.version.name not in text and "base" not in text.lower().replace("database", "")
    key = json.loads((review_dir / "key.json").read_text())
    assert len(key["pairs"]) == 20
    sides = [pair["1"] for pair in key["pairs"].values()]
    assert 0 < sides.count(outcome.version.name) < 20  # the candidate is not always on one side

    first = filled_sheet(review_dir, "ana", 0.8, tmp_path / "ana.csv")
    second = filled_sheet(review_dir, "ben", 0.7, tmp_path / "ben.csv")
    imported = runner.invoke(app, ["review", "import", result.report_id, str(first), str(second), *args])
    assert imported.exit_code == 0, imported.output
    assert "Krippendorff's alpha" in imported.output and "Cohen's kappa" in imported.output
    summary = json.loads((review_dir / "result.json").read_text())
    assert summary["counts"] == {"win": 16 + 14, "tie": 4 + 6, "loss": 0}
    assert summary["raters"] == ["ana", "ben"] and summary["pairs"] == 20
    rate = summary["rates"]["win"]
    assert rate["value"] == pytest.approx(0.75) and rate["low"] < 0.75 < rate["high"]
    assert summary["agreement"]["percent_agreement"] == pytest.approx(0.9)
    assert 0 < summary["agreement"]["krippendorff_alpha"] < 1

    import csv

    with first.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[2]["preference"] = "maybe"  # line 4 of the file
    broken = tmp_path / "broken.csv"
    with broken.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    refused = runner.invoke(app, ["review", "import", result.report_id, str(broken), *args])
    assert refused.exit_code == 2 and "broken.csv:4: preference 'maybe' is not 1, 2 or tie" in refused.output


def test_review_sheet_works_in_a_real_browser(trained, tmp_path):
    import shutil

    from tunesmith.evaluate.review import export_sheet, read_sheets

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (make setup installs it)")
    from playwright.sync_api import sync_playwright

    config_path, settings, outcome = trained
    result = run_eval(load_config(config_path, settings), outcome.version.name, compare=["base"])
    review_dir = export_sheet(result.directory, limit=3)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((review_dir / "sheet.html").as_uri())
        page.fill("#rater", "cleo")
        pair_ids = list(json.loads((review_dir / "key.json").read_text())["pairs"])
        page.check(f"input[name={pair_ids[0]}][value='1']")
        page.check(f"input[name={pair_ids[1]}][value='tie']")
        assert page.inner_text("#progress") == "2 of 3 rated"
        with page.expect_download() as download:
            page.click("#download")
        target = tmp_path / "from-browser.csv"
        download.value.save_as(target)
        browser.close()
    ratings = read_sheets(review_dir, [target])
    assert [(r["pair_id"], r["rater"]) for r in ratings] == [(pair_ids[0], "cleo"), (pair_ids[1], "cleo")]
    assert ratings[1]["outcome"] == "tie"


def test_cross_validation_trains_and_scores_each_fold(tmp_path, tiny_model_dir):
    from tunesmith.registry import list_versions
    from tunesmith.store import Run

    config_path, settings = project(
        tmp_path, tiny_model_dir, "train.method=full", "eval.metrics=[rouge_l, key_fact]"
    )
    shown = runner.invoke(
        app, ["eval", "--cv", "3", "--config", str(config_path)] + [a for s in settings for a in ("--set", s)]
    )
    assert shown.exit_code == 0, shown.output
    assert "3-fold cross-validation" in shown.output and "±" in shown.output
    config = load_config(config_path, settings)
    workspace = open_workspace(config)
    with session(workspace.engine) as s:
        report_row = s.scalars(select(EvalReport)).one()
        runs = list(s.scalars(select(Run).where(Run.kind == "cv")))
    report = json.loads((Path(report_row.path) / "report.json").read_text())
    assert report["folds"] == 3 and len(report["per_fold"]) == 3 and len(runs) == 3
    folds = report["per_fold"]
    assert len({f["dataset"] for f in folds}) == 3
    assert sum(f["test_rows"] for f in folds) == folds[0]["train_rows"] + folds[0]["test_rows"]
    stats = report["summary"]["rouge_l"]
    assert stats["mean"] == pytest.approx(sum(stats["values"]) / 3)
    assert list_versions(workspace) == []  # fold models are runs, not versions
    refused = runner.invoke(app, ["eval", "--cv", "1", "--config", str(config_path)])
    assert refused.exit_code == 2 and "at least 2 folds" in refused.output


def test_stop_tokens_are_those_training_ends_answers_with(tiny_model_dir):
    from transformers import AutoTokenizer

    from tunesmith.models.generate import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    tokenizer.eos_token = "<unk>"  # a tokenizer whose eos is not the template's end of turn
    assert set(stop_token_ids(tokenizer)) == {
        tokenizer.convert_tokens_to_ids("<unk>"),
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }


def test_metrics_of_another_task_are_refused(trained):
    config_path, settings, outcome = trained
    config = load_config(config_path, [*settings, "eval.metrics=[accuracy]"])
    with pytest.raises(DataError, match="accuracy is a classification metric"):
        run_eval(config, outcome.version.name)


def test_language_model_versions_are_scored_by_perplexity(tmp_path, tiny_model_dir):
    from conftest import demo_rows

    data = tmp_path / "text.jsonl"
    texts = sorted({m["content"] for row in demo_rows() for m in row["messages"] if m["role"] != "system"})
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    config = load_config(
        None,
        [
            f"model.id={tiny_model_dir}",
            f"data.path={data}",
            "train.objective=pretrain",
            "train.method=full",
            "train.lr=5e-3",
            "train.epochs=2",
            "eval.bootstrap_resamples=200",
        ],
    )
    outcome = train(config)
    report = run_eval(config, outcome.version.name, compare=["base"]).report
    assert report["task"] == "lm" and [m["name"] for m in report["metrics"]] == ["perplexity"]
    base, tuned = (s["scores"]["perplexity"]["value"] for s in report["systems"])
    assert tuned < base
    assert report["verdicts"] == [
        next(
            line
            for line in report["verdicts"]
            if line.startswith(f"perplexity: {outcome.version.name} is better")
        )
    ]


def test_a_judge_or_teacher_endpoint_gets_only_the_key_its_config_names(monkeypatch, tmp_path):
    """OPENAI_API_KEY is never sent to a custom host; the variable named by api_key_env is."""
    from judge_server import serve
    from tunesmith.config import JudgeConfig, endpoint_api_key
    from tunesmith.evaluate.judge import make_judge

    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.setenv("JUDGE_HOST_KEY", "judge-host-key")
    with serve() as (url, app):
        make_judge(JudgeConfig(endpoint=url, model="fair"), None).complete("Evaluation steps:\nx", 4)
        make_judge(JudgeConfig(endpoint=url, model="fair", api_key_env="JUDGE_HOST_KEY"), None).complete(
            "Evaluation steps:\nx", 4
        )
    assert "sk-openai-secret" not in app.state.keys
    assert app.state.keys[-1] == "judge-host-key"
    assert endpoint_api_key("https://api.openai.com/v1", None) == "sk-openai-secret"  # its own host


def test_answer_likelihoods_are_computed_only_for_a_metric_that_reads_them(trained, monkeypatch):
    """Perplexity needs a second pass over every reference answer; an eval without it skips the pass."""
    import tunesmith.evaluate.runner as eval_runner

    config_path, settings, outcome = trained
    passes = []
    real = eval_runner.answer_nll
    monkeypatch.setattr(eval_runner, "answer_nll", lambda *a, **k: passes.append(1) or real(*a, **k))
    run_eval(load_config(config_path, [*settings, "eval.metrics=[rouge_l]"]), outcome.version.name)
    assert passes == []
    report = run_eval(
        load_config(config_path, [*settings, "eval.metrics=[rouge_l, perplexity]"]), outcome.version.name
    )
    assert len(passes) == 2 and "perplexity" in report.report["systems"][-1]["scores"]  # base and the version
