"""Test helpers for synthetic data: a PDF writer, and an OpenAI-compatible teacher whose 'model' is a rule.

The teacher runs under a real uvicorn on 127.0.0.1 and is called through the official `openai`
client, so everything between tunesmith and a hosted teacher is exercised except the hosted model.

Model `grounded`: for a passage, writes one pair per passage sentence, the answer being the
sentence itself, plus one pair whose answer invents a fact, one that changes a number of the
passage, one that denies a sentence of it, one that repeats an earlier pair, one with an e-mail
address in it, and one line that is not a pair. For a paraphrase request, rewrites the text by
swapping a few words for synonyms, adds a rewrite that only prepends a word, and one that changes
the topic. As a judge of faithfulness,
rates 5 a response that is a sentence of the passage and 2 any other.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

SYNONYMS = {
    "good": "fine",
    "bad": "poor",
    "great": "excellent",
    "movie": "film",
    "film": "picture",
    "how": "in what way",
}


def write_pdf(path: Path, lines: list[str]) -> None:
    """A one-page PDF with `lines` of Helvetica text (ASCII), readable by any PDF text extractor."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    content = "BT /F1 11 Tf 72 740 Td 14 TL " + " ".join(f"({escape(line)}) Tj T*" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)


def _passage(prompt: str) -> str:
    match = re.search(r"---\n(.*?)\n---", prompt, flags=re.S)
    return match.group(1) if match else ""


def judge_reply(prompt: str) -> str:
    """As a judge of faithfulness: 5 when the response is a sentence of the passage, 2 otherwise."""
    passage = re.search(r"\nPassage:\n(.*?)\nResponse:\n", prompt, flags=re.S)
    response = re.search(r"\nResponse:\n(.*?)\n\nRate the response", prompt, flags=re.S)
    if not passage or not response:
        return "3"
    return "5" if response.group(1).strip() in passage.group(1) else "2"


def grounded_reply(prompt: str) -> str:
    if "Rate the response from 1" in prompt:
        return judge_reply(prompt)
    if prompt.startswith("Rewrite the text below"):
        text = prompt.rsplit("Text:\n", 1)[1].strip()
        words = text.split()
        swapped = " ".join(SYNONYMS.get(w.lower(), w) for w in words)
        return "\n".join(
            [
                f"Rewrite: {swapped}",
                f"Rewrite: Honestly, {text[0].lower()}{text[1:]}",
                "Rewrite: The weather in Tromso is cold in winter.",
            ]
        )
    sentences = [
        s.strip()
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"^#+ .*$", "", _passage(prompt), flags=re.M))
        if len(s.split()) >= 4
    ]
    pairs = []
    for sentence in sentences:
        topic = " ".join(sentence.split()[:4]).rstrip(".,")
        pairs.append(f"Question: What does the passage say about {topic}?\nAnswer: {sentence}")
    if sentences:
        topic = " ".join(sentences[0].split()[:4]).rstrip(".,")
        pairs.append(f"Question: What does the passage say about {topic}?\nAnswer: {sentences[0]}")
        last = sentences[-1]  # close to the passage, but denies it: only the judge can tell
        claim = f"{last[0].lower()}{last[1:-1]}"
        pairs.append(f"Question: Is it really so that {claim}?\nAnswer: No, it is not so that {claim}.")
        numbered = next((x for x in sentences if re.search(r"\d", x)), None)
        if numbered:  # close to the passage, but with a number it never gives
            altered = re.sub(r"\d+", lambda m: str(int(m.group(0)) + 7), numbered)
            pairs.append(f"Question: Can you tell me the figure again, please?\nAnswer: {altered}")
        pairs.append(
            "Question: Who founded the company and when?\nAnswer: It was founded by Henrik Olsen in 1961."
        )
        pairs.append(
            "Question: How do I contact the support team?\n"
            "Answer: Write to the team at jane.doe@mail.example about it."
        )
    pairs.append("Here are some more thoughts about the passage.")
    return "\n\n".join(pairs)


def make_app(delay: float = 0.0) -> FastAPI:
    """The rule teacher; `delay` seconds per reply stands in for a slow hosted model."""
    app = FastAPI()
    app.state.calls = 0

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        if delay:
            await asyncio.sleep(delay)
        app.state.calls += 1
        text = grounded_reply(body["messages"][-1]["content"])
        return {
            "id": "teacher-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app
