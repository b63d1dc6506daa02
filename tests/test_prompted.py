"""A classifier's task asked of the base LM: labels scored as answers, the context run once."""

import pytest

from tunesmith.evaluate.prompted import INSTRUCTION, as_chat, instruction, prompted_labels
from tunesmith.models import load_causal_lm
from tunesmith.models.generate import choices_nll, continuation_nll, render_prompt


def test_scoring_choices_after_one_shared_context_equals_scoring_each_pair(tiny_model_dir):
    base = load_causal_lm(str(tiny_model_dir))
    context = render_prompt(base.tokenizer, as_chat("the battery will not charge", ""))
    labels = ["hardware<|im_end|>", "billing<|im_end|>", "a much longer label name<|im_end|>", "x"]
    shared = choices_nll(base.model, base.tokenizer, context, labels, batch_size=3)
    each = continuation_nll(base.model, base.tokenizer, [(context, label) for label in labels])
    for (a, n), (b, m) in zip(shared, each, strict=True):
        assert n == m and a == pytest.approx(b, rel=1e-4, abs=1e-4)


def test_prompted_labels_pick_the_likeliest_label_per_character(tiny_model_dir):
    base = load_causal_lm(str(tiny_model_dir))
    items = [{"text": "the battery will not charge"}, {"text": "refund my invoice"}]
    labels = ["hardware", "billing"]
    shots = [{"text": "solar charger broke", "label": "hardware"}]
    predicted = prompted_labels(base.model, base.tokenizer, items, labels, shots)
    assert len(predicted) == 2 and set(predicted) <= set(labels)
    system = instruction(labels)
    for item, chosen in zip(items, predicted, strict=True):
        context = render_prompt(
            base.tokenizer,
            as_chat(item["text"], "", system),
            [as_chat(s["text"], s["label"], system) for s in shots],
        )
        assert "one of these labels: hardware, billing." in context
        nll = continuation_nll(
            base.model, base.tokenizer, [(context, f"{name}<|im_end|>") for name in labels]
        )
        per_char = [-total / len(name) for (total, _), name in zip(nll, labels, strict=True)]
        assert chosen == labels[per_char.index(max(per_char))]


def test_the_instruction_lists_the_label_set_unless_it_is_too_long_to_read():
    # a 3-shot prompt over 77 intents otherwise answers with the shots' own labels
    assert instruction(["positive", "negative"]) == (
        "Label the text with one of these labels: positive, negative. Answer with the label only."
    )
    assert instruction([f"intent_number_{i}" for i in range(500)]) == INSTRUCTION
    assert instruction([]) == INSTRUCTION
