"""Cleaning: normalise text, strip HTML, scrub PII, and find exact and near duplicates.

Each function works on canonical records and reports what it changed, so the data report can say
how many rows each step touched and why.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tunesmith.toolcalls import written_answer

# Control characters other than tab and newline (a carriage return ends a line: it becomes \n), and
# the invisible zero-width space, word joiner and byte-order mark. ZWJ and ZWNJ (U+200C, U+200D) are
# letters' business in Persian, Indic scripts and emoji sequences: they stay.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u2060\ufeff]")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


def normalise_text(text: str) -> str:
    """NFC, Unix line ends, no control characters but tab and newline, no blank lines before the
    first line or whitespace after the last. Indentation, inner spaces, newlines, ZWJ and ZWNJ stay:
    code, YAML, Markdown lists and tables, Persian and emoji mean what they meant."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def collapse_whitespace(text: str) -> str:
    """Opt-in (`data.clean.collapse_whitespace`): single spaces, no spaces at line ends, at most one
    blank line, trimmed; lines inside fenced code blocks (``` or ~~~) are left exactly as they are."""
    lines, in_code = [], False
    for line in text.split("\n"):
        fence = _FENCE.match(line)
        if in_code or fence:
            lines.append(line)
        else:
            lines.append(_SPACES.sub(" ", line).strip())
        if fence:
            in_code = not in_code
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


_BLOCKS = (
    "p",
    "div",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "table",
    "ul",
    "ol",
)


def strip_html(text: str) -> str:
    """The text of an HTML fragment, parsed by BeautifulSoup: tags and script/style bodies go,
    entities are decoded, block elements and <br> end lines. Text that is not markup ("x < 5") stays."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style"]):
        tag.decompose()
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_BLOCKS):
        tag.append("\n")
    return soup.get_text().strip("\n")


# --- PII -------------------------------------------------------------------------------------


def _luhn_ok(number: str) -> bool:
    """A card number: 13-19 digits, an issuer prefix (2-6: Mastercard, Amex, Visa, Discover...), Luhn."""
    digits = [int(d) for d in number if d.isdigit()]
    if not 13 <= len(digits) <= 19 or digits[0] not in (2, 3, 4, 5, 6):
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if i % 2 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return total % 10 == 0


def _iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(c, 36)) for c in rearranged)
    return int(digits) % 97 == 1


def _phone_ok(candidate: str) -> bool:
    """7-15 digits; without a `+` or `(area)` at least 10, and not a run of years (2019 2020 2021)."""
    digits = sum(c.isdigit() for c in candidate)
    if not 7 <= digits <= 15:
        return False
    if candidate.startswith(("+", "(")):
        return True
    groups = re.findall(r"\d+", candidate)
    return digits >= 10 and not all(len(g) == 4 and g[:2] in ("19", "20") for g in groups)


def _ip_ok(candidate: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


# Words that make the number after them an identifier of a thing, not of a person: "version
# 1.2.3.4", "order 1234 5678 9012", "ticket #2024 0051 7783".
_IDENTIFIER_BEFORE = re.compile(
    r"\b(?:version|release|build|patch|firmware|chapter|section|batch|schema|order|ticket|invoice|ref|"
    r"reference|tracking|serial|sku|part|model|catalog(?:ue)?|shipment|booking|voucher|customer|id|code|"
    r"document|case|item|isbn|no)\b[^\n]{0,24}$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PiiPattern:
    """One kind of personal data: how to find it, an optional check that rules out look-alikes, and
    whether an identifier word just before it ("order", "version") means it is not personal."""

    name: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    identifier_context: bool = False


PII_PATTERNS: tuple[PiiPattern, ...] = (
    PiiPattern("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")),
    PiiPattern("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), _iban_ok),
    PiiPattern("CREDIT_CARD", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _luhn_ok, identifier_context=True),
    PiiPattern("US_SSN", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")),
    PiiPattern(
        "IP_ADDRESS",
        re.compile(
            r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])|(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"
        ),
        _ip_ok,
        identifier_context=True,
    ),
    PiiPattern(
        "PHONE",
        re.compile(
            r"(?<![\w+#-])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,5}|\(\d{1,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
            r"|\d{2,4}[ .-]\d{3,4}[ .-]\d{3,4}|0\d{2,4}[ /-]\d{5,8})(?![\w-])"
        ),
        _phone_ok,
        identifier_context=True,
    ),
)


def scrub_pii(
    text: str, counts: Counter[str], types: Iterable[str] | None = None, keep: Iterable[str] = ()
) -> str:
    """Replace personal data with typed placeholders (`[EMAIL]`, `[PHONE]`, ...), counting each type.

    Patterns run in a fixed order (cards before phones) so a number is claimed by its most
    specific type; a placeholder is never matched again. Strings in `keep` (a company's own support
    address, say) are left as they are.
    """
    kept = [k for k in keep if k and k in text]
    for i, value in enumerate(kept):
        text = text.replace(value, f"\x00{i}\x00")
    text = _scrub(text, counts, set(types) if types is not None else None)
    for i, value in enumerate(kept):
        text = text.replace(f"\x00{i}\x00", value)
    return text


def _scrub(text: str, counts: Counter[str], wanted: set[str] | None) -> str:
    for pii in PII_PATTERNS:
        if wanted is not None and pii.name not in wanted:
            continue

        def replace(match: re.Match[str], pii: PiiPattern = pii, text: str = text) -> str:
            if pii.check is not None and not pii.check(match.group(0)):
                return match.group(0)
            if pii.identifier_context and _IDENTIFIER_BEFORE.search(
                text[max(0, match.start() - 40) : match.start()]
            ):
                return match.group(0)
            counts[pii.name] += 1
            return f"[{pii.name}]"

        text = pii.pattern.sub(replace, text)
    return text


# --- record text -----------------------------------------------------------------------------


def map_texts(record: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """Apply `fn` to every piece of free text in a canonical record (not to labels or tags)."""
    out = dict(record)
    if "messages" in out:
        out["messages"] = [_map_message(m, fn) for m in out["messages"]]
    for key in ("text", "prompt", "chosen", "rejected", "completion"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = fn(value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out[key] = [{**m, "content": fn(m.get("content", ""))} for m in value]
    if "tokens" in out:
        out["tokens"] = [fn(t) or t for t in out["tokens"]]
    return out


def _map_message(message: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """`fn` on a message's content and on its reasoning trace, if it has one."""
    mapped = {**message, "content": fn(message["content"])}
    if message.get("reasoning_content"):
        mapped["reasoning_content"] = fn(message["reasoning_content"])
    return mapped


