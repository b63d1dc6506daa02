"""`tunesmith feedback`: reviewers rank a version's sampled answers, and the rankings become preference data.

1. `collect` samples k answers per prompt from a version. Prompts come from a file, from a dataset
   version's split, or from production: the request log of the served version, where the answer
   it served is one of the candidates (so a ranking says whether production's answer was good).
2. Reviewers rank the candidates (best first), or pick the best one, in the terminal, or in a
   self-contained HTML page they download their reviews from (`feedback import`). Candidates are
   shown in a shuffled order, labelled A, B, C..., so the position says nothing of their origin.
3. `dataset` turns every review into preference pairs: a ranking gives each better/worse pair with
   the rank gap as margin; a pick gives the best over each other. The pairs of one prompt share a
   group, so they land in one split, and the data stage stores them as a preference dataset version
   whose lineage names the session, the version, and the reviews.

A session lives in `feedback/SESSION/` in the workspace: `session.json`, `candidates.jsonl`,
`reviews.jsonl` (appended as each review is given, so a stopped review resumes where it stopped).
"""

from __future__ import annotations

import json
import random
import secrets
import string
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith.chat import answer_message, numbered_call_id
from tunesmith.config import ProjectConfig
from tunesmith.data.prompts import prompt_of_row, read_prompts
from tunesmith.errors import InputError
from tunesmith.progress import console
from tunesmith.store import DatasetVersion, ModelVersion, session
from tunesmith.toolcalls import written_answer
from tunesmith.workspace import Workspace

LETTERS = string.ascii_uppercase


class FeedbackError(InputError):
    """A prompt file, session or review that cannot be used: the message says where and what to do."""


@dataclass(frozen=True)
class Sampling:
    """How a session samples its answers: `k` per prompt, at this temperature and top-p, seeded."""

    k: int = 4
    max_new_tokens: int = 128
    temperature: float = 0.9
    top_p: float = 0.95
    seed: int = 0


@dataclass
class Session:
    """A collection session: its folder, settings, and candidate answers per prompt."""

    folder: Path
    meta: dict[str, Any]
    items: list[dict[str, Any]]

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def reviews_path(self) -> Path:
        return self.folder / "reviews.jsonl"

    def reviews(self) -> list[dict[str, Any]]:
        if not self.reviews_path.exists():
            return []
        return [
            json.loads(line) for line in self.reviews_path.read_text(encoding="utf-8").splitlines() if line
        ]

    def add_review(self, review: dict[str, Any]) -> None:
        with self.reviews_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(review, ensure_ascii=False) + "\n")

    def order(self, item: dict[str, Any]) -> list[str]:
        """The candidate ids in the order a reviewer sees them (shuffled per item, the same every time)."""
        ids = [c["id"] for c in item["candidates"]]
        random.Random(f"{self.id}:{item['id']}").shuffle(ids)
        return ids


# --- prompts ------------------------------------------------------------------------------------


def production_prompts(
    workspace: Workspace, version: ModelVersion, *, since: Any = None, where: list[str] | None = None
) -> list[dict[str, Any]]:
    """The version's served requests (filtered like `improve`), each with the answer it served."""
    from tunesmith.monitor.improve import (
        Selection,
        request_messages,
        request_tools,
        select_requests,
        served_as,
    )

    requests = select_requests(
        workspace, version, Selection(model=version.name, since=since, where=where or [])
    )
    return [
        {
            "prompt": request_messages(r.prompt),
            **request_tools(r),
            "served": str(r.output[0]),
            "served_message": served_as(r)(str(r.output[0])),  # as the client was sent it
            "source": {"request_id": r.id, "at": r.at.isoformat()},
        }
        for r in requests
        if r.output
    ]


# --- collect ------------------------------------------------------------------------------------


