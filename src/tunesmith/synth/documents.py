"""Domain documents for synthetic data: plain text, Markdown, HTML and PDF, read and chunked.

Chunks are cut by `semchunk` at the most meaningful boundary that keeps them under the token
budget (blank lines, then lines, then sentences, then words), with an overlap so a fact at a
boundary is whole in one of the two chunks. Each chunk remembers its document, its position and
the heading it sits under, so every synthetic row can be traced back to the passage it came from.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from tunesmith.data.sources import ReadResult, SourceError, decode_text

DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


@dataclass
class Document:
    """One source document as text, with what is needed to cite it."""

    path: str
    name: str  # the path under the folder that was read: what chunk ids and rows cite
    title: str
    text: str
    sha256: str
    pages: int | None = None


@dataclass
class Chunk:
    """A passage of a document: what the teacher reads and every row it writes is grounded in."""

    id: str  # `<document>#<index>`
    document: str
    index: int
    text: str
    heading: str | None
    start: int  # character offsets in the document's text
    end: int

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "document": self.document,
            "index": self.index,
            "heading": self.heading,
            "start": self.start,
            "end": self.end,
            "text": self.text,
        }


@dataclass
class ReadDocuments:
    documents: list[Document] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # files skipped or read with a fallback, and why


def read_documents(ref: str, base_dir: Path | None = None) -> ReadDocuments:
    """Every document under `ref`: a file, a folder (searched recursively) or a glob.

    Raises:
        SourceError: when `ref` names nothing readable, or a named file has an unsupported type.
    """
    path = Path(ref).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    out = ReadDocuments()
    if any(ch in ref for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())  # noqa: PTH207
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        if path.suffix.lower() not in DOCUMENT_SUFFIXES:
            raise SourceError(
                f"{path}: cannot read {path.suffix or 'a file without a suffix'} as a document; "
                f"supported: {', '.join(DOCUMENT_SUFFIXES)}"
            )
        files = [path]
    else:
        raise SourceError(f"{path}: no such file or folder (--from)")
    root = path if path.is_dir() else Path(os.path.commonpath([f.parent for f in files])) if files else path
    for file in files:
        if file.suffix.lower() not in DOCUMENT_SUFFIXES:
            out.notes.append(f"{file}: skipped, not a document type ({', '.join(DOCUMENT_SUFFIXES)})")
            continue
        document = read_document(file, out.notes, file.relative_to(root).as_posix())
        if document is None:
            continue
        if not document.text.strip():
            out.notes.append(f"{file}: skipped, no text in it (a scanned PDF needs OCR first)")
            continue
        out.documents.append(document)
    if not out.documents:
        detail = f" ({'; '.join(out.notes[:3])})" if out.notes else ""
        raise SourceError(f"{path}: no readable document{detail}")
    return out


def read_document(path: Path, notes: list[str], name: str | None = None) -> Document | None:
    """One document's text by its type; None (with a note) when the file cannot be read."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    suffix = path.suffix.lower()
    pages = None
    if suffix == ".pdf":
        try:
            text, pages = _pdf_text(path)
        except Exception as exc:  # pypdf raises many kinds for broken files; the note says which
            notes.append(f"{path}: skipped, not a readable PDF ({type(exc).__name__}: {exc})")
            return None
        title = path.stem
    else:
        result = ReadResult()
        text = decode_text(path, data, result)
        notes.extend(result.notes)
        if suffix in (".html", ".htm"):
            title, text = html_text(text)
            title = title or path.stem
        else:
            heading = _HEADING.search(text)
            title = heading.group(2) if heading and suffix in (".md", ".markdown") else path.stem
    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n"))
    return Document(
        str(path), name or path.name, title, re.sub(r"\n{3,}", "\n\n", text).strip(), digest, pages
    )


def _pdf_text(path: Path) -> tuple[str, int]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages), len(reader.pages)


_BLOCKS = ("p", "div", "section", "article", "li", "tr", "pre", "blockquote", "table", "ul", "ol", "br")


def html_text(markup: str) -> tuple[str, str]:
    """(title, text) of an HTML page: scripts, styles and page furniture dropped, headings as Markdown."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "aside", "form", "template"]):
        tag.decompose()
    for level in range(1, 7):
        for tag in soup.find_all(f"h{level}"):
            tag.replace_with(f"\n\n{'#' * level} {tag.get_text(' ', strip=True)}\n\n")
    for block in soup.find_all(_BLOCKS):
        block.insert_before("\n\n" if block.name != "br" else "\n")
    text = soup.body.get_text("") if soup.body else soup.get_text("")
    lines = [re.sub(r"\s+", " ", line).strip() for line in text.split("\n")]
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    if not title:
        first = _HEADING.search(body)
        title = first.group(2) if first else ""
    return title, body


def chunk_documents(
    documents: list[Document],
    count_tokens: Callable[[str], int],
    chunk_tokens: int,
    overlap: int,
) -> list[Chunk]:
    """Every document cut into passages of at most `chunk_tokens` tokens, overlapping by `overlap`."""
    import semchunk

    chunker = semchunk.chunkerify(count_tokens, chunk_tokens)
    chunks: list[Chunk] = []
    for document in documents:
        pieces, offsets = cast(
            "tuple[list[str], list[tuple[int, int]]]",
            chunker(document.text, offsets=True, overlap=min(overlap, chunk_tokens // 2) or None),
        )
        headings = [(m.start(), m.group(2)) for m in _HEADING.finditer(document.text)]
        for index, (piece, (start, end)) in enumerate(zip(pieces, offsets, strict=True)):
            if not piece.strip():
                continue
            heading = next((h for pos, h in reversed(headings) if pos <= start), None)
            chunks.append(Chunk(f"{document.name}#{index}", document.name, index, piece, heading, start, end))
    return chunks