def _flatten(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_message_text(m) if isinstance(m, dict) else str(m) for m in value)
    return ""


def _message_text(message: dict[str, Any]) -> str:
    """A message as duplicates are judged: its trace and its tool calls count with its text."""
    text = written_answer(message) if message.get("tool_calls") else message.get("content", "")
    trace = message.get("reasoning_content")
    return f"{message.get('role', '')}: {f'<think>{trace}</think>' if trace else ''}{text}"


def record_text(record: dict[str, Any]) -> str:
    """All of a record's text in one string: what duplicates are judged on."""
    if "messages" in record:
        return _flatten(record["messages"])
    if "tokens" in record:
        return " ".join(record["tokens"])
    parts = [_flatten(record.get(key)) for key in ("prompt", "chosen", "rejected", "completion", "text")]
    return "\n".join(p for p in parts if p)


def prompt_text(record: dict[str, Any]) -> str:
    """What a model sees before it answers (the input side): what leakage is judged on."""
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"][:-1] if m["role"] != "system")
    if "prompt" in record:
        return _flatten(record["prompt"])
    if "tokens" in record:
        return " ".join(record["tokens"])
    return str(record.get("text", ""))


def dedup_key(text: str) -> str:
    """Exact-duplicate key: case-folded, runs of whitespace as one space, trimmed. Punctuation and
    symbols count ("2+2" is not "2*2", "x < 5" is not "x > 5")."""
    folded = " ".join(text.casefold().split())
    return hashlib.blake2b(folded.encode(), digest_size=16).hexdigest()


# --- near duplicates -------------------------------------------------------------------------


@dataclass
class NearDuplicateIndex:
    """MinHash LSH over word shingles: finds rows whose Jaccard similarity passes `threshold`."""

    threshold: float = 0.85
    num_perm: int = 128
    shingle: int = 3
    _lsh: Any = None
    _hashes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from datasketch import MinHashLSH

        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)

    def shingles(self, text: str) -> set[bytes]:
        words = re.findall(r"\w+", text.casefold())
        if len(words) < self.shingle:
            return {" ".join(words).encode()} if words else set()
        return {" ".join(words[i : i + self.shingle]).encode() for i in range(len(words) - self.shingle + 1)}

    def minhashes(self, texts: list[str], label: str = "MinHash signatures") -> list[Any]:
        """One signature per text; a progress bar when there are enough texts to wait for (~30k/s).

        `MinHash.bulk` shares one set of permutations across a chunk: building them per signature
        cost seven times the hashing itself.
        """
        from datasketch import LeanMinHash, MinHash

        from tunesmith.progress import progress_bar

        out: list[Any] = []
        chunk = 2000
        with progress_bar(label, total=len(texts), show=len(texts) >= 20_000) as advance:
            for start in range(0, len(texts), chunk):
                shingled = [list(self.shingles(text)) or [b""] for text in texts[start : start + chunk]]
                out.extend(LeanMinHash(m) for m in MinHash.bulk(shingled, num_perm=self.num_perm))
                advance(len(shingled))
        return out

    def add(self, key: str, minhash: Any) -> None:
        self._lsh.insert(key, minhash)
        self._hashes[key] = minhash

    def query(self, minhash: Any) -> list[tuple[str, float]]:
        """Keys already added whose estimated Jaccard similarity to `minhash` passes the threshold."""
        found = []
        for key in self._lsh.query(minhash):
            similarity = float(self._hashes[key].jaccard(minhash))
            if similarity >= self.threshold:
                found.append((key, similarity))
        return sorted(found, key=lambda item: -item[1])
