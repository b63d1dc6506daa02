"""Tool calls: read from data, trained through the chat template, scored by eval, and returned by
the server in OpenAI's format."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunesmith.chat import asked, render_chat
from tunesmith.data.clean import record_text
from tunesmith.data.formats import RowError, _chat
from tunesmith.evaluate.defaults import default_metrics
from tunesmith.evaluate.metrics import get_metric
from tunesmith.serve.grammar import GrammarError, tool_grammar
from tunesmith.toolcalls import CallSplitter, parse_calls, template_knows_tools, written_answer
from tunesmith.train.turns import assistant_spans

EXAMPLE_TOOLS = {  # the tool-calling example's five functions
    tool["function"]["name"]: tool
    for tool in json.loads((Path(__file__).parents[1] / "examples/tool_calling/tools.json").read_text())
}
WEATHER, TIMER = EXAMPLE_TOOLS["get_weather"], EXAMPLE_TOOLS["set_timer"]
# small enough for the tiny model's 512-token window, the grammar keeping the answers short
MINUTES = {
    "type": "function",
    "function": {
        "name": "set_timer",
        "parameters": {
            "type": "object",
            "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 60}},
            "required": ["minutes"],
        },
    },
}
STOP = {"type": "function", "function": {"name": "stop", "parameters": {"type": "object", "properties": {}}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 21}'},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]
# A template that renders tools and calls itself, as Qwen2.5's and Hermes' do (cut down).
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_of(model_dir: Path, template: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def test_an_openai_tool_conversation_is_read_and_bad_calls_say_where():
    """The OpenAI shape (a call, the tool's answer, the final answer) was refused as 'two assistant
    turns in a row'; now it is read, and a malformed call is refused naming its field."""
    record = _chat({"messages": CONVERSATION, "tools": [WEATHER]})
    assert record["messages"][1]["tool_calls"] == [CALL] and record["messages"][2]["role"] == "tool"
    assert record["tools"] == [WEATHER]
    assert _chat({"messages": CONVERSATION[:2], "tools": [WEATHER]})["messages"][1]["content"] == ""
    no_calls = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "tool_calls": []},
    ]
    assert _chat({"messages": no_calls})["messages"][1]["content"] == "Hello"  # an empty list: no calls

    def broken(change) -> str:
        messages = json.loads(json.dumps(CONVERSATION))
        change(messages)
        with pytest.raises(RowError) as refused:
            _chat({"messages": messages, "tools": [WEATHER]})
        return str(refused.value)

    def bad_json(m):
        m[1]["tool_calls"][0]["function"]["arguments"] = "{city: Paris"

    assert "messages[1].tool_calls[0].function.arguments: not valid JSON" in broken(bad_json)
    assert "messages[2].tool_call_id: 'c9'" in broken(lambda m: m[2].update(tool_call_id="c9"))
    assert "need tool messages first" in broken(lambda m: m.pop(2))
    assert "must follow an assistant message with tool_calls" in broken(lambda m: m.pop(1))
    # two rows that ask the same but call differently are not duplicates (calls were left out of the key)
    five, fifty = (
        {
            "messages": [
                {"role": "user", "content": "Timer, please."},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "set_timer", "arguments": json.dumps({"minutes": n})}}
                    ],
                },
            ]
        }
        for n in (5, 50)
    )
    assert record_text(five) != record_text(fifty)
    with pytest.raises(RowError, match=r"tools\[0\]"):
        _chat({"messages": CONVERSATION, "tools": [{"type": "function", "function": {"parameters": {}}}]})


