"""Every assistant turn of a conversation trains, as the model's chat template renders it."""

from __future__ import annotations

from transformers import AutoTokenizer

from tunesmith.train.sft import training_rows
from tunesmith.train.turns import assistant_spans

CONVERSATION = [
    {"role": "system", "content": "You are the Fernwick support desk."},
    {"role": "user", "content": "When does the store open?"},
    {"role": "assistant", "content": "The store opens at nine."},
    {"role": "user", "content": "And on Sunday?"},
    {"role": "assistant", "content": "On Sunday it opens at ten."},
    {"role": "user", "content": "Thanks."},
    {"role": "assistant", "content": "You are welcome."},
]


def trained_spans(row: dict, tokenizer) -> list[str]:
    """The decoded runs of tokens the loss falls on."""
    spans, current = [], []
    for token, on in zip(row["input_ids"], row["assistant_masks"], strict=True):
        if on:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_every_assistant_turn_trains_and_a_weight_zero_turn_does_not(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (row,) = training_rows("sft", [{"messages": CONVERSATION}], tokenizer)
    spans = trained_spans(row, tokenizer)
    assert len(spans) == 3
    for span, answer in zip(
        spans, ("The store opens at nine.", "On Sunday it opens at ten.", "You are welcome."), strict=True
    ):
        words = tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"])
        assert span.startswith(words) and span.rstrip().endswith("<|im_end|>"), (
            span
        )  # the stop marker trains too
    text = tokenizer.decode(row["input_ids"])
    assert text.count("<|im_start|>") == 7  # the whole conversation is the input

    muted = [dict(m) for m in CONVERSATION]
    muted[4]["weight"] = 0  # a middle turn as context only
    muted[6]["weight"] = 0  # and the last one
    (row,) = training_rows("sft", [{"messages": muted}], tokenizer)
    (only,) = trained_spans(row, tokenizer)
    assert only.startswith(
        tokenizer.decode(tokenizer("The store opens at nine.", add_special_tokens=False)["input_ids"])
    )


def test_tools_and_tool_calls_reach_the_template(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% if tools %}<|im_start|>system\ntools: {{ tools | map(attribute='function.name') | join(',') }}"
        "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.tool_calls %}call {{ m.tool_calls[0].function.name }} "
        "{{ m.tool_calls[0].function.arguments | tojson }}"
        "{% else %}{{ m.content }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    call = {"type": "function", "function": {"name": "opening_hours", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "When does the store open?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "nine", "tool_call_id": "1"},
        {"role": "assistant", "content": "The store opens at nine."},
    ]
    tools = [{"type": "function", "function": {"name": "opening_hours"}}]
    text, spans = assistant_spans(messages, tokenizer, tools)
    assert text.startswith("<|im_start|>system\ntools: opening_hours<|im_end|>")
    assert [text[a:b] for a, b in spans] == [
        "call opening_hours {}<|im_end|>\n",
        "The store opens at nine.<|im_end|>\n",
    ]
    (row,) = training_rows("sft", [{"messages": messages, "tools": tools}], tokenizer)
    assert len(trained_spans(row, tokenizer)) == 2
