"""Reasoning traces: detected in chat rows (`reasoning_content` or a leading <think> block), kept apart
from the answer, learned, masked or dropped by `data.reasoning`, and split off generated answers the
same way, streamed or not."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from transformers import AutoTokenizer
from typer.testing import CliRunner

from conftest import write_jsonl
from test_turns import trained_spans
from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.data.prepare import load_split, prepare_dataset
from tunesmith.reasoning import TraceSplitter, rejoin, split_answer
from tunesmith.train.sft import training_rows
from tunesmith.workspace import open_workspace

TRACE = "The store opens at nine on weekdays. Sunday is an hour later."
ROWS = [
    {  # the trace as a field, as OpenAI-compatible servers return it
        "messages": [
            {"role": "user", "content": f"When does the Fernwick store open on day {i}?"},
            {"role": "assistant", "reasoning_content": TRACE, "content": f"It opens at nine on day {i}."},
        ]
    }
    for i in range(12)
] + [
    {  # the trace written into the answer, as Qwen3 and R1 distillations write it
        "messages": [
            {"role": "user", "content": f"Is the Fernwick cafe open on holiday {i}?"},
            {
                "role": "assistant",
                "content": f"<think>\nHolidays follow the Sunday hours.\n</think>\n\nYes, from ten ({i}).",
            },
        ]
    }
    for i in range(12)
]
BROKEN = [
    {
        "messages": [
            {"role": "user", "content": "Twice?"},
            {"role": "assistant", "reasoning_content": "a", "content": "<think>b</think> c"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Unclosed?"},
            {"role": "assistant", "content": "<think>never closed"},
        ]
    },
]


def prepared(tmp_path, tiny_model_dir, policy: str):
    data = tmp_path / f"rows-{policy}.jsonl"
    write_jsonl(data, ROWS + BROKEN)
    config = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            f"model.id={tiny_model_dir}",
            f"data.path={data}",
            f"data.reasoning={policy}",
            "data.clean.near_dedup=false",
        ],
    )
    dataset, report = prepare_dataset(open_workspace(config), config.data, base_dir=config.base_dir)
    rows = [r for split in ("train", "val", "test") for r in load_split(dataset, split)]
    return rows, report


def test_traces_are_kept_apart_from_the_answer_and_counted(tmp_path, tiny_model_dir):
    rows, report = prepared(tmp_path, tiny_model_dir, "train")
    answers = [r["messages"][-1] for r in rows]
    assert len(rows) == len(ROWS)
    assert all(a["reasoning_content"] in (TRACE, "Holidays follow the Sunday hours.") for a in answers)
    assert not any("<think>" in a["content"] for a in answers)
    (step,) = [s for s in report.steps if s.name == "reasoning"]
    assert step.details == {"policy": "train", "rows_with_traces": len(ROWS), "traces": len(ROWS)}
    reasons = " ".join(r.reason for r in report.rejected)
    assert "the trace is given twice" in reasons and "never closed with </think>" in reasons


def test_drop_removes_the_traces_and_says_how_many(tmp_path, tiny_model_dir):
    rows, report = prepared(tmp_path, tiny_model_dir, "drop")
    assert rows and not any("reasoning_content" in m for r in rows for m in r["messages"])
    (step,) = [s for s in report.steps if s.name == "reasoning"]
    assert step.changed == len(ROWS) and step.details["policy"] == "drop"


def test_a_trace_trains_with_its_answer_or_is_masked_as_context(tiny_byte_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_byte_model_dir)
    row = {"messages": ROWS[0]["messages"]}
    (learned,) = training_rows("sft", [row], tokenizer, "train")
    (masked,) = training_rows("sft", [row], tokenizer, "mask")
    assert learned["input_ids"] == masked["input_ids"]  # the same text: the trace stays in context
    text = tokenizer.decode(learned["input_ids"])
    assert f"<think>\n{TRACE}\n</think>\n\nIt opens at nine on day 0." in text
    assert any(TRACE in span for span in trained_spans(learned, tokenizer))
    spans = trained_spans(masked, tokenizer)
    assert not any("think" in span or "weekdays" in span for span in spans)
    assert any("It opens at nine on day 0." in span for span in spans)


def test_generated_answers_are_split_the_same_way_whole_or_streamed():
    assert split_answer("<think>\nfirst, the hours\n</think>\n\nNine.") == ("first, the hours", "Nine.")
    assert split_answer("Nine, no thinking.") == (None, "Nine, no thinking.")
    assert split_answer("<think>cut off befo") == ("cut off befo", "")
    # and put together again, as `registry parity` rebuilds a server's reply
    assert rejoin(*split_answer("<think>\nfirst, the hours\n</think>\n\nNine.")) == (
        "<think>\nfirst, the hours\n</think>\n\nNine."
    )
    assert rejoin("cut off befo", "", cut=True) == "<think>\ncut off befo"
    assert rejoin(None, "Nine, no thinking.") == "Nine, no thinking."


@given(
    trace=st.text(min_size=0, max_size=30).filter(lambda t: "<" not in t),
    answer=st.text(min_size=0, max_size=30).filter(lambda t: "<" not in t),
    thinks=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=7), max_size=30),
)
# the blank after <think> arriving in a later piece than the marker is not the trace's either
@example(trace="\r0", answer="", thinks=True, cuts=[7, 1])
@example(trace="\nWhy?", answer="Because.", thinks=True, cuts=[7, 1, 1])
def test_a_streamed_answer_splits_as_the_whole_does(trace, answer, thinks, cuts):
    text = f"<think>\n{trace}\n</think>\n\n{answer}" if thinks else answer
    splitter, pieces, start = TraceSplitter(), [], 0
    for cut in [*cuts, len(text)]:
        pieces.append(splitter.feed(text[start : start + cut]))
        start += cut
        if start >= len(text):
            break
    pieces.append(splitter.flush())
    streamed = ("".join(p[0] for p in pieces), "".join(p[1] for p in pieces))
    whole_trace, whole_answer = split_answer(text)
    assert streamed == (whole_trace or "", whole_answer)


def test_rl_prompts_keep_the_traces_of_earlier_turns(tiny_byte_model_dir):
    from tunesmith.train.rl import rl_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_byte_model_dir)
    messages = [*ROWS[0]["messages"], {"role": "user", "content": "And tomorrow?"}]
    (row,) = rl_rows([{"messages": [*messages, {"role": "assistant", "content": "Nine too."}]}], tokenizer)
    assert row["prompt"][1]["content"].startswith(f"<think>\n{TRACE}\n</think>\n\n")
    assert row["reference"] == "Nine too."


def test_a_trace_a_client_sends_back_is_rendered_as_training_wrote_it(tiny_byte_model_dir):
    """The server's request schema dropped an assistant message's reasoning_content, so the
    conversation it rendered was not the one the model had written."""
    from tunesmith.chat import render_chat
    from tunesmith.serve.schemas import ChatCompletionRequest

    messages = [*ROWS[0]["messages"], {"role": "user", "content": "And tomorrow?"}]
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    records = [m.as_record() for m in body.messages]
    assert records[1]["reasoning_content"] == TRACE
    tokenizer = AutoTokenizer.from_pretrained(tiny_byte_model_dir)
    assert f"<think>\n{TRACE}\n</think>\n\n" in render_chat(tokenizer, records, add_generation_prompt=True)


@pytest.mark.slow
def test_a_version_that_learned_to_think_keeps_its_markers_on_every_engine(tmp_path):
    """The bundled model taught to think before it answers: eval scores the answer alone, the server
    returns the trace as reasoning_content, streamed the same, and the merged export, the GGUF under
    llama.cpp and the server answer as the version does, `<think>` markers and all. (Transformers
    serves it here, so that one llama.cpp runs at a time: the llama.cpp serving test checks serving
    the GGUF.)"""
    import openai

    from tunesmith.models.generate import generate_answers
    from tunesmith.pipeline import write_demo_project
    from tunesmith.registry.loading import load_row
    from tunesmith.serve import serve_in_background
    from tunesmith.train.run import train

    path = write_demo_project(tmp_path)
    data = tmp_path / "thinking.jsonl"
    questions = [f"Question {i}: when does the Fernwick branch number {i} open?" for i in range(48)]
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": f"<think>\n{TRACE}\n</think>\n\nIt opens at nine."},
                    ]
                }
            )
            + "\n"
            for q in questions
        ),
        encoding="utf-8",
    )
    settings = [f"data.path={data}", "train.max_steps=30", "train.lr=1e-3", "train.save_strategy=no"]
    settings += ["train.forgetting.probe=false", "serve.auth=none", "data.clean.near_dedup=false"]
    config = load_config(path, settings)
    version = train(config).version
    model, tokenizer = load_row(version, open_workspace(config))
    item = {
        "messages": [
            {"role": "user", "content": "When does the Fernwick branch open?"},
            {"role": "assistant", "content": "?"},
        ]
    }
    (answer,) = generate_answers(model, tokenizer, [item], max_new_tokens=40)
    assert "<think>" not in answer and "weekdays" not in answer  # eval scores the answer alone

    serving = [f"serve.models=[{version.name}]", "serve.backend=transformers"]
    with serve_in_background(load_config(path, [*settings, *serving])) as (url, _):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        question = [{"role": "user", "content": "When does the Fernwick branch open?"}]
        whole = api.chat.completions.create(
            model=version.name, messages=question, max_tokens=40, temperature=0
        )
        message = whole.choices[0].message
        assert "weekdays" in (message.reasoning_content or "") and "<think>" not in (message.content or "")
        chunks = list(
            api.chat.completions.create(
                model=version.name, messages=question, max_tokens=40, temperature=0, stream=True
            )
        )
        streamed = "".join(
            getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
        )
        assert streamed == message.reasoning_content
        asked = tmp_path / "asked.txt"  # its own kind of question: the locked set does not make it think
        own = [
            "When does the Fernwick branch open?",
            "Question 60: when does the Fernwick branch number 60 open?",
        ]
        asked.write_text("\n".join(own) + "\n")
        argv = ["registry", "parity", version.name, "--engines", "merged,gguf,server"]
        argv += ["--server", f"{url}/v1", "--prompts", str(asked), "--max-new-tokens", "32"]
        checked = CliRunner().invoke(app, [*argv, "--config", str(path)])
    assert checked.exit_code == 0, checked.output
    (written,) = (open_workspace(config).root / "parity").glob("*.json")
    report = json.loads(written.read_text())
    thought = [a.startswith("<think>\n") and "\n</think>\n\n" in a for a in report["answers"]]
    assert all(thought), report["answers"]  # it thinks first, and its answers keep both markers
    assert report["engines"]["merged"]["metrics"]["identical_answers"] == 1.0
    gguf = report["engines"]["gguf"]
    assert gguf["passed"] and gguf["answers"] == report["answers"], gguf
    assert all(
        a.startswith("<think>\n") and "\n</think>\n\n" in a for a in report["engines"]["server"]["answers"]
    )
