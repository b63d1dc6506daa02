import pytest

from tunesmith.data import formats


def chat(q, a, **meta):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **meta}


@pytest.mark.parametrize(
    ("row", "fmt", "kind_field"),
    [
        (chat("q", "a"), "chat", "messages"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            "sharegpt",
            "messages",
        ),
        ({"prompt": "q", "completion": "a"}, "prompt_completion", "messages"),
        ({"instruction": "q", "input": "", "output": "a"}, "alpaca", "messages"),
        ({"text": "great film", "label": "pos"}, "text_label", "label"),
        ({"prompt": "q", "chosen": "good", "rejected": "bad"}, "preference", "chosen"),
        ({"prompt": "q", "responses": ["a", "b", "c"], "ranks": [2, 1, 3]}, "ranking", "responses"),
        ({"text": "raw domain prose"}, "text", "text"),
        ({"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}, "tagging", "tags"),
    ],
)
def test_every_format_is_detected_and_converted(row, fmt, kind_field):
    assert formats.match_format(row) == fmt
    assert kind_field in formats.convert(row, fmt)


def test_sharegpt_roles_and_system_are_mapped():
    row = {
        "system": "be brief",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
    }
    messages = formats.convert(row, "sharegpt")["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]


def test_chat_keeps_weights_and_tools_and_checks_role_order():
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    record = formats.convert(row, "chat")
    assert record["messages"][1]["weight"] == 0 and record["tools"][0]["function"]["name"] == "f"
    bad = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    with pytest.raises(formats.RowError, match=r"messages\[1\]\.role: two user turns in a row"):
        formats.convert(bad, "chat")
    with pytest.raises(formats.RowError, match=r"messages\[1\]\.role: a system message may only come first"):
        formats.convert(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "chat",
        )
    with pytest.raises(formats.RowError, match=r"weight: expected 0 or 1"):
        formats.convert(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 3},
                ]
            },
            "chat",
        )


def test_preference_without_prompt_splits_at_the_last_shared_assistant_turn():
    chosen = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water and yeast."
    rejected = "\n\nHuman: How do I bake bread?\n\nAssistant: Buy some."
    prompt, good, bad = formats.split_shared_prompt(chosen, rejected)
    assert (
        prompt.endswith("\n\nAssistant:") and good == " Mix flour, water and yeast." and bad == " Buy some."
    )
    record = formats.convert({"chosen": chosen, "rejected": rejected}, "preference")
    assert record["prompt"] == prompt
    with pytest.raises(formats.RowError, match="identical"):
        formats.convert({"prompt": "q", "chosen": "same", "rejected": "same"}, "preference")


def test_rankings_expand_to_ordered_pairs_with_margins():
    record = formats.convert(
        {"prompt": "q", "responses": ["ok", "best", "worst"], "ranks": [2, 1, 3]}, "ranking"
    )
    pairs = formats.expand_rankings(record)
    assert {(p["chosen"], p["rejected"], p["margin"]) for p in pairs} == {
        ("best", "ok", 1.0),
        ("ok", "worst", 1.0),
        ("best", "worst", 2.0),
    }
    scored = formats.expand_rankings(
        formats.convert({"prompt": "q", "responses": ["a", "b"], "scores": [0.2, 0.9]}, "ranking")
    )
    assert scored[0]["chosen"] == "b" and scored[0]["margin"] == pytest.approx(0.7)


def test_tagging_needs_one_tag_per_token():
    with pytest.raises(formats.RowError, match=r"tags: expected one tag per token \(2\), got 1"):
        formats.convert({"tokens": ["a", "b"], "tags": ["O"]}, "tagging")


def test_detection_reports_confidence_and_mixes():
    rows = [chat("q", "a")] * 8 + [{"prompt": "q", "completion": "a"}] * 2
    detection = formats.detect_format(rows)
    assert detection.format == "chat" and detection.confidence == pytest.approx(0.8)
    assert detection.votes == {"chat": 8, "prompt_completion": 2}
    with pytest.raises(formats.RowError, match=r"fields seen: body, mood.*--map"):
        formats.detect_format([{"body": "x", "mood": "pos"}])


@pytest.mark.parametrize(
    ("row", "fmt", "columns"),
    [
        ({"sentence": "a fine film", "label": 1}, "text_label", {"text": "sentence"}),
        ({"text": "card not arrived", "category": "card_arrival"}, "text_label", {"label": "category"}),
        ({"Review": "dull", "Sentiment": "neg"}, "text_label", {"text": "Review", "label": "Sentiment"}),
        ({"question": "2+2?", "answer": "#### 4"}, "prompt_completion",
         {"prompt": "question", "completion": "answer"}),
        ({"dialogue": "#P1#: hi", "summary": "P1 greets.", "topic": "greeting"}, "prompt_completion",
         {"prompt": "dialogue", "completion": "summary"}),
        ({"instruction": "Cancel my order", "response": "Done.", "intent": "cancel_order"}, "alpaca",
         {"output": "response"}),
    ],
)  # fmt: skip
def test_common_column_names_are_read_as_the_fields_they_mean(row, fmt, columns):
    rows = [dict(row) for _ in range(3)] + [
        {**row, **{k: "other" for k in row if k.lower() in ("category", "sentiment")}}
    ]
    detection = formats.detect_format(rows)
    assert (detection.format, detection.columns) == (fmt, columns)
    assert (
        "columns read as" in detection.describe()
        and "data.columns or data.format overrides" in detection.describe()
    )
    assert formats.convert(formats.apply_mapping(row, detection.columns), fmt)


def test_a_column_is_read_as_a_label_only_when_its_values_look_like_classes():
    prose = [
        {"text": f"paragraph {i}", "category": f"a long free-text note number {i} about it"} for i in range(6)
    ]
    unique = [{"text": f"paragraph {i}", "category": f"c{i}"} for i in range(6)]
    for rows in (prose, unique):
        detection = formats.detect_format(rows)
        assert (detection.format, detection.columns) == ("text", {})
    assert (
        formats.detect_format([{"text": "x", "label": "a"}]).columns == {}
    )  # canonical names: nothing to read


def test_column_mapping_renames_odd_columns():
    row = formats.apply_mapping(
        {"content": "x", "sentiment": "pos"}, {"text": "content", "label": "sentiment"}
    )
    assert row == {"text": "x", "label": "pos"}
    assert formats.match_format(row) == "text_label"


def test_missing_required_field_names_it():
    with pytest.raises(formats.RowError, match="completion: missing"):
        formats.convert({"prompt": "q"}, "prompt_completion")