def sample_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, Any]]],
    sampling: Sampling,
    tools: list[list[dict[str, Any]] | None] | None = None,
    batch_size: int = 4,
) -> list[list[str]]:
    """`sampling.k` sampled answers per prompt (distinct where the model gives distinct ones), prompts
    batched; `tools`: the tools each prompt offers, rendered as training renders them."""
    import torch

    from tunesmith.chat import render_chat
    from tunesmith.models.generate import inference, stop_token_ids
    from tunesmith.progress import progress_bar

    k = sampling.k
    torch.manual_seed(sampling.seed)
    stops = stop_token_ids(tokenizer, model)
    offered = tools or [None] * len(prompts)
    texts = [  # as training renders
        render_chat(tokenizer, p, t, add_generation_prompt=True)
        for p, t in zip(prompts, offered, strict=True)
    ]
    answers: list[list[str]] = []
    with inference(model, tokenizer), progress_bar(f"Sampling {k} answers", total=len(prompts)) as advance:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            output = model.generate(
                **encoded,
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                num_return_sequences=k,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=stops or None,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = output[:, encoded["input_ids"].shape[1] :]
            decoded = [str(tokenizer.decode(t, skip_special_tokens=True)).strip() for t in new]
            for i in range(len(batch)):
                answers.append(list(dict.fromkeys(a for a in decoded[i * k : (i + 1) * k] if a)))
            advance(len(batch))
    return answers


def collect(
    workspace: Workspace,
    version_ref: str,
    prompts: list[dict[str, Any]],
    sampling: Sampling = Sampling(),
    source: str = "file",
) -> Session:
    """Sample `sampling.k` answers per prompt from a version (plus the served answer, for production
    prompts).

    Raises:
        FeedbackError: for no prompts, or k below 2.
    """
    from tunesmith.registry import get_version
    from tunesmith.registry.loading import load_row

    if sampling.k < 1 or (sampling.k < 2 and not any("served" in p for p in prompts)):
        raise FeedbackError("--k: a reviewer needs at least 2 answers to compare; use --k 2 or more")
    if not prompts:
        raise FeedbackError("no prompts to collect answers for")
    version = get_version(workspace, version_ref)
    model, tokenizer = load_row(version, workspace)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    sampled = sample_answers(
        model, tokenizer, [p["prompt"] for p in prompts], sampling, tools=[p.get("tools") for p in prompts]
    )
    session_id = f"fb-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    folder = workspace.root / "feedback" / session_id
    folder.mkdir(parents=True)
    items = review_items(prompts, sampled)
    meta = {
        "id": session_id,
        "version": version.name,
        "version_id": version.id,
        "source": source,
        "k": sampling.k,
        "sampling": {name: value for name, value in asdict(sampling).items() if name != "k"},
        "created": datetime.now(UTC).isoformat(),
        "prompts": len(prompts),
        "items": len(items),
    }
    _write(folder / "candidates.jsonl", "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    _write(folder / "session.json", json.dumps(meta, indent=2))
    session = Session(folder, meta, items)
    write_page(session)
    return session


def review_items(prompts: list[dict[str, Any]], sampled: list[list[str]]) -> list[dict[str, Any]]:
    """One item per prompt with two or more different answers to rank (the served one first). Each
    answer keeps the assistant message it stands for: its calls as tool_calls where tools were
    offered, as the server answers."""
    items = []
    for n, (prompt, answers) in enumerate(zip(prompts, sampled, strict=True)):
        calling = bool(prompt.get("tools"))
        candidates = []
        if "served" in prompt:
            served = prompt["served_message"]  # as the server sent it (production_prompts)
            candidates.append(
                {"id": "served", "text": prompt["served"], "message": served, "origin": "served"}
            )
        for answer in answers:
            if all(answer != c["text"] for c in candidates):
                message = answer_message(answer, calling, numbered_call_id)
                candidates.append(
                    {"id": f"s{len(candidates)}", "text": answer, "message": message, "origin": "sampled"}
                )
        if len(candidates) < 2:
            continue  # nothing to compare: every sample said the same
        items.append(
            {
                "id": f"p{n:04d}",
                "prompt": prompt["prompt"],
                **({"tools": prompt["tools"]} if prompt.get("tools") else {}),
                "candidates": candidates,
                "source": prompt.get("source", {}),
            }
        )
    return items


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def open_session(workspace: Workspace, session_id: str) -> Session:
    """A session by id (or the newest, for `latest`).

    Raises:
        FeedbackError: when there is no such session.
    """
    root = workspace.root / "feedback"
    if session_id == "latest":
        found = _session_folders(root)
        if not found:
            raise FeedbackError(
                "no feedback session yet; start one with `tunesmith feedback collect VERSION`"
            )
        folder = found[-1]
    else:
        folder = root / session_id
    if not (folder / "session.json").exists():
        raise FeedbackError(
            f"no feedback session {session_id!r} in {root}; `tunesmith feedback list` shows them"
        )
    meta = json.loads((folder / "session.json").read_text(encoding="utf-8"))
    items = [
        json.loads(line) for line in (folder / "candidates.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return Session(folder, meta, items)


def _session_folders(root: Path) -> list[Path]:
    """Session folders, oldest first by their recorded creation time (ids of one second tie)."""

    def created(folder: Path) -> tuple[str, str]:
        meta = json.loads((folder / "session.json").read_text(encoding="utf-8"))
        return str(meta.get("created", "")), folder.name

    folders = [p for p in root.glob("fb-*") if (p / "session.json").exists()] if root.exists() else []
    return sorted(folders, key=created)


def list_sessions(workspace: Workspace) -> list[dict[str, Any]]:
    sessions = []
    for folder in _session_folders(workspace.root / "feedback"):
        session = open_session(workspace, folder.name)
        reviewed = {r["item"] for r in session.reviews() if not r.get("skip")}
        sessions.append({**session.meta, "reviewed": len(reviewed), "folder": str(folder)})
    return sessions


# --- reviews ------------------------------------------------------------------------------------


def parse_answer(text: str, shown: list[str]) -> dict[str, Any]:
    """A reviewer's typed answer: `B A C` (a ranking, best first; unranked ones come last, tied),
    `B` (the best), `s` (skip).

    Raises:
        FeedbackError: for a letter that is not shown, or one given twice.
    """
    words = text.replace(",", " ").replace(">", " ").upper().split()
    if words in (["S"], ["SKIP"]):
        return {"skip": True}
    letters = [w for word in words for w in (word if len(word) > 1 and word.isalpha() else [word])]
    labels = {LETTERS[i]: cid for i, cid in enumerate(shown)}
    unknown = [x for x in letters if x not in labels]
    if not letters or unknown:
        raise FeedbackError(
            f"answer with letters {', '.join(labels)} (best first), one letter for the best, or s to skip"
            + (f"; {', '.join(unknown)} is not shown" if unknown else "")
        )
    if len(set(letters)) != len(letters):
        raise FeedbackError("each letter at most once")
    if len(letters) == 1:
        return {"best": labels[letters[0]]}
    return {"ranking": [labels[x] for x in letters]}


def review_in_terminal(
    session: Session,
    reviewer: str,
    ask: Callable[[str], str],
    limit: int | None = None,
) -> int:
    """Show each item this reviewer has not reviewed; save each answer as it is given. Returns how many."""
    from rich.panel import Panel
    from rich.text import Text

    done = {r["item"] for r in session.reviews() if r["reviewer"] == reviewer}
    todo = [item for item in session.items if item["id"] not in done]
    given = 0
    for item in todo[:limit] if limit else todo:
        position = session.items.index(item) + 1
        console.rule(f"[bold]{position} of {len(session.items)}[/bold] · {session.id} · {item['id']}")
        for message in item["prompt"]:
            style = "bold" if message is item["prompt"][-1] else "dim"
            said = written_answer(message)  # its calls written in
            console.print(Text.assemble((f"{message['role']}: ", style), said), highlight=False)
        shown = session.order(item)
        texts = {c["id"]: c["text"] for c in item["candidates"]}
        for i, cid in enumerate(shown):
            console.print(Panel(Text(texts[cid]), title=f"[bold]{LETTERS[i]}[/bold]", title_align="left"))
        while True:
            answer = ask("Rank best first (e.g. B A C), one letter for the best, s to skip, q to stop")
            if answer.strip().lower() in ("q", "quit"):
                return given
            try:
                parsed = parse_answer(answer, shown)
                break
            except FeedbackError as exc:
                console.print(f"[red]{exc}[/red]")
        session.add_review(
            {
                "item": item["id"],
                "reviewer": reviewer,
                **parsed,
                "shown": shown,
                "at": datetime.now(UTC).isoformat(),
            }
        )
        given += 1
    return given


def write_page(session: Session) -> Path:
    """The self-contained review page of a session (`review.html`): works from a file, offline."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("tunesmith", "feedback"), autoescape=select_autoescape())
    data = [
        {
            "id": item["id"],
            "prompt": [{"role": m["role"], "content": written_answer(m)} for m in item["prompt"]],
            "shown": [
                {"id": cid, "text": next(c["text"] for c in item["candidates"] if c["id"] == cid)}
                for cid in session.order(item)
            ],
        }
        for item in session.items
    ]
    page = env.get_template("review.html.j2").render(session=session.meta, items=data, letters=LETTERS)
    path = session.folder / "review.html"
    _write(path, page)
    return path


def import_reviews(session: Session, files: list[Path]) -> int:
    """Add the reviews downloaded from the review page; returns how many were new.

    Raises:
        FeedbackError: for a file of another session, or a review naming unknown items or answers.
    """
    items = {item["id"]: {c["id"] for c in item["candidates"]} for item in session.items}
    seen = {
        (r["item"], r["reviewer"], json.dumps(r.get("ranking") or r.get("best"))) for r in session.reviews()
    }
    added = 0
    for path in files:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise FeedbackError(f"{path}: not a review file from the review page ({exc})") from None
        if payload.get("session") != session.id:
            raise FeedbackError(f"{path}: reviews of session {payload.get('session')!r}, not {session.id}")
        reviewer = str(payload.get("reviewer") or "").strip()
        if not reviewer:
            raise FeedbackError(f"{path}: no reviewer name; type one in the page before downloading")
        for n, review in enumerate(payload.get("reviews", []), 1):
            where = f"{path}: review {n}"
            if review.get("item") not in items:
                raise FeedbackError(f"{where}: unknown item {review.get('item')!r}")
            named = review.get("ranking") or ([review["best"]] if review.get("best") else [])
            if not named or any(cid not in items[review["item"]] for cid in named):
                raise FeedbackError(f"{where}: names answers this item does not have")
            key = (review["item"], reviewer, json.dumps(review.get("ranking") or review.get("best")))
            if key in seen:
                continue
            seen.add(key)
            session.add_review(
                {
                    "item": review["item"],
                    "reviewer": reviewer,
                    **({"ranking": review["ranking"]} if review.get("ranking") else {"best": review["best"]}),
                    "at": review.get("at") or datetime.now(UTC).isoformat(),
                    "via": path.name,
                }
            )
            added += 1
    return added


# --- dataset ------------------------------------------------------------------------------------


def preference_pairs(session: Session) -> Iterator[dict[str, Any]]:
    """Preference rows from the latest review of each (item, reviewer)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for review in session.reviews():
        latest[(review["item"], review["reviewer"])] = review
    items = {item["id"]: item for item in session.items}
    for (item_id, reviewer), review in latest.items():
        if review.get("skip"):
            continue
        item = items[item_id]
        texts = {c["id"]: c["text"] for c in item["candidates"]}
        said = {c["id"]: [c["message"]] if "message" in c else c["text"] for c in item["candidates"]}
        tools = {"tools": item["tools"]} if item.get("tools") else {}
        origin = {c["id"]: c["origin"] for c in item["candidates"]}
        ranking = review.get("ranking") or [review["best"]]
        unranked = [cid for cid in texts if cid not in ranking]
        # ranked ones in order, then the unranked ones together at the bottom (no pairs among them)
        levels = [[cid] for cid in ranking] + ([unranked] if unranked else [])
        for i, better_level in enumerate(levels):
            for j in range(i + 1, len(levels)):
                for better in better_level:
                    for worse in levels[j]:
                        yield {
                            "prompt": item["prompt"],
                            "chosen": said[better],
                            "rejected": said[worse],
                            **tools,
                            "margin": float(j - i),
                            "group": f"{session.id}:{item_id}",
                            "origin": {
                                "session": session.id,
                                "item": item_id,
                                "reviewer": reviewer,
                                "chosen": origin[better],
                                "rejected": origin[worse],
                                **item.get("source", {}),
                            },
                        }


def write_dataset(config: ProjectConfig, workspace: Workspace, session: Session) -> DatasetVersion:
    """The session's reviews as a preference dataset version (through the data stage), with lineage.

    Raises:
        FeedbackError: when no review gives a pair yet.
    """
    from tunesmith.data import prepare_data

    rows = list(preference_pairs(session))
    if not rows:
        raise FeedbackError(
            f"session {session.id} has no reviews that prefer one answer to another yet; "
            f"review with `tunesmith feedback review {session.id}` or import the page's downloads"
        )
    path = session.folder / "preferences.jsonl"
    _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    derived = config.model_copy(deep=True)
    derived.data = derived.data.model_copy(update={"path": str(path), "format": "preference", "columns": {}})
    derived = derived.with_base_dir(config.base_dir)
    reviews = [r for r in session.reviews() if not r.get("skip")]
    lineage = {
        "source": "feedback",
        "session": session.id,
        "version": session.meta["version"],
        "reviews": len(reviews),
        "reviewers": sorted({r["reviewer"] for r in reviews}),
        "pairs": len(rows),
    }
    return prepare_data(derived, workspace, lineage=lineage)


def gather_prompts(
    workspace: Workspace,
    version: str,
    *,
    prompts: Path | None = None,
    dataset: str | None = None,
    split: str = "test",
    from_production: bool = False,
    since: str | None = None,
    where: list[str] | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The prompts to sample answers for, from exactly one source, and a description of it: a prompts
    file, a dataset version's split, or the version's served requests (`since`, `where` filter them).

    Raises:
        FeedbackError: for no source or several, or a dataset version that does not exist.
    """
    from tunesmith.data import load_split
    from tunesmith.monitor.report import parse_since
    from tunesmith.registry import get_version

    if sum((prompts is not None, dataset is not None, from_production)) != 1:
        raise FeedbackError(
            "give exactly one source of prompts: --prompts FILE, --dataset ID or --from-production"
        )
    if prompts is not None:
        rows, source = read_prompts(prompts), f"file {prompts}"
    elif dataset is not None:
        with session(workspace.engine) as s:
            data = s.get(DatasetVersion, dataset)
        if data is None:
            raise FeedbackError(f"no dataset version {dataset!r}; see `tunesmith data list`")
        rows = [
            {
                "prompt": p,
                **({"tools": r["tools"]} if r.get("tools") else {}),
                "source": {"dataset": data.id, "split": split, "row": n},
            }
            for n, r in enumerate(load_split(data, split))
            if (p := prompt_of_row(r)) is not None
        ]
        source = f"dataset {data.id} ({split})"
    else:
        delta = parse_since(since) if since else None
        rows = production_prompts(workspace, get_version(workspace, version), since=delta, where=where or [])
        source = "production"
    return (rows[:limit] if limit else rows), source
