"""Serving pieces on toy inputs: stop sequences while streaming, sticky buckets, config checks."""

from __future__ import annotations

import pytest

from tunesmith.config import ConfigError, load_config
from tunesmith.serve.backends.base import (
    Choice,
    GenerationJob,
    OverloadedError,
    QueuedBackend,
    SamplingParams,
)
from tunesmith.serve.router import _bucket
from tunesmith.serve.runtime import ModelSettings, RuntimeSettings

VOCAB = {1: "Hel", 2: "lo", 3: " ST", 4: "OP", 5: " more", 6: " S", 7: "é"[:1], 9: "<eos>"}


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def stream(tokens: list[int], **params) -> tuple[list[str], Choice]:
    choice = Choice(0, SamplingParams(max_tokens=params.pop("max_tokens", 50), **params))
    deltas = []
    for token in tokens:
        deltas.append(choice.advance(token, decode, eos={9}))
        if choice.done:
            break
    return deltas, choice


def test_a_stop_sequence_split_across_tokens_is_held_back_and_never_sent():
    deltas, choice = stream([1, 2, 3, 4, 5], stop=("STOP",))
    assert "".join(deltas) == "Hello " and choice.finish_reason == "stop"
    assert deltas == ["", "He", "llo", " "]  # the last 3 characters wait: they might begin "STOP"


def test_a_false_alarm_is_released_and_eos_and_length_finish():
    deltas, choice = stream([1, 2, 6, 5, 9], stop=("STOP",))
    assert "".join(deltas) == "Hello S more" and choice.finish_reason == "stop"
    deltas, choice = stream([1, 2, 5, 5], max_tokens=3)
    assert "".join(deltas) == "Hello more" and choice.finish_reason == "length" and len(choice.tokens) == 3


def test_buckets_are_sticky_and_evenly_spread():
    assert _bucket("r", "alice") == _bucket("r", "alice")
    assert _bucket("r", "alice") != _bucket("other-route", "alice")
    share = sum(_bucket("r", f"user-{i}") < 25 for i in range(10_000)) / 10_000
    assert 0.23 < share < 0.27


def test_runtime_settings_most_specific_name_wins():
    settings = RuntimeSettings(
        models={
            "*": ModelSettings(max_tokens=100, temperature=0.7),
            "bot": ModelSettings(system_prompt="You help.", temperature=0.2),
            "bot@canary": ModelSettings(stop=["\nUser:"]),
        }
    )

    class Version:
        family, name = "bot", "bot-v3"

    merged = settings.for_request("bot@canary", Version())  # type: ignore[arg-type]
    assert merged == ModelSettings(
        system_prompt="You help.", temperature=0.2, max_tokens=100, stop=["\nUser:"]
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "serve.routes=[{model: a@production, canary: [{to: a-v1, percent: 60}, {to: b, percent: 50}]}]",
            "add up to more than 100",
        ),
        (
            "serve.routes=[{model: a@production, rules: [{name: everyone, to: a-v2}]}]",
            "matches every request",
        ),
        ("serve.routes=[{model: a@production, rollout: {steps: [shadow, 50]}}]", "ends at 100"),
        ("serve.routes=[{model: a@production, rollout: {steps: [50, 5, 100]}}]", "must rise"),
        ("serve.routes=[{model: a}, {model: a}]", "same model name"),
        ("serve.default_max_tokens=4096", "above max_tokens"),
    ],
)
def test_serve_config_mistakes_are_caught_before_anything_runs(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [setting])


class _Queue(QueuedBackend):
    """The shared queue alone: nothing loaded but one version, no worker."""

    def loaded(self) -> set[str]:
        return {"v"}

    def _work(self) -> None: ...

    def _drop(self, version_id: str) -> None: ...


def test_jobs_leave_the_queue_in_turns_across_keys_and_one_key_cannot_fill_it():
    queue = _Queue(max_queue=8)  # one key may hold half: 4 sequences
    jobs = [GenerationJob("v", [1], [SamplingParams(max_tokens=1)], tenant=t) for t in "aaaab"]
    for job in jobs:
        queue.submit(job)
    with pytest.raises(OverloadedError):
        queue.submit(GenerationJob("v", [1], [SamplingParams(max_tokens=1)], tenant="a"))
    queue.submit(GenerationJob("v", [1], [SamplingParams(max_tokens=1)], tenant="c"))
    assert [j.tenant for j in queue.fair_order()] == ["a", "b", "c", "a", "a", "a"]
    assert [j.tenant for j in queue._wait_for_jobs(take=3)] == ["a", "b", "c"]


def test_penalties_lower_the_logits_of_tokens_already_in_the_answer_as_openai_defines_them():
    import torch

    from tunesmith.serve.backends.transformers_backend import penalised

    logits = torch.zeros(6)
    choice = Choice(0, SamplingParams(max_tokens=9, presence_penalty=0.5, frequency_penalty=0.25))
    assert torch.equal(penalised(logits, choice), logits)  # nothing written yet
    choice.tokens = [2, 2, 2, 4]
    # token 2: presence 0.5 + 3 x 0.25; token 4: 0.5 + 0.25; the others untouched
    assert penalised(logits, choice).tolist() == [0.0, 0.0, -1.25, 0.0, -0.75, 0.0]
    plain = Choice(0, SamplingParams(max_tokens=9))
    plain.tokens = [2, 2]
    assert torch.equal(penalised(logits, plain), logits)


class _Recorder:
    """A backend that only records the versions it is told to load and to retire."""

    def __init__(self) -> None:
        self.retired: list[str] = []

    def load(self, version) -> None:
        pass

    def retire(self, version_id: str) -> None:
        self.retired.append(version_id)


def test_a_version_swapped_out_under_a_held_request_is_unloaded_when_the_last_hold_ends(tmp_path):
    from store_helpers import stored_run, stored_version
    from tunesmith.registry.aliases import promote
    from tunesmith.serve.router import ModelTable
    from tunesmith.store import session
    from tunesmith.workspace import open_workspace

    config = load_config(None, [f"workspace={tmp_path / 'ws'}"])
    workspace = open_workspace(config)
    with session(workspace.engine) as s:
        s.add(stored_run())
    first, second = stored_version(1), stored_version(2)
    with session(workspace.engine) as s:
        s.add_all([first, second])
    promote(workspace, config.registry, first, "production", force=True, reason="test")
    backend = _Recorder()
    table = ModelTable(workspace, backend)  # type: ignore[arg-type]
    assert table.ensure("p").id == first.id
    assert table.hold(first) and table.hold(first)  # two requests routed to it

    promote(workspace, config.registry, second, "production", force=True, reason="test")
    assert table.refresh() == [("p@production", "p-v2", "swapped")]
    assert backend.retired == []  # both requests still hold it
    table.release(first)
    assert backend.retired == []
    table.release(first)
    assert backend.retired == [first.id]
    assert not table.hold(first)  # a request routed before the swap is routed again

    assert table.hold(second)
    promote(workspace, config.registry, first, "production", force=True, reason="test")
    table.refresh()
    promote(workspace, config.registry, second, "production", force=True, reason="test")
    table.refresh()  # pointed at again before its hold ended: it stays loaded
    table.release(second)
    assert backend.retired == [first.id, first.id]


def test_llama_cpp_keeps_to_the_thread_budget_torch_keeps_to(monkeypatch):
    """A llama-server on every core beside a torch process on its own core spun against it (the
    llama.cpp serving test took four times as long beside another test)."""
    import os

    from tunesmith.models.llamacpp import compute_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert compute_threads() == 1
    for unset in ("", "auto", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert compute_threads() == (os.cpu_count() or 1)
