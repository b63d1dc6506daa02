"""Monitoring: online scorers, feedback through the server, drift against the training data."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import httpx2  # the HTTP client the openai package ships with
import openai
import pytest
from typer.testing import CliRunner

from serve_helpers import metric, wait_for, webhook_receiver
from store_helpers import stored_run, stored_version
from tunesmith.cli import app
from tunesmith.config import DriftConfig, load_config
from tunesmith.monitor.drift import measure_drift, population_stability
from tunesmith.monitor.scorers import ScoringContext, get_scorer, load_toxic_words, score_row
from tunesmith.serve import serve_in_background as running
from tunesmith.store import Feedback, RequestScore, session

runner = CliRunner()
httpx = httpx2.Client(timeout=60)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def config_of(project: dict, *extra: str):
    settings = [*project["settings"], "serve.poll_seconds=0.2", "monitor.sample_rate=1", *extra]
    return load_config(project["path"], settings)  # every answer scored: the tests read each one


def score(name: str, answer: str, prompt: str = "Where is the library?", **row) -> float | None:
    ctx = ScoringContext(load_toxic_words())
    return get_scorer(name).fn(prompt, answer, row, ctx)


def test_reference_free_scorers_on_written_examples():
    assert score("empty", "  ") == 1 and score("empty", "It is on Elm Street.") == 0
    assert score("truncated", "It is on", finish_reasons=["length"]) == 1
    assert score("refusal", "I'm sorry, but I can't help with that request.") == 1
    assert score("refusal", "As an AI, I have no opinion.") == 1
    assert score("refusal", "Sorry for the wait: the library is on Elm Street.") == 0
    assert score("toxicity", "Only an idiot would ask that.") == 1
    assert score("toxicity", "Shut up and read the sign.") == 1
    assert score("toxicity", "The shutters open at nine.") == 0
    assert score("pii", "Write to ana@example.org or call +44 20 7946 0958.") == 2
    assert score("length", "Open from nine to five.") == 5
    assert score("relevance", "") is None
    on_topic = score("relevance", "The library is on Elm Street, next to the bakery.")
    off_topic = score("relevance", "Bananas are rich in potassium.")
    assert on_topic > off_topic + 0.2


def test_a_broken_scorer_does_not_lose_the_others():
    from tunesmith.monitor.scorers import register_scorer

    @register_scorer("test_broken")
    def broken(prompt, answer, row, ctx):
        raise RuntimeError("bug")

    row = {"id": "req-1", "output": ["fine"], "prompt": "q", "status": 200}
    names = [s.name for s in score_row(row, ["test_broken", "length", "empty"], ScoringContext(frozenset()))]
    assert names == ["length", "empty"]


def test_online_scoring_drops_and_counts_work_it_cannot_keep_up_with(tmp_path):
    """The scoring queue is bounded: rows beyond it are dropped and counted, never held."""
    from tunesmith.monitor.scorers import OnlineScorer
    from tunesmith.workspace import init_project, open_workspace

    workspace = open_workspace(load_config(init_project(tmp_path / "p")))
    scorer = OnlineScorer(
        workspace, ["length"], 1.0, frozenset(), max_pending=10
    )  # not started: nothing drains
    for i in range(50):
        scorer.offer({"id": f"req-{i}", "output": ["fine"], "prompt": "q", "status": 200})
    assert scorer.dropped == 40  # ten wait; the other forty are counted, not kept


def test_served_answers_are_scored_online_and_feedback_is_stored_against_them(serve_project):
    family = serve_project["family"]
    with running(config_of(serve_project)) as (url, server):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = api.chat.completions.create(
            model=family,
            messages=[{"role": "user", "content": "When does the library open?"}],
            max_tokens=6,
            n=2,
            temperature=1.0,
            seed=1,
        )
        thumbs = httpx.post(
            f"{url}/v1/feedback", json={"request_id": answer.id, "rating": "down", "comment": "vague"}
        )
        assert thumbs.status_code == 200, thumbs.text
        corrected = httpx.post(
            f"{url}/v1/feedback", json={"request_id": answer.id, "correction": "The library opens at nine."}
        )
        preferred = httpx.post(
            f"{url}/v1/feedback", json={"request_id": answer.id, "preference": {"chosen": 1, "rejected": 0}}
        )
        stars = httpx.post(f"{url}/v1/feedback", json={"request_id": answer.id, "rating": 4})
        assert corrected.status_code == preferred.status_code == stars.status_code == 200
        missing = httpx.post(f"{url}/v1/feedback", json={"request_id": "req-nothing", "rating": 5})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "request_id"
        bad = httpx.post(f"{url}/v1/feedback", json={"request_id": answer.id, "rating": 9})
        assert bad.status_code == 400 and "1 to 5" in bad.json()["error"]["message"]
        empty = httpx.post(f"{url}/v1/feedback", json={"request_id": answer.id})
        assert empty.status_code == 400
        assert metric(url, "tunesmith_feedback_total", kind="rating_thumbs") == 1

        server.scorer.flush()
        request_id = "req-" + answer.id.removeprefix("chatcmpl-")
        with session(server.workspace.engine) as s:
            scores = {
                r.name: r.value for r in s.query(RequestScore).filter(RequestScore.request_id == request_id)
            }
            feedback = list(s.query(Feedback).filter(Feedback.request_id == request_id).order_by(Feedback.id))
        assert {"empty", "truncated", "refusal", "toxicity", "relevance", "length", "pii"} <= set(scores)
        assert {"reference_rouge_l", "reference_chrf"} <= set(
            scores
        )  # the eval metrics, against the correction
        assert [f.rating for f in feedback] == [0.0, None, None, 4.0]
        assert [f.scale for f in feedback] == ["thumbs", None, None, "stars"]
        assert feedback[2].preference == {
            "chosen": answer.choices[1].message.content,
            "rejected": answer.choices[0].message.content,
        }
        assert all(f.version_id == feedback[0].version_id is not None for f in feedback)


def test_population_stability_index_is_zero_for_the_same_sample_and_large_for_a_shift():
    rng = random.Random(0)
    same = [rng.gauss(10, 3) for _ in range(500)]
    assert population_stability(same, same) < 0.01
    assert population_stability(same, [v + 6 for v in same]) > 1.0
    assert population_stability([0.0] * 90 + [1.0] * 10, [0.0] * 50 + [1.0] * 50, binary=True) > 0.25


def _bitext_instructions() -> list[str]:
    path = SHARED / "bitext_customer_support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    if not path.exists():
        pytest.skip(f"{path} is not here (real third-party data stays in ../shared/datasets)")
    with path.open(encoding="utf-8") as handle:
        rows = [r["instruction"] for r in csv.DictReader(handle)]
    random.Random(0).shuffle(rows)
    return rows


def test_drift_is_found_for_a_shifted_real_dataset_and_not_for_the_same_distribution():
    bitext = _bitext_instructions()
    gsm8k = SHARED / "gsm8k" / "test.jsonl"
    if not gsm8k.exists():
        pytest.skip(f"{gsm8k} is not here")
    questions = [
        json.loads(line)["question"] for line in gsm8k.read_text(encoding="utf-8").split("\n")[:150] if line
    ]
    config = DriftConfig(permutations=100)
    same = measure_drift(bitext[:300], bitext[300:450], config)
    shifted = measure_drift(bitext[:300], questions, config)
    assert not same.drifted, same.reasons
    assert same.auc < 0.65 and same.mmd_p > 0.05
    assert shifted.drifted and shifted.auc > 0.95 and shifted.mmd_p < 0.01
    assert shifted.psi["length"] > 0.25
    assert {"many", "how"} & {w for w, _ in shifted.words_current}


def test_monitor_drift_compares_served_prompts_with_the_versions_training_data(serve_project):
    from tunesmith.config import load_config as load
    from tunesmith.data.clean import prompt_text
    from tunesmith.data.prepare import load_split
    from tunesmith.registry.versions import alias_target
    from tunesmith.store import DatasetVersion
    from tunesmith.workspace import open_workspace

    family = serve_project["family"]
    workspace = open_workspace(load(serve_project["path"], serve_project["settings"]))
    version = alias_target(workspace, family, "production")
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, version.dataset_version_id)
    trained = [prompt_text(r) for r in load_split(dataset, "train")]
    arithmetic = [
        f"A train leaves at {h}:00 going {v} km/h. How many kilometres has it gone after {t} hours?"
        for h, v, t in zip(range(30), range(40, 100, 2), range(2, 32), strict=False)
    ]
    cli = ["monitor", "drift", family, "--config", str(serve_project["path"])]
    drift = ["monitor.drift.permutations=100", "monitor.drift.window=40"]  # only this test's requests
    cli += [a for s in [*serve_project["settings"], *drift] for a in ("--set", s)]
    with running(config_of(serve_project, "monitor.sample_rate=0")) as (url, server):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def ask(prompts: list[str]) -> None:
            for prompt in prompts:
                api.chat.completions.create(
                    model=family, messages=[{"role": "user", "content": prompt}], max_tokens=1
                )
            server.request_log.flush()

        ask(random.Random(1).sample(trained, 40))
        calm = runner.invoke(app, cli)
        assert calm.exit_code == 0, calm.output
        assert "no drift" in calm.output and "classifier AUC" in calm.output
        ask(arithmetic)
        shifted = runner.invoke(app, cli)
        assert shifted.exit_code == 3, shifted.output
        assert "DRIFT" in shifted.output and "PSI length" in shifted.output

        # a server checking drift rules again and again embeds the training prompts once
        from tunesmith.models.embed import Embedder
        from tunesmith.monitor.drift import drift_for_version

        embedder, encoded = Embedder(), []
        encode = embedder.encode
        embedder.encode = lambda texts, **kw: encoded.append(len(texts)) or encode(texts, **kw)  # type: ignore[method-assign]
        settings = load(serve_project["path"], [*serve_project["settings"], *drift]).monitor.drift
        for _ in range(3):
            assert drift_for_version(workspace, version, settings, embedder=embedder).drifted
        assert encoded == [len(trained), 40, 40, 40]  # the reference once, then the recent prompts only


def test_alerts_fire_to_a_webhook_and_roll_back_the_alias(serve_project):
    from tunesmith.registry.aliases import history, promote
    from tunesmith.registry.versions import get_version
    from tunesmith.store import AlertEvent
    from tunesmith.workspace import open_workspace

    family, first, second = serve_project["family"], serve_project["first"], serve_project["second"]
    config = config_of(serve_project)
    workspace = open_workspace(config)
    promote(
        workspace,
        config.registry,
        get_version(workspace, second),
        "production",
        force=True,
        reason="alert test",
    )
    with webhook_receiver() as (hook, received):
        rules = (
            f"monitor.alerts=[{{name: slow, metric: p95_latency_ms, threshold: 0, min_requests: 3, "
            f"channels: [log, webhook], webhook: '{hook}'}}, "
            f"{{name: unhappy, metric: negative_feedback_rate, threshold: 0.5, min_requests: 2, "
            f"model: '{family}@production', action: rollback, channels: [webhook], webhook: '{hook}'}}]"
        )
        with running(config_of(serve_project, rules, "monitor.alert_interval_seconds=0.3")) as (url, _):
            api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            ids = [
                api.chat.completions.create(
                    model=family, messages=[{"role": "user", "content": "Hours?"}], max_tokens=2
                ).id
                for _ in range(3)
            ]
            wait_for(lambda: any(r["rule"] == "slow" for r in received))
            assert (
                api.chat.completions.with_raw_response.create(
                    model=family, messages=[{"role": "user", "content": "Hours?"}], max_tokens=2
                ).headers["x-tunesmith-version"]
                == second
            )
            for request_id in ids[:2]:
                assert (
                    httpx.post(
                        f"{url}/v1/feedback", json={"request_id": request_id, "rating": "down"}
                    ).status_code
                    == 200
                )
            wait_for(lambda: any(r["rule"] == "unhappy" for r in received))
            wait_for(
                lambda: (
                    api.chat.completions.with_raw_response.create(
                        model=family, messages=[{"role": "user", "content": "Hours?"}], max_tokens=2
                    ).headers["x-tunesmith-version"]
                    == first
                )
            )  # the server followed the rollback without a restart
            assert metric(url, "tunesmith_alerts_total", rule="unhappy") == 1
    unhappy = next(r for r in received if r["rule"] == "unhappy")
    assert (
        unhappy["version"] == second and f"rolled {family}@production back to {first}" in unhappy["message"]
    )
    latest = history(workspace, family, "production")[0]
    assert (
        latest.action == "rollback"
        and latest.actor == "tunesmith-monitor"
        and "alert unhappy" in latest.reason
    )
    with session(workspace.engine) as s:
        events = list(s.query(AlertEvent).order_by(AlertEvent.id))
    unhappy = [e for e in events if e.rule == "unhappy"]  # cooldown: fired once for the second version
    assert [e.version_id for e in unhappy].count(get_version(workspace, second).id) == 1
    assert sum(1 for e in unhappy if (e.action or "").startswith("rolled ")) == 1  # and moved it once
    assert next(e for e in events if e.rule == "slow").channels == {"log": "sent", "webhook": "sent"}
    listed = runner.invoke(app, ["monitor", "alerts", "--no-check", "--config", str(serve_project["path"])])
    assert listed.exit_code == 0 and "unhappy" in listed.output


def test_a_rollback_rule_moves_the_alias_once_when_the_version_it_restores_is_failing_too(tmp_path):
    from tunesmith.config import MonitorConfig, RegistryConfig
    from tunesmith.monitor.alerts import check_alerts
    from tunesmith.registry.versions import alias_target, get_version, move_alias
    from tunesmith.workspace import init_project, open_workspace

    workspace = open_workspace(load_config(init_project(tmp_path / "p")))
    with session(workspace.engine) as s:
        s.add(stored_run())
    for n in (1, 2, 3):
        with session(workspace.engine) as s:
            s.add(stored_version(n))
        move_alias(workspace, "p", "production", get_version(workspace, f"p-v{n}"), actor="alice")
    with session(workspace.engine) as s:  # v2 and v3 both get thumbs down
        s.add_all(
            Feedback(request_id=f"r{n}{i}", version_id=f"mv-{n}", rating=0.0, scale="thumbs")
            for n in (2, 3)
            for i in range(3)
        )
    monitor = MonitorConfig.model_validate(
        {
            "alerts": [
                {
                    "name": "unhappy",
                    "metric": "negative_feedback_rate",
                    "threshold": 0.5,
                    "min_requests": 2,
                    "model": "p@production",
                    "action": "rollback",
                }
            ]
        }
    )
    first = check_alerts(workspace, monitor, RegistryConfig())
    assert [e.action for e in first] == ["rolled p@production back to p-v2"]
    second = check_alerts(workspace, monitor, RegistryConfig())  # v2, now production, fails as well
    assert len(second) == 1 and second[0].version_id == "mv-2"
    assert second[0].action.startswith("no rollback: this rule moved p@production back at")
    assert alias_target(workspace, "p", "production").name == "p-v2"  # not walked down to v1


def test_monitor_report_writes_time_series_per_version_with_alerts(serve_project, tmp_path):
    family = serve_project["family"]
    with running(config_of(serve_project)) as (url, server):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for i in range(4):
            answer = api.chat.completions.create(
                model=family, messages=[{"role": "user", "content": f"Question {i}?"}], max_tokens=3
            )
        httpx.post(f"{url}/v1/feedback", json={"request_id": answer.id, "rating": 2})
        server.scorer.flush()
    page = tmp_path / "monitor.html"
    report = ["monitor", "report", "--output", str(page), "--config", str(serve_project["path"])]
    report += [a for s in serve_project["settings"] for a in ("--set", s)]
    result = runner.invoke(app, report)
    assert result.exit_code == 0, result.output
    html = page.read_text(encoding="utf-8")
    assert serve_project["first"] in html and "p95 ms" in html and "relevance" in html
    for title in (
        "traffic (requests per bucket)",
        "p95 latency (ms)",
        "negative feedback share",
        "mean relevance",
    ):
        assert f'alt="{title}"' in html
    assert html.count("data:image/png;base64,") >= 5
    with_drift = runner.invoke(app, [*report, "--drift"])
    assert with_drift.exit_code == 0, with_drift.output
    html = page.read_text(encoding="utf-8")
    assert 'alt="similarity of prompts to training prompts"' in html and "Drift against" in html
    bad = runner.invoke(
        app, ["monitor", "report", "--since", "yesterday", "--config", str(serve_project["path"])]
    )
    assert bad.exit_code == 2 and "24h" in bad.output


def test_improve_turns_feedback_into_a_gated_candidate_in_shadow(serve_project):
    from tunesmith.data.prepare import load_split
    from tunesmith.registry.aliases import history
    from tunesmith.registry.versions import alias_target
    from tunesmith.store import DatasetVersion
    from tunesmith.workspace import open_workspace

    family = serve_project["family"]
    workspace = open_workspace(config_of(serve_project))
    production = alias_target(workspace, family, "production")
    with session(workspace.engine) as s:
        judged_on = s.get(DatasetVersion, production.dataset_version_id)
    held_out = load_split(judged_on, "test")[0]["messages"][-2]["content"]  # a test question of production
    questions = [
        "Can I bring my dog?",
        "Is there parking?",
        "Do you sell coffee?",
        held_out,
        "Where do I return books?",
        *[f"Is room {n} free on Friday?" for n in range(5)],  # 10 corrections: 2 are held out
    ]
    with running(config_of(serve_project)) as (url, _):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def ask(question: str, **extra) -> str:
            return api.chat.completions.create(
                model=family, messages=[{"role": "user", "content": question}], max_tokens=4, **extra
            ).id

        for question in questions:
            reply = ask(question)
            correction = f"Fernwick staff answer: {question.lower()} Yes, at the front desk."
            assert httpx.post(
                f"{url}/v1/feedback", json={"request_id": reply, "correction": correction}
            ).is_success
        pair = ask("What are the opening hours?", n=2, temperature=1.0, seed=3)
        httpx.post(
            f"{url}/v1/feedback", json={"request_id": pair, "preference": {"chosen": 1, "rejected": 0}}
        )
        liked, disliked = (
            ask("Tell me a joke", temperature=1.0, seed=1),
            ask("Tell me a joke", temperature=1.0, seed=2),
        )
        httpx.post(f"{url}/v1/feedback", json={"request_id": liked, "rating": "up"})
        httpx.post(f"{url}/v1/feedback", json={"request_id": disliked, "rating": "down"})
    settings = [
        *serve_project["settings"],
        "eval.max_new_tokens=4",
        "eval.bootstrap_resamples=100",
        "eval.metrics=[rouge_l]",
        "eval.gates=[{metric: rouge_l, min: 0.0}]",
    ]
    improve = ["improve", "--since", "1h", "--config", str(serve_project["path"])]
    improve += [a for s in settings for a in ("--set", s)]
    result = runner.invoke(app, improve)
    assert result.exit_code == 0, result.output
    rows = int(re.search(r"(\d+) SFT row\(s\)", result.output.replace("\n", " ")).group(1))
    assert rows >= 10 and "shadow →" in result.output, result.output  # (earlier tests may leave more)

    shadow = alias_target(workspace, family, "shadow")
    assert shadow is not None and shadow.parent_id == production.id
    assert alias_target(workspace, family, "production").id == production.id  # never straight to production
    with session(workspace.engine) as s:
        dataset = s.get(DatasetVersion, shadow.dataset_version_id)
    kept_out = dataset.meta["lineage"]["held_out"]  # a fifth of the corrected requests, at least one
    # two corrected requests held out (one may be the test question's, which decontamination removes)
    assert len(kept_out) >= 2 and 1 <= dataset.counts["test"] <= len(kept_out)
    assert dataset.counts["train"] + dataset.counts["test"] == rows - 1  # a test question's correction went
    said = " ".join(result.output.split())
    assert f"On the {dataset.counts['test']} corrected request(s) held out of training" in said
    corrected = said.split("held out of training")[1]  # its table and verdicts: shadow vs production
    assert re.search(
        rf"rouge_l: (no significant difference between {shadow.name}|{shadow.name} is)", corrected
    )
    assert f"and {production.name}" in corrected or f"than {production.name}" in corrected
    assert (
        len(dataset.meta["lineage"]["requests"]) >= 5
        and dataset.meta["lineage"]["version"] == production.name
    )
    preferences = [json.loads(line) for line in (Path(dataset.source).parent / "preferences.jsonl").open()]
    # the corrections (but those held out), the explicit preference, the good-vs-bad pair
    assert len(preferences) >= 10 - len(kept_out) + 1 + 1
    assert any(p["chosen"] != p["rejected"] and "joke" in p["prompt"][0]["content"] for p in preferences)
    pairs = re.search(r"preference dataset (ds-\w+)", result.output)
    with session(workspace.engine) as s:
        stored = s.get(DatasetVersion, pairs.group(1))
    assert stored.format == "preference" and stored.meta["lineage"]["version"] == production.name
    # a pair on production's test question is decontaminated (when it was not held out already); the
    # others train, but for duplicates (the shared store may hold other tests' pairs on the same prompts)
    trained = [r["prompt"][-1]["content"] for r in load_split(stored, "train")]
    assert held_out not in trained
    candidates = {json.dumps([p["prompt"], p["chosen"], p["rejected"]]) for p in preferences}
    assert 0 < stored.counts["train"] <= sum(p["prompt"][-1]["content"] != held_out for p in preferences)
    assert stored.counts["train"] + stored.counts["rejected"] >= len(candidates) - 1
    clustered = runner.invoke(app, [*improve, "--drift-cluster", "--no-train"])
    assert clustered.exit_code == 0, clustered.output
    narrowed = int(
        re.search(r"(\d+) request\(s\) with feedback", clustered.output.replace("\n", " ")).group(1)
    )
    assert narrowed < len(
        dataset.meta["lineage"]["requests"]
    )  # one cluster of them (which, depends on the log)
    run_name = re.search(r"imp-\d{8}-\d{6}-[0-9a-f]{4}", clustered.output.replace("\n", "")).group(0)
    folder = workspace.root / "improve" / run_name
    assert json.loads((folder / "lineage.json").read_text())["selection"]["drift_cluster"] is True
    moved = history(workspace, family, "shadow")[0]
    assert moved.gate_report_id is not None and moved.action == "promote"

    # The preference pairs train DPO from production instead, gated the same way.
    optimised = runner.invoke(
        app,
        [
            "improve",
            "--since",
            "1h",
            "--objective",
            "dpo",
            "--config",
            str(serve_project["path"]),
            *[a for s in [*settings, "train.max_steps=2"] for a in ("--set", s)],
        ],
    )
    assert optimised.exit_code == 0, optimised.output
    shadow = alias_target(workspace, family, "shadow")
    assert shadow.config["train"]["objective"] == "dpo" and shadow.parent_id == production.id
    with session(workspace.engine) as s:
        assert s.get(DatasetVersion, shadow.dataset_version_id).format == "preference"


def test_a_sample_of_answers_gets_an_online_judge_score(serve_project):
    from judge_server import serve as judge_endpoint

    family = serve_project["family"]
    with judge_endpoint() as (judge_url, judge_app):
        settings = (
            f"monitor.judge={{endpoint: '{judge_url}', model: fair, steps: [Check the facts.]}}",
            "monitor.judge_sample_rate=1.0",
            "monitor.scorers=[length]",
        )
        with running(config_of(serve_project, *settings)) as (url, server):
            api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            answer = api.chat.completions.create(
                model=family, messages=[{"role": "user", "content": "Opening hours?"}], max_tokens=4
            )
            server.scorer.flush()
            with session(server.workspace.engine) as s:
                request_id = "req-" + answer.id.removeprefix("chatcmpl-")
                scores = {
                    r.name: r.value
                    for r in s.query(RequestScore).filter(RequestScore.request_id == request_id)
                }
    assert set(scores) == {"length", "judge"} and 1 <= scores["judge"] <= 5
    assert judge_app.state.calls >= 1


def test_drift_clusters_single_out_the_prompts_least_like_training():
    from conftest import demo_rows
    from tunesmith.monitor.drift import drift_clusters

    trained = [row["messages"][-2]["content"] for row in demo_rows()]
    familiar = trained[:24]
    strange = [
        f"What is {a} times {b}, and is the result a prime number?"
        for a, b in zip(range(3, 15), range(7, 19), strict=True)
    ]
    labels, similarity = drift_clusters(trained[24:], familiar + strange, clusters=4)
    drifted = min(range(len(similarity)), key=similarity.__getitem__)
    members = [i for i, label in enumerate(labels) if label == drifted]
    assert members and all(i >= len(familiar) for i in members)  # only arithmetic in the drifted cluster


def test_online_scores_read_the_answer_as_eval_does_and_the_trace_only_for_what_was_exposed():
    """A reasoning model's trace is not its answer: thinking aloud is no refusal and adds no words to
    the answer; personal data or abuse in the trace was still sent to the client, so it counts."""
    trace = "I'm sorry, but I can't recall it offhand. The notes say ana@example.org keeps the keys."
    row = {"id": "req-1", "prompt": "Where is the library?", "status": 200}
    row["output"] = [f"<think>\n{trace}\n</think>\n\nIt is on Elm Street."]
    names = ["refusal", "length", "empty", "pii"]
    scores = {s.name: s.value for s in score_row(row, names, ScoringContext(frozenset()))}
    assert scores == {"refusal": 0.0, "length": 5.0, "empty": 0.0, "pii": 1.0}
    cut = {**row, "output": [f"<think>\n{trace}"], "finish_reasons": ["length"]}  # never got to answer
    assert {s.name: s.value for s in score_row(cut, ["empty"], ScoringContext(frozenset()))} == {"empty": 1.0}
