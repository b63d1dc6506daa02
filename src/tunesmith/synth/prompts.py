"""The prompts the teacher gets, each with a version that every row it produces carries, and the
parsers that read the teacher's replies back into pairs and paraphrases.

A prompt's version changes whenever its wording does, so rows written under an old prompt can be
told apart from new ones (and the reply cache, keyed by the prompt text, never mixes them up).
A prompt template of your own (`synth.prompt`) is versioned by the hash of its text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import InputError

QA_PROMPT = """Below is a passage from "{title}".

---
{passage}
---

Write {n} different questions that a reader of this material could ask, each followed by its answer.
Every question must be answerable from the passage alone, and every answer must use only facts
stated in the passage. Write each pair in exactly this format, with nothing else:

Question: <the question>
Answer: <the answer>"""

INSTRUCTION_PROMPT = """Below is a passage from "{title}".

---
{passage}
---

Write {n} different instructions that a user of this material could give (explain, summarise,
list, compare, give steps, ...), each followed by a response that carries it out. Every response
must use only facts stated in the passage. Write each pair in exactly this format, with nothing else:

Instruction: <the instruction>
Response: <the response>"""

PARAPHRASE_PROMPT = """Rewrite the text below in {n} different ways. Each rewrite must keep exactly
the same meaning{keep}, and must read like something a person would write: change the wording and
the sentence structure, not the content. Do not answer it or comment on it. Write each rewrite on
its own line, starting with "Rewrite:".

Text:
{text}"""

BUILTIN = {
    "qa": ("qa-v1", QA_PROMPT, ("question", "q"), ("answer", "a")),
    "instruction": ("instruction-v1", INSTRUCTION_PROMPT, ("instruction",), ("response", "output")),
}
PARAPHRASE_VERSION = "paraphrase-v1"


class PromptError(InputError):
    """A prompt template that cannot be used."""


@dataclass(frozen=True)
class PairPrompt:
    """How to ask for pairs from a passage, and the labels the reply marks them with."""

    version: str
    template: str
    first: tuple[str, ...]  # labels of the prompt side: Question / Instruction
    second: tuple[str, ...]  # labels of the answer side: Answer / Response

    def render(self, passage: str, title: str, n: int) -> str:
        return self.template.replace("{passage}", passage).replace("{title}", title).replace("{n}", str(n))


def pair_prompt(style: str, custom: Path | None = None) -> PairPrompt:
    """The built-in prompt for `style`, or the template in `custom` (same reply labels as the style).

    Raises:
        PromptError: when the custom template cannot be read or has no `{passage}` placeholder.
    """
    version, template, first, second = BUILTIN[style]
    if custom is not None:
        try:
            template = custom.read_text(encoding="utf-8")
        except OSError as exc:
            raise PromptError(f"synth.prompt: cannot read {custom}: {exc.strerror}") from None
        if "{passage}" not in template:
            raise PromptError(
                f"synth.prompt: {custom} has no {{passage}} placeholder; the teacher must see the passage "
                "(placeholders: {passage}, {title}, {n})"
            )
        version = f"custom-{hashlib.sha256(template.encode()).hexdigest()[:10]}"
    return PairPrompt(version, template, first, second)


def paraphrase_prompt(text: str, n: int, label: str | None = None) -> str:
    keep = f', so that it would still be labelled "{label}"' if label is not None else ""
    return PARAPHRASE_PROMPT.format(n=n, keep=keep, text=text)


def _markers(labels: tuple[str, ...]) -> str:
    return "|".join(sorted((re.escape(label) for label in labels), key=len, reverse=True))


def parse_pairs(reply: str, prompt: PairPrompt) -> list[tuple[str, str]]:
    """(question, answer) pairs in a reply: `Question: ...` then `Answer: ...`, numbered or in bold or not."""
    marker = re.compile(
        rf"^[ \t>*#\-]*(?:\d+[.)]\s*)?\**\s*(?P<label>{_markers(prompt.first)}|{_markers(prompt.second)})"
        rf"\s*\d*\s*\**\s*[:：]\**[ \t]*",
        re.IGNORECASE | re.MULTILINE,
    )
    found = list(marker.finditer(reply))
    second = {label.lower() for label in prompt.second}
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for index, match in enumerate(found):
        end = found[index + 1].start() if index + 1 < len(found) else len(reply)
        body = reply[match.end() : end].strip().strip("*").strip()
        if match.group("label").lower() in second:
            if pending and body:
                pairs.append((pending, body))
            pending = None
        else:
            pending = body or None
    return pairs


_REWRITE = re.compile(r"^[ \t>*\-]*(?:\d+[.)]\s*)?\**\s*rewrite\s*\d*\s*\**\s*[:：]\**[ \t]*", re.I | re.M)
_NUMBERED = re.compile(r"^[ \t]*\d+[.)][ \t]+", re.M)


def parse_paraphrases(reply: str) -> list[str]:
    """The rewrites in a reply: lines marked `Rewrite:` (or, failing that, a numbered list)."""
    found = list(_REWRITE.finditer(reply)) or list(_NUMBERED.finditer(reply))
    out = []
    for index, match in enumerate(found):
        end = found[index + 1].start() if index + 1 < len(found) else len(reply)
        text = reply[match.end() : end].strip().strip('"').strip()
        if text:
            out.append(text)
    return out
