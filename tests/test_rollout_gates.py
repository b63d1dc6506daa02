"""The monitor's online rollout gates (score, feedback, drift), each made to fail as well as pass, and
a rollout that advances or rolls back on them. A real SQLite store holds the traffic they read."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from store_helpers import stored_run, stored_version
from tunesmith.config import MonitorConfig, RegistryConfig, RolloutPlan, ServeConfig, load_config
from tunesmith.monitor.gates import GATES, GateContext
from tunesmith.registry.versions import RegistryError
from tunesmith.store import Feedback, ModelVersion, RequestLog, RequestScore, Rollout, session
from tunesmith.workspace import open_workspace

CANDIDATE, PRIMARY = "mv-2", "mv-1"


@pytest.fixture
def workspace(tmp_path):
    workspace = open_workspace(load_config(None, [f"workspace={tmp_path / 'ws'}"]))
    with session(workspace.engine) as s:
        s.add(stored_run())
    with session(workspace.engine) as s:
        s.add_all([stored_version(1), stored_version(2)])
    return workspace


def _since() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=5)


def _context(workspace, **plan) -> GateContext:
    rollout = Rollout(id="ro-test", route="p@production", version_id=CANDIDATE, steps=[10, 100], step=0)
    return GateContext(workspace, rollout, RolloutPlan(**plan), PRIMARY, _since(), MonitorConfig())


def _scores(workspace, version_id: str, name: str, values: list[float]) -> None:
    with session(workspace.engine) as s:
        s.add_all(
            RequestScore(request_id=f"req-{uuid.uuid4().hex}", version_id=version_id, name=name, value=v)
            for v in values
        )


def _ratings(workspace, version_id: str, downs: int, ups: int) -> None:
    with session(workspace.engine) as s:
        s.add_all(
            Feedback(request_id=f"req-{uuid.uuid4().hex}", version_id=version_id, rating=r, scale="thumbs")
            for r in [0.0] * downs + [1.0] * ups
        )


def _normal(mean: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, 0.05) for _ in range(n)]


def test_the_score_gate_passes_an_equal_version_fails_a_worse_one_and_waits_on_too_little(workspace):
    gate = GATES.get("score")
    _scores(workspace, PRIMARY, "relevance", _normal(0.60, 40, 1))
    _scores(workspace, CANDIDATE, "relevance", _normal(0.60, 5, 2))
    waiting = gate(_context(workspace))
    assert waiting.passed is None and "5 and 40 of 20 scores so far" in waiting.detail

    _scores(workspace, CANDIDATE, "relevance", _normal(0.61, 35, 3))
    held = gate(_context(workspace))
    assert held.passed is True, held.detail
    assert "relevance mean" in held.detail and "within the tolerated 0.05" in held.detail

    # the same traffic with no drop tolerated: the interval cannot rule a small drop out, so it waits
    strict = gate(_context(workspace, scores={"relevance": 0.0}))
    assert strict.passed is None, strict.detail

    _scores(workspace, CANDIDATE, "relevance", _normal(0.30, 200, 4))  # the version's answers got worse
    fell = gate(_context(workspace))
    assert fell.passed is False and "worse than the tolerated 0.05" in fell.detail


def test_the_score_gate_knows_lower_is_better_for_refusals(workspace):
    gate = GATES.get("score")
    _scores(workspace, PRIMARY, "refusal", [0.0] * 38 + [1.0] * 2)
    _scores(workspace, CANDIDATE, "refusal", [0.0] * 20 + [1.0] * 20)  # refuses half the time
    worse = gate(_context(workspace, scores={"refusal": 0.05}))
    assert worse.passed is False, worse.detail

    _scores(workspace, CANDIDATE, "reference_rouge_l", _normal(0.5, 30, 5))  # agreement with corrections
    _scores(workspace, PRIMARY, "reference_rouge_l", _normal(0.3, 30, 6))
    better = gate(_context(workspace, scores={"reference_rouge_l": 0.0}))
    assert better.passed is True, better.detail


def test_the_feedback_gate_compares_negative_rates_with_the_primary(workspace):
    gate = GATES.get("feedback")
    _ratings(workspace, PRIMARY, downs=10, ups=190)
    _ratings(workspace, CANDIDATE, downs=1, ups=5)
    assert gate(_context(workspace)).passed is None

    _ratings(workspace, CANDIDATE, downs=1, ups=33)  # 2 of 40 down: too few ratings to rule out +5 points
    unsure = gate(_context(workspace))
    assert unsure.passed is None and "not yet clearly within" in unsure.detail

    _ratings(workspace, CANDIDATE, downs=8, ups=152)
    held = gate(_context(workspace))
    assert held.passed is True, held.detail

    _ratings(workspace, CANDIDATE, downs=100, ups=0)
    fell = gate(_context(workspace))
    assert fell.passed is False and "negative-feedback rate" in fell.detail


def test_the_drift_gate_fails_on_prompts_unlike_the_training_data(tmp_path):
    from tunesmith.data.clean import prompt_text
    from tunesmith.data.prepare import load_split, prepare_dataset
    from tunesmith.pipeline import write_demo_project

    config = load_config(write_demo_project(tmp_path), ["monitor.drift.permutations=100"])
    workspace = open_workspace(config)
    dataset, _ = prepare_dataset(workspace, config.data, base_dir=config.base_dir)
    with session(workspace.engine) as s:
        s.add(stored_run())
    with session(workspace.engine) as s:
        s.add(stored_version(1))
        candidate = stored_version(2)
        candidate.dataset_version_id = dataset.id
        s.add(candidate)
    trained = [prompt_text(row) for row in load_split(dataset, "train")]
    arithmetic = [
        f"A train leaves at {h}:00 going {v} km/h. How many kilometres has it gone after {t} hours?"
        for h, v, t in zip(range(40), range(40, 120, 2), range(2, 42), strict=True)
    ]
    gate = GATES.get("drift")

    def ask(prompts: list[str], since: datetime) -> GateContext:
        _served(workspace, CANDIDATE, prompts)
        rollout = Rollout(id="ro-d", route="p@production", version_id=CANDIDATE, steps=[10, 100], step=0)
        return GateContext(workspace, rollout, RolloutPlan(), PRIMARY, since, config.monitor)

    started = datetime.now(UTC)
    few = gate(ask(trained[:5], started))
    assert few.passed is None
    calm = gate(ask(random.Random(0).sample(trained, min(40, len(trained))), started))
    assert calm.passed is True, calm.detail
    shifted = gate(ask(arithmetic, datetime.now(UTC)))  # the window of a later step: only these
    assert shifted.passed is False and "a classifier tells recent prompts from training" in shifted.detail


def _served(
    workspace, version_id: str, prompts: list[str], route: str = "shadow", answer: str = "an answer"
) -> None:
    with session(workspace.engine) as s:
        s.add_all(
            RequestLog(
                id=f"req-{uuid.uuid4().hex}",
                endpoint="chat",
                requested_model="p@production",
                version_id=version_id,
                route=route,
                prompt=[{"role": "user", "content": p}],
                output=[answer],
                finish_reasons=["stop"],
                params={},
                status=200,
                latency_ms=10.0,
            )
            for p in prompts
        )


def test_a_rollout_advances_on_the_online_gates_and_rolls_back_when_scores_fall(workspace):
    from tunesmith.serve.rollout import list_rollouts, start_rollout, tick

    route = {"model": "p@production", "rollout": {"steps": [10, 50, 100], "hold_minutes": 0.01}}
    route["rollout"] |= {"gates": ["error_rate", "score", "feedback"], "min_requests": 5}
    serve = ServeConfig(routes=[route])
    with session(workspace.engine) as s:
        candidate = s.get(ModelVersion, CANDIDATE)
    start_rollout(workspace, serve, "p@production", candidate)

    def step() -> list[tuple[Rollout, str]]:
        time.sleep(0.7)  # each step holds 0.6 s
        return tick(workspace, serve, RegistryConfig(), lambda _: PRIMARY)

    assert step() == []  # no traffic yet: every gate waits
    _served(workspace, CANDIDATE, ["hello"] * 10, route="rollout:10%")
    _scores(workspace, PRIMARY, "relevance", _normal(0.6, 30, 7))
    _scores(workspace, CANDIDATE, "relevance", _normal(0.6, 30, 8))
    _ratings(workspace, PRIMARY, downs=10, ups=190)
    _ratings(workspace, CANDIDATE, downs=6, ups=194)
    [(advanced, event)] = step()
    assert event == "advance" and advanced.step == 1
    assert any(r.startswith("score: relevance mean") for r in advanced.history[-1]["reasons"])

    # the next step's window: the version's answers now score far below the primary's
    _served(workspace, CANDIDATE, ["hello"] * 10, route="rollout:50%")
    _scores(workspace, PRIMARY, "relevance", _normal(0.6, 30, 9))
    _scores(workspace, CANDIDATE, "relevance", _normal(0.2, 30, 10))
    [(rolled, event)] = step()
    assert event == "rollback" and rolled.status == "rolled_back"
    assert "worse than the tolerated 0.05" in rolled.history[-1]["reasons"][0]
    assert list_rollouts(workspace)[0].status == "rolled_back"


def test_a_rollout_plan_with_an_unknown_gate_or_an_aimless_score_is_refused_at_start(workspace):
    from tunesmith.serve.rollout import start_rollout

    with session(workspace.engine) as s:
        candidate = s.get(ModelVersion, CANDIDATE)
    for plan, message in [
        ({"gates": ["score", "vibes"]}, "names 'vibes': known gates are"),
        ({"gates": ["score"], "scores": {"length": 5}}, "names 'length', which no scorer says is better"),
    ]:
        serve = ServeConfig(routes=[{"model": "p@production", "rollout": plan}])
        with pytest.raises(RegistryError, match=message):
            start_rollout(workspace, serve, "p@production", candidate)


def test_the_last_step_compares_with_the_primary_since_the_rollout_started(workspace):
    """At 100% the primary answers nothing more; its scores and ratings from the earlier steps are
    the baseline, so the rollout completes instead of waiting for ever."""
    from tunesmith.serve.rollout import start_rollout, tick

    route = {"model": "p@production", "rollout": {"steps": [50, 100], "hold_minutes": 0.01}}
    route["rollout"] |= {"gates": ["score", "feedback"], "min_requests": 5}
    serve = ServeConfig(routes=[route])
    with session(workspace.engine) as s:
        candidate = s.get(ModelVersion, CANDIDATE)
    start_rollout(workspace, serve, "p@production", candidate)
    _scores(workspace, PRIMARY, "relevance", _normal(0.6, 30, 11))
    _ratings(workspace, PRIMARY, downs=10, ups=190)

    def step() -> list[tuple[Rollout, str]]:
        _scores(workspace, CANDIDATE, "relevance", _normal(0.6, 30, 12))  # the version's traffic only
        _ratings(workspace, CANDIDATE, downs=6, ups=194)
        time.sleep(0.7)
        return tick(workspace, serve, RegistryConfig(), lambda _: PRIMARY)

    [(_, advanced)] = step()
    [(last, finished)] = step()
    assert advanced == "advance" and finished in ("complete", "blocked"), last.history[-1]
    assert any(r.startswith("score: relevance mean") for r in last.history[-1]["reasons"])


def test_drift_reads_served_answers_without_their_reasoning_traces(workspace):
    """Drift compares answers with the training answers, which hold no trace: a served trace that
    thinks aloud ("I'm sorry, I can't recall...") is not a refusal."""
    from tunesmith.monitor.drift import recent_texts

    thought = (
        "<think>\nI'm sorry, but I can't recall it. The notes say Elm Street.\n</think>\n\nOn Elm Street."
    )
    _served(workspace, PRIMARY, ["Where is the library?"], "p@production", answer=thought)
    with session(workspace.engine) as s:
        version = s.get(ModelVersion, PRIMARY)
    assert recent_texts(workspace, version, 10) == (["Where is the library?"], ["On Elm Street."])


def test_drift_compares_the_last_user_turn_of_training_chats_with_the_served_ones(workspace, tmp_path):
    """A served request's prompt is its last user turn: so is a training chat's, or every multi-turn
    set would look drifted (longer, other words) from the first request on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunesmith.monitor.drift import reference_texts
    from tunesmith.store import DatasetVersion

    chat = [
        {"role": "user", "content": "Hi there, I have a question about the branches."},
        {"role": "assistant", "content": "Hello! Ask away."},
        {"role": "user", "content": "Where is the library?"},
        {"role": "assistant", "content": "On Elm Street."},
    ]
    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"messages": chat}]), folder / "train.parquet")
    version = stored_version(3)
    version.dataset_version_id = "ds-multi"
    with session(workspace.engine) as s:
        s.add(
            DatasetVersion(
                id="ds-multi",
                name="d",
                content_hash="h",
                source="f",
                format="chat",
                counts={},
                path=str(folder),
            )
        )
    with session(workspace.engine) as s:
        s.add(version)
    with session(workspace.engine) as s:
        version = s.get(ModelVersion, "mv-3")
    _, prompts, answers = reference_texts(workspace, version)
    assert prompts == ["Where is the library?"] and answers == ["On Elm Street."]
