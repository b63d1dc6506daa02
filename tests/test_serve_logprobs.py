"""Token log-probabilities through the official `openai` client: the model's own, as it decoded."""

from __future__ import annotations

import math

import openai
import pytest

QUESTION = [{"role": "user", "content": "When does the Fernwick library open?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_byte_model_dir):
    from tunesmith.config import load_config
    from tunesmith.pipeline import write_demo_project
    from tunesmith.train.run import train

    config_path = write_demo_project(tmp_path_factory.mktemp("logprobs"))
    settings = [f"model.id={tiny_byte_model_dir}", "train.method=lora", "train.max_steps=2"]
    settings += ["train.save_strategy=no", "train.forgetting.probe=false", "serve.auth=none"]
    settings += ["serve.backend=transformers"]
    version = train(load_config(config_path, settings)).version
    return load_config(config_path, [*settings, f"serve.models=[{version.name}]"]), version


def test_chat_logprobs_are_the_models_own_step_by_step_streamed_or_not(served):
    """Each token's logprob is the model's log-softmax at that step (checked against the version
    decoding the same prompt), with top_logprobs sorted; the stream carries the same entries."""
    import torch

    from tunesmith.chat import render_chat
    from tunesmith.registry.loading import load_row
    from tunesmith.serve import serve_in_background as running
    from tunesmith.workspace import open_workspace

    config, version = served
    with running(config) as (url, _):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = api.chat.completions.create(
            model=version.name, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
        )
        entries = answer.choices[0].logprobs.content
        assert "".join(e.token for e in entries) == answer.choices[0].message.content
        for entry in entries:
            assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
            values = [t.logprob for t in entry.top_logprobs]
            assert values == sorted(values, reverse=True) and sum(map(math.exp, values)) <= 1 + 1e-5
            assert entry.logprob == pytest.approx(values[0], abs=1e-5)  # greedy: the likeliest
            assert bytes(entry.bytes).decode() == entry.token
        chunks = api.chat.completions.create(
            model=version.name,
            messages=QUESTION,
            max_tokens=8,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            stream=True,
        )
        streamed = [
            e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
        ]
        assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
        sampled = api.chat.completions.create(
            model=version.name, messages=QUESTION, max_tokens=8, temperature=1.5, seed=3, logprobs=True
        )
        assert all(not e.top_logprobs for e in sampled.choices[0].logprobs.content)  # top_logprobs 0
        text = api.completions.create(
            model=version.name, prompt="The library", max_tokens=6, temperature=0, logprobs=2
        )
        lp = text.choices[0].logprobs
        assert "".join(lp.tokens) == text.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
        assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0
        for bad, match in (
            ({"top_logprobs": 3}, "needs logprobs"),
            ({"logprobs": True, "top_logprobs": 30}, "20"),
        ):
            with pytest.raises(openai.BadRequestError, match=match):
                api.chat.completions.create(model=version.name, messages=QUESTION, max_tokens=2, **bad)
        with pytest.raises(openai.BadRequestError, match="0 to 20"):
            api.completions.create(model=version.name, prompt="x", max_tokens=2, logprobs=21)

    model, tokenizer = load_row(version, open_workspace(config))
    prompt = render_chat(tokenizer, QUESTION, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            ids,
            max_new_tokens=len(entries),
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    for step, entry in zip(out.scores, entries, strict=False):
        assert float(torch.log_softmax(step[0].float(), -1).max()) == pytest.approx(entry.logprob, abs=1e-4)
