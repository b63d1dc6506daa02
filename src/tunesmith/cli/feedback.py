"""`tunesmith feedback`: reviewers rank sampled answers; rankings become preference data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunesmith.cli.common import app, err, fail, load_project, out, print_table, project_workspace, reported
from tunesmith.cli.options import ConfigOpt, SetOpt
from tunesmith.config import ProjectConfig

feedback_app = typer.Typer(
    help="Human feedback: reviewers rank a version's sampled answers; rankings become preference data.",
    no_args_is_help=True,
)
app.add_typer(feedback_app, name="feedback", rich_help_panel="Lifecycle")
ReviewerOpt = Annotated[
    str | None, typer.Option(help="Who is reviewing (default: TUNESMITH_USER, else the login name).")
]


@feedback_app.command("collect")
def feedback_collect(
    version: Annotated[
        str, typer.Argument(help="The version to sample answers from (name, id, family@alias).")
    ],
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts: JSONL chat or {prompt} rows, or a .txt with one per line.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Or the prompts of a dataset version's split.")] = None,
    split: Annotated[str, typer.Option(help="The split of --dataset.")] = "test",
    from_production: Annotated[
        bool,
        typer.Option(
            "--from-production", help="Or the version's served requests; the served answer is a candidate."
        ),
    ] = False,
    since: Annotated[str | None, typer.Option(help="--from-production: only requests this recent.")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="--from-production: a score condition such as relevance<0.3."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Answers sampled per prompt.")] = 4,
    limit: Annotated[int | None, typer.Option(help="At most this many prompts.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.9,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 128,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    review: Annotated[
        str, typer.Option(help="terminal: review now; html: only write the review page; none: neither.")
    ] = "terminal",
    reviewer: ReviewerOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Sample K answers per prompt from a version, for reviewers to rank (in the terminal or a web page)."""
    from tunesmith.feedback import FeedbackError, collect
    from tunesmith.feedback.collect import Sampling, gather_prompts
    from tunesmith.registry import RegistryError
    from tunesmith.workspace import open_workspace

    if review not in ("terminal", "html", "none"):
        raise fail("--review: terminal, html or none", 2)
    cfg = load_project(config, set_)
    workspace = open_workspace(cfg)
    with reported(FeedbackError, RegistryError, ValueError):
        rows, source = gather_prompts(
            workspace,
            version,
            prompts=prompts,
            dataset=dataset,
            split=split,
            from_production=from_production,
            since=since,
            where=list(where or []),
            limit=limit,
        )
        sampling = Sampling(k=k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        result = collect(workspace, version, rows, sampling, source)
    _print_session(result, source, review)
    if review == "terminal":
        _review_and_write(cfg, workspace, result, reviewer)


def _print_session(result: Any, source: str, review: str) -> None:
    out.print(
        f"Session {result.id}: {len(result.items)} prompt(s) with answers to rank, from {source}, "
        f"in {result.folder}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"Review page: {result.folder / 'review.html'}", highlight=False, soft_wrap=True)
    if review != "terminal":
        out.print(
            f"Next: `tunesmith feedback review {result.id}` (terminal), or send the page to reviewers "
            f"and `tunesmith feedback import {result.id} FILE...`; "
            f"then `tunesmith feedback dataset {result.id}`.",
            highlight=False,
            soft_wrap=True,
        )


def _review_and_write(cfg: ProjectConfig, workspace: Any, target: Any, reviewer: str | None) -> None:
    from tunesmith.feedback import FeedbackError, review_in_terminal, write_dataset
    from tunesmith.registry.versions import who

    name = reviewer or who()
    given = review_in_terminal(target, name, lambda text: typer.prompt(text, default="", show_default=False))
    out.print(f"{given} review(s) by {name} saved to {target.reviews_path}", highlight=False, soft_wrap=True)
    try:
        version = write_dataset(cfg, workspace, target)
    except FeedbackError as exc:
        err.print(str(exc), highlight=False, soft_wrap=True)
        return
    _print_feedback_dataset(version, target)


def _print_feedback_dataset(version: Any, target: Any) -> None:
    out.print(f"Preference dataset {version.id}: {version.counts}", highlight=False, soft_wrap=True)
    out.print(
        f"Train on it with data.path: {target.folder / 'preferences.jsonl'} and data.format: preference, "
        f"and train.objective: reward (a reward model) or dpo (the LM itself)",
        highlight=False,
        soft_wrap=True,
    )


def _session(config: Path | None, set_: list[str] | None, session_id: str) -> tuple[Any, Any, Any]:
    """The project config, its workspace, and the feedback session `session_id` (or `latest`)."""
    from tunesmith.feedback import FeedbackError, open_session
    from tunesmith.workspace import open_workspace

    cfg = load_project(config, set_)
    workspace = open_workspace(cfg)
    with reported(FeedbackError):
        return cfg, workspace, open_session(workspace, session_id)


@feedback_app.command("review")
def feedback_review(
    session_id: Annotated[str, typer.Argument(help="The session (fb-...), or latest.")] = "latest",
    reviewer: ReviewerOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Rank the answers of a session in the terminal (resumes where this reviewer stopped)."""
    cfg, workspace, target = _session(config, set_, session_id)
    _review_and_write(cfg, workspace, target, reviewer)


@feedback_app.command("import")
def feedback_import(
    session_id: Annotated[str, typer.Argument(help="The session (fb-...).")],
    files: Annotated[list[Path], typer.Argument(help="Review files downloaded from the review page.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Add the reviews downloaded from a session's review page, and write the preference dataset."""
    from tunesmith.feedback import FeedbackError, import_reviews, write_dataset

    cfg, workspace, target = _session(config, set_, session_id)
    with reported(FeedbackError):
        added = import_reviews(target, files)
        out.print(f"{added} new review(s) added to {target.id}", highlight=False)
        version = write_dataset(cfg, workspace, target)
    _print_feedback_dataset(version, target)


@feedback_app.command("dataset")
def feedback_dataset(
    session_id: Annotated[str, typer.Argument(help="The session (fb-...), or latest.")] = "latest",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a session's reviews so far as a preference dataset version."""
    from tunesmith.feedback import FeedbackError, write_dataset

    cfg, workspace, target = _session(config, set_, session_id)
    with reported(FeedbackError):
        version = write_dataset(cfg, workspace, target)
    _print_feedback_dataset(version, target)


@feedback_app.command("list")
def feedback_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The feedback sessions of this workspace, with how far their review is."""

    from tunesmith.feedback import list_sessions

    table = Table("session", "version", "source", "prompts", "reviewed", "created")
    for row in list_sessions(project_workspace(config, set_)):
        table.add_row(
            row["id"],
            row["version"],
            row["source"],
            str(row["items"]),
            str(row["reviewed"]),
            row["created"][:16],
        )
    print_table(table, "no feedback sessions yet: `tunesmith feedback collect VERSION` starts one")