def test_a_template_without_tools_learns_calls_in_the_hermes_format(tiny_byte_model_dir):
    """The tiny model's ChatML drops tools and calls (as SmolLM2's does): training writes them in
    the Hermes format, the call is a target and the tool's answer is context."""
    tokenizer = tokenizer_of(tiny_byte_model_dir)
    assert not template_knows_tools(tokenizer)
    text, spans = assistant_spans(CONVERSATION, tokenizer, [WEATHER])
    targets = [text[start:end] for start, end in spans]
    assert targets[0].startswith(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert targets[1].startswith("It is 21 degrees")
    tools = text.split("<|im_start|>user")[0]  # the tools come first
    assert '"name": "get_weather", "description": "Current weather in a city", "parameters"' in tools
    assert "<tool_response>\n" + '{"temperature": 21}' in text and not any(
        "temperature" in t for t in targets
    )
    # eval and the server ask with the same rendering
    prompt = render_chat(tokenizer, CONVERSATION[:1], [WEATHER], add_generation_prompt=True)
    assert text.startswith(prompt)


def test_a_template_that_knows_tools_renders_them_itself(tiny_byte_model_dir):
    tokenizer = tokenizer_of(tiny_byte_model_dir, TOOL_TEMPLATE)
    assert template_knows_tools(tokenizer)
    text, spans = assistant_spans(CONVERSATION, tokenizer, [WEATHER])
    assert text.startswith("<|im_start|>system\nTOOLS [") and "<tools>" not in text
    assert (
        '<call>get_weather {"city": "Paris"}</call>' in text[spans[0][0] : spans[0][1]]
    )  # arguments as an object


def test_rl_prompts_keep_their_tools_or_say_why_they_cannot(tiny_byte_model_dir):
    """RL prompts were the messages alone: a template that renders tools itself lost each row's."""
    from tunesmith.train.rl import rl_rows
    from tunesmith.train.sft import TrainConfigError

    row = {"messages": CONVERSATION, "tools": [WEATHER]}
    (written,) = rl_rows([row], tokenizer_of(tiny_byte_model_dir))  # Hermes: written into the prompt
    assert "<tools>" in written["prompt"][0]["content"] and "<tool_call>" in written["prompt"][2]["content"]
    with pytest.raises(TrainConfigError, match="train row 1 offers tools"):
        rl_rows([row], tokenizer_of(tiny_byte_model_dir, TOOL_TEMPLATE))
    assert rl_rows([{"messages": [*CONVERSATION[:1], CONVERSATION[3]]}], tokenizer_of(tiny_byte_model_dir))


def test_the_likelihood_of_a_reference_call_is_taken_over_the_call(tiny_byte_model_dir, monkeypatch):
    """answer_nll rendered the whole conversation without its tools, so it no longer extended the
    prompt and fell back to the empty content: a call's likelihood was taken over nothing."""
    from tunesmith.models import generate

    seen = []
    monkeypatch.setattr(generate, "continuation_nll", lambda model, tok, pairs, **_: seen.extend(pairs) or [])
    generate.answer_nll(
        None, tokenizer_of(tiny_byte_model_dir), [{"messages": CONVERSATION[:2], "tools": [WEATHER]}]
    )
    ((prompt, answer),) = seen
    assert "<tools>" in prompt and answer.startswith('<tool_call>\n{"name": "get_weather"')


def test_feedback_keeps_the_calls_of_a_logged_conversation():
    from tunesmith.monitor.improve import request_messages

    kept = request_messages(CONVERSATION)
    assert kept[1]["tool_calls"] == [CALL] and kept[2]["tool_call_id"] == "c1"
    _chat(
        {"messages": [*kept, {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "Bye"}]}
    )


def test_a_request_that_forbade_calls_gives_rows_without_tools():
    """Under tool_choice none the server shows the model no tools: a row made from the request must
    not teach an answer under definitions the model never saw, nor read its text as calls."""
    from tunesmith.monitor.improve import request_tools, served_as
    from tunesmith.store import RequestLog

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    forbidden = RequestLog(params={"tools": [WEATHER], "tool_choice": "none"})
    assert request_tools(forbidden) == {} and "tool_calls" not in served_as(forbidden)(call)
    offered = RequestLog(params={"tools": [WEATHER], "tool_choice": "auto"})
    assert request_tools(offered) == {"tools": [WEATHER]} and served_as(offered)(call)["tool_calls"]


def test_calls_are_read_back_and_what_is_not_a_call_is_kept():
    parsed = parse_calls(
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    assert parsed.content == "Sure." and [(c.name, c.arguments) for c in parsed.calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    broken = parse_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>')
    assert broken.calls == [] and broken.invalid == 1 and "get_weather" in broken.content  # nothing lost
    cut = parse_calls('<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5}}')  # never closed
    assert cut.calls == [] and cut.invalid == 1
    bare = parse_calls('{"name": "set_timer", "parameters": {"minutes": 5}}')  # Llama 3.1's JSON
    assert [c.arguments for c in bare.calls] == [{"minutes": 5}]
    assert parse_calls('{"minutes": 5}').calls == []


def test_a_required_call_is_a_grammar_over_every_offered_tool():
    grammar = tool_grammar([WEATHER, TIMER])
    assert '"anyOf"' in grammar and '("\\n" block)*' in grammar  # either tool, several calls
    assert '("\\n" block)*' not in tool_grammar([TIMER], parallel=False)
    with pytest.raises(GrammarError, match="tools"):
        tool_grammar([{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}])


@settings(max_examples=200, deadline=None)
@given(
    before=st.text(alphabet=st.characters(blacklist_characters="<"), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=8),
)
def test_a_streamed_answer_splits_into_the_same_text_and_calls_however_it_arrives(before, cuts):
    text = before + '<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5}}\n</tool_call>'
    splitter, sent, last = CallSplitter(), "", 0
    for cut in [*sorted(c % (len(text) + 1) for c in cuts), len(text)]:
        sent += splitter.feed(text[last:cut])
        last = max(last, cut)
    parsed = splitter.finish()
    assert sent + parsed.content == before.strip() or (sent + parsed.content).strip() == before.strip()
    assert "<tool_" not in sent and [c.name for c in parsed.calls] == ["set_timer"]


def test_eval_scores_calls_by_name_arguments_json_and_schema():
    item = {
        "messages": [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
                ],
            },
        ],
        "tools": [WEATHER, TIMER],
    }
    chat = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
        "tools": [WEATHER],
    }

    def call(arguments: str, name: str = "get_weather") -> str:
        return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'

    answers = [
        call('{"city": "Paris", "unit": "celsius"}'),  # exact
        call('{"city": "paris"}'),  # the default left out, case differs: runs, not exact
        call('{"city": "Paris", "unit": "kelvin"}'),  # outside the enum
        call('{"city": "Paris", "when": "now"}'),  # an unknown parameter
        call('{"minutes": 5}', "set_timer"),  # the wrong function
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',  # not JSON
        "It is sunny.",  # no call
        "Hello!",  # the chat item, rightly no call
    ]
    items = [item] * 7 + [chat]
    scores = {
        name: get_metric(name).compute(answers, [""] * 8, items)[1][:, 0].tolist()
        for name in ("tool_name", "tool_args", "tool_ast")
    }
    assert scores["tool_name"] == [1, 1, 1, 1, 0, 0, 0, 1]
    assert scores["tool_args"] == [1, 0, 0, 0, 0, 0, 0, 1]
    assert scores["tool_ast"] == [1, 1, 0, 0, 0, 0, 0, 0]  # the chat item expects no call: not counted

    def value(name: str, outputs: list[str] = answers) -> float:
        return get_metric(name).compute(outputs, [""] * len(outputs), items)[0]

    assert value("tool_ast") == pytest.approx(2 / 7)  # of the seven items that expect a call
    assert value("tool_json") == pytest.approx(5 / 6)  # five of six attempted calls are valid JSON
    assert value("tool_abstain") == 1.0  # the one item that expects no call got none
    assert value("tool_abstain", [*answers[:7], answers[0]]) == 0.0
    choice = default_metrics("generation", [item, chat])
    assert choice.metrics[0] == "tool_ast" and "offer tools" in (choice.reason or "")


