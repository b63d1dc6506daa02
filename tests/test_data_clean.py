from collections import Counter

import pytest

from tunesmith.data.clean import (
    NearDuplicateIndex,
    collapse_whitespace,
    dedup_key,
    normalise_text,
    scrub_pii,
    strip_html,
)


def test_normalise_text_keeps_meaning():
    assert (
        normalise_text("\n\nCafe\u0301\u200b  ok\r\n\n\n\nnext\x07 line  \n") == "Café  ok\n\n\n\nnext line"
    )
    code = "    def f(x):\n\tif x:\n        return [\n            1,\n        ]"
    assert normalise_text(code) == code  # indentation, tabs and newlines are the code
    table = "| a | b |\n|---|---|\n| 1 |   |\n\n- item\n  - nested: value"
    assert normalise_text(table) == table
    persian, family = "می\u200cخواهم", "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert normalise_text(f"{persian} {family}") == f"{persian} {family}"  # ZWNJ and ZWJ stay


def test_collapsing_whitespace_is_opt_in_and_never_touches_code_blocks():
    text = "a   b  \n\n\n\n c\n```python\ndef f():\n    return  1\n```\n  d"
    assert collapse_whitespace(text) == "a b\n\nc\n```python\ndef f():\n    return  1\n```\nd"


def test_strip_html():
    assert strip_html("<p>Hi &amp; <b>bye</b></p><script>x=1</script>").split() == ["Hi", "&", "bye"]
    assert strip_html("<p>one</p><p>two<br>three</p>") == "one\ntwo\nthree"
    assert strip_html("if x < 5 and y > 3: pass") == "if x < 5 and y > 3: pass"  # not markup


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("mail jane.doe@example.com now", "mail [EMAIL] now", "EMAIL"),
        ("call +1 415-555-0132", "call [PHONE]", "PHONE"),
        ("call (020) 7946 0958", "call [PHONE]", "PHONE"),
        ("card 4111 1111 1111 1111", "card [CREDIT_CARD]", "CREDIT_CARD"),
        ("iban DE89 3704 0044 0532 0130 00", "iban [IBAN]", "IBAN"),
        ("ssn 123-45-6789", "ssn [US_SSN]", "US_SSN"),
        ("ip 192.168.1.20", "ip [IP_ADDRESS]", "IP_ADDRESS"),
    ],
)
def test_pii_is_replaced_by_typed_placeholders(text, expected, kind):
    counts: Counter[str] = Counter()
    assert scrub_pii(text, counts) == expected
    assert counts == {kind: 1}


@pytest.mark.parametrize(
    "text",
    [
        "order 113542617735902 shipped",  # passes Luhn, but no card issuer starts with 1
        "version 999.1.1.1",
        "years 2019 2020 2021",
        "scores 6 92 55 27 41 16 83",
        "costs $39.99 on 2024-05-01",
    ],
)
def test_pii_look_alikes_are_left_alone(text):
    counts: Counter[str] = Counter()
    assert scrub_pii(text, counts) == text
    assert not counts


def test_pii_keep_and_type_selection():
    counts: Counter[str] = Counter()
    text = "write help@fernwick.example or bob@x.org, call +47 555 0199"
    assert (
        scrub_pii(text, counts, keep=["help@fernwick.example"])
        == "write help@fernwick.example or [EMAIL], call [PHONE]"
    )
    assert (
        scrub_pii(text, Counter(), types=["PHONE"])
        == "write help@fernwick.example or bob@x.org, call [PHONE]"
    )


def test_dedup_key_ignores_only_case_and_whitespace_runs():
    assert dedup_key("Hello  \n World") == dedup_key("hello world")
    assert dedup_key("hello world") != dedup_key("hello there world")
    assert dedup_key("2+2") != dedup_key("2*2") and dedup_key("x < 5") != dedup_key("x > 5")
    assert dedup_key("Hello, world!") != dedup_key("hello world")


def test_near_duplicates_pass_the_threshold_and_others_do_not():
    index = NearDuplicateIndex(threshold=0.7)
    a, b, c = index.minhashes(
        [
            "how do i reset the password of my online banking account please",
            "how do i reset the password of my online banking account please now",
            "what is the weather like in oslo today",
        ]
    )
    index.add("a", a)
    assert [key for key, _ in index.query(b)] == ["a"]
    assert index.query(c) == []


def test_pii_precision_and_recall_on_a_labelled_set():
    """204 strings written for this test: emails, phones of ten countries, IPv4/IPv6, cards, IBANs,
    SSNs, and look-alikes that are not personal (versions, order and ticket numbers, dates, SKUs)."""
    import json
    from pathlib import Path

    rows = [
        json.loads(line)
        for line in (Path(__file__).parent / "data" / "pii_labelled.jsonl").read_text().splitlines()
    ]
    assert len(rows) >= 200 and sum(not r["pii"] for r in rows) >= 60
    tp = fp = fn = 0
    for row in rows:
        counts: Counter[str] = Counter()
        scrub_pii(row["text"], counts)
        expected, found = set(row["pii"]), set(counts)
        tp, fp, fn = tp + len(expected & found), fp + len(found - expected), fn + len(expected - found)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision >= 0.95 and recall >= 0.90, (precision, recall)


def test_version_and_order_numbers_are_not_pii():
    for text in ("upgrade to version 1.2.3.4 today", "order 1234 5678 9012 shipped"):
        counts: Counter[str] = Counter()
        assert scrub_pii(text, counts) == text and not counts