@pytest.fixture(scope="module")
def tool_server_project(tmp_path_factory, tiny_byte_model_dir):
    from tunesmith.config import load_config
    from tunesmith.pipeline import write_demo_project
    from tunesmith.train.run import train

    root = tmp_path_factory.mktemp("tools-serve")
    config_path = write_demo_project(root)
    settings_ = [f"model.id={tiny_byte_model_dir}", "train.method=lora", "train.max_steps=2"]
    settings_ += ["train.save_strategy=no", "train.forgetting.probe=false", "serve.auth=none"]
    settings_ += ["serve.backend=transformers"]
    family = train(load_config(config_path, settings_)).version.name
    return config_path, [*settings_, f"serve.models=[{family}]"], family


def test_the_server_returns_tool_calls_in_openais_format(tool_server_project):
    """tool_choice required or a named function holds even the tiny random model to a valid call
    (the grammar follows each tool's schema); auto leaves it free; the conversation can carry the
    calls and the tool's answers back."""
    from tunesmith.config import load_config
    from tunesmith.serve import serve_in_background as running

    config_path, settings_, family = tool_server_project
    ask = [{"role": "user", "content": "Set a timer for five minutes."}]
    with running(load_config(config_path, settings_)) as (url, _):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        forced = api.chat.completions.create(
            model=family,
            messages=ask,
            tools=[MINUTES],
            tool_choice="required",
            max_tokens=75,
            temperature=1.0,
            seed=1,
            parallel_tool_calls=False,
        )
        choice = forced.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (made,) = choice.message.tool_calls
        assert made.type == "function" and made.id.startswith("call_")
        arguments = json.loads(made.function.arguments)
        assert arguments == {} if made.function.name == "stop" else 1 <= arguments["minutes"] <= 60
        set_timer = {
            "model": family,
            "messages": ask,
            "tools": [MINUTES],
            "tool_choice": {"type": "function", "function": {"name": "set_timer"}},
            "max_tokens": 75,
            "temperature": 0,
        }
        named = api.chat.completions.create(**set_timer)
        timer = named.choices[0].message.tool_calls[0]
        assert timer.function.name == "set_timer" and isinstance(
            json.loads(timer.function.arguments)["minutes"], int
        )
        chunks = list(api.chat.completions.create(**set_timer, stream=True))
        streamed = [c.choices[0] for c in chunks if c.choices]
        (delta_call,) = [d for c in streamed for d in c.delta.tool_calls or []]
        assert delta_call.function.name == "set_timer" and streamed[-1].finish_reason == "tool_calls"
        assert json.loads(delta_call.function.arguments) == json.loads(timer.function.arguments)
        assert not "".join(c.delta.content or "" for c in streamed)  # the call is not sent as text
        follow = api.chat.completions.create(
            model=family,
            messages=[
                *ask,
                {"role": "assistant", "content": None, "tool_calls": [timer.model_dump()]},
                {"role": "tool", "tool_call_id": timer.id, "content": '{"ok": true}'},
            ],
            max_tokens=8,  # no tools offered this time: the calls in the conversation are still written in
        )
        assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
        free = api.chat.completions.create(
            model=family, messages=ask, tools=[MINUTES], max_tokens=8, temperature=0
        )
        assert free.choices[0].finish_reason in ("stop", "length", "tool_calls")  # auto: the model decides
        for bad, match in (
            (
                {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
                "not one of the request's tools",
            ),
            ({"tool_choice": "required", "tools": None}, "tool_choice needs `tools`"),
        ):
            kwargs = {"tools": [MINUTES], **bad}
            with pytest.raises(openai.BadRequestError, match=match):
                api.chat.completions.create(model=family, messages=ask, max_tokens=4, **kwargs)
        with pytest.raises(openai.BadRequestError, match="answers no call"):
            api.chat.completions.create(
                model=family,
                messages=[
                    *ask,
                    {"role": "assistant", "content": None, "tool_calls": [timer.model_dump()]},
                    {"role": "tool", "tool_call_id": "other", "content": "{}"},
                ],
                max_tokens=4,
            )
        with pytest.raises(openai.BadRequestError, match="tools"):
            api.completions.create(model=family, prompt="x", max_tokens=4, extra_body={"tools": [MINUTES]})


def test_production_answers_that_call_tools_come_back_as_calls_in_the_next_dataset(tool_server_project):
    """A served answer that called a tool, rated down and corrected with another call, becomes SFT
    and preference rows that hold the calls as tool_calls and the tools offered, and a feedback
    session over production keeps them so too: DPO then trains on the prompt with its tool
    definitions and on each answer's call as the template writes calls. (They were raw `<tool_call>`
    text under a prompt that offered no tools.)"""
    import httpx2 as httpx  # the HTTP client the openai package ships with

    from tunesmith.config import load_config
    from tunesmith.data.formats import _preference
    from tunesmith.feedback.collect import Sampling, Session, collect, gather_prompts, preference_pairs
    from tunesmith.monitor.improve import Selection, select_examples
    from tunesmith.registry import get_version
    from tunesmith.serve import serve_in_background as running
    from tunesmith.train.preference import preference_rows
    from tunesmith.workspace import open_workspace

    config_path, settings_, family = tool_server_project
    config = load_config(config_path, settings_)
    ask = [{"role": "user", "content": "Set a timer for five minutes."}]
    correction = '<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5}}\n</tool_call>'
    with running(config) as (url, server):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = api.chat.completions.create(
            model=family, messages=ask, tools=[MINUTES], tool_choice="required", max_tokens=75, temperature=0
        )
        (made,) = answer.choices[0].message.tool_calls
        for feedback in ({"rating": "down"}, {"correction": correction}):
            given = httpx.post(f"{url}/v1/feedback", json={"request_id": answer.id, **feedback})
            assert given.status_code == 200, given.text
        server.request_log.flush()
    workspace = open_workspace(config)
    version = get_version(workspace, family)
    found = select_examples(workspace, version, Selection(model=family))
    request_id = "req-" + answer.id.removeprefix("chatcmpl-")  # the module's other tests asked too
    (sft,) = [r for r in found.sft if r["origin"]["request_id"] == request_id]
    assert sft["tools"] == [MINUTES] and sft["messages"][-1]["content"] is None
    assert sft["messages"][-1]["tool_calls"][0]["function"] == {
        "name": "set_timer",
        "arguments": '{"minutes": 5}',
    }
    (pair,) = [r for r in found.dpo if r["origin"].get("request_id") == request_id]
    (served,) = pair["rejected"][0]["tool_calls"]
    assert served["function"]["name"] == made.function.name
    assert json.loads(served["function"]["arguments"]) == json.loads(made.function.arguments)

    tokenizer = tokenizer_of(Path(config.model.id))
    (row,) = preference_rows([_preference(pair)], tokenizer)
    assert "<tools>" in row["prompt"][0]["content"] and '"set_timer"' in row["prompt"][0]["content"]
    assert row["chosen"][-1]["content"] == correction

    prompts, _ = gather_prompts(workspace, family, from_production=True)
    session = collect(workspace, family, prompts, Sampling(k=2, max_new_tokens=8), "production")
    (item,) = [i for i in session.items if i["source"]["request_id"] == request_id]
    assert item["tools"] == [MINUTES]
    served_candidate = next(c for c in item["candidates"] if c["origin"] == "served")
    assert served_candidate["message"]["tool_calls"][0]["function"]["name"] == made.function.name
    other = next(c["id"] for c in item["candidates"] if c["origin"] == "sampled")
    session.add_review({"item": item["id"], "reviewer": "ana", "ranking": [other, "served"]})
    pairs = list(preference_pairs(Session(session.folder, session.meta, session.items)))
    (preferred,) = [p for p in pairs if p["origin"]["rejected"] == "served"]
    assert preferred["tools"] == [MINUTES] and preferred["rejected"] == [served_candidate["message"]]


@pytest.mark.slow
def test_the_bundled_model_learns_to_call_tools_and_the_server_returns_its_calls(tmp_path):
    """SmolLM2-135M-Instruct, whose template knows no tools and which never writes a call (the
    README's figure: tool_json 0 for the base model), trained 16 steps on the example tool-calling
    set: its calls are valid and right on held-out requests, it leaves the tools alone where no call
    is needed, and the served version answers with OpenAI's tool_calls."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from tool_results import run

    metrics = "eval.metrics=[tool_ast, tool_abstain, tool_name, tool_json]"  # no perplexity: not needed here
    extra = ("train.max_steps=16", "eval.max_items=16", "eval.max_new_tokens=64", metrics)
    result = run(tmp_path, minutes=None, extra=extra, ask=6, compare=())
    tuned = result["scores"][result["version"]]
    assert tuned["tool_ast"]["value"] >= 0.3 and tuned["tool_json"]["value"] >= 0.5, result
    assert tuned["tool_name"]["value"] >= 0.5 and tuned["tool_abstain"]["value"] >= 0.75, result
    served = result["served"]
    assert served["answered_with_calls"] >= 2 and served["as_expected"] >= served["asked"] // 2, result


def test_reports_and_the_judge_see_the_users_question_and_a_call_as_the_model_writes_it(
    tmp_path,
):
    from tunesmith.evaluate import EvalResult, write_answers

    written = tmp_path / "answers.jsonl"
    items = [{"messages": CONVERSATION}, {"messages": CONVERSATION[:2]}]  # ...and one answered by a call
    write_answers(written, items, [EvalResult("v1", ["It is 21.", "?"], [{}, {}], {})])
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert rows[0]["question"] == "Weather in Paris?" and rows[0]["reference"] == "It is 21 degrees in Paris."
    assert rows[1]["reference"] == written_answer(CONVERSATION[1])  # the call, as the model writes it
    assert parse_calls(rows[1]["reference"]).calls[0].name == "get_weather"
    assert asked(CONVERSATION) == "Weather in Paris?"  # what eval's judge and per-item report show
