"""Feedback on served answers: ratings (thumbs or 1-5 stars), comments, corrected answers, preferences.

Each is stored against the request and the version that answered it. A correction is also a
reference: the answer is scored against it with the offline eval metrics (`reference_<metric>`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from tunesmith.monitor.scorers import reference_scores
from tunesmith.store import Feedback, RequestLog, session
from tunesmith.store.schema import utcnow
from tunesmith.workspace import Workspace


def is_positive(rating: float | None, scale: str | None) -> bool:
    """A thumbs up, or 4-5 stars."""
    return rating is not None and rating >= (4 if scale == "stars" else 0.5)


def is_negative(rating: float | None, scale: str | None) -> bool:
    """A thumbs down, or 1-2 stars: what the negative-feedback rate counts (alerts, gates, reports)."""
    return rating is not None and (rating <= 2 if scale == "stars" else rating < 0.5)


class FeedbackError(LookupError):
    """Feedback that cannot be stored: the message says why."""


class Preference(BaseModel):
    """Which answer was better: two choice indices of the request (n > 1), or two texts."""

    model_config = ConfigDict(extra="forbid")

    chosen: int | str
    rejected: int | str


class FeedbackIn(BaseModel):
    """Body of `POST /v1/feedback`."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=80)  # x-request-id, or the response's id (chatcmpl-...)
    choice: int = Field(0, ge=0, lt=128)
    rating: Literal["up", "down"] | bool | int | None = None
    scale: Literal["thumbs", "stars"] | None = None  # inferred: up/down/true/false are thumbs, 1-5 stars
    comment: str | None = Field(None, max_length=10_000)
    correction: str | None = Field(None, max_length=100_000)
    preference: Preference | None = None
    user: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _something(self) -> FeedbackIn:
        if self.rating is None and not self.comment and not self.correction and self.preference is None:
            raise ValueError("give a rating, a comment, a correction or a preference")
        if isinstance(self.rating, int) and not isinstance(self.rating, bool):
            scale = self.scale or "stars"
            if scale == "stars" and not 1 <= self.rating <= 5:
                raise ValueError("a star rating is 1 to 5")
            if scale == "thumbs" and self.rating not in (0, 1):
                raise ValueError("a thumbs rating is up/down, true/false or 1/0")
        return self

    @property
    def normalised(self) -> tuple[float | None, str | None]:
        """(rating, scale): thumbs as 1 (up) or 0 (down), stars as 1-5."""
        if self.rating is None:
            return None, None
        if isinstance(self.rating, str):
            return float(self.rating == "up"), "thumbs"
        if isinstance(self.rating, bool):
            return float(self.rating), "thumbs"
        return float(self.rating), self.scale or "stars"


def request_id_of(ref: str) -> str:
    """`req-…` from a request id or a response id (`chatcmpl-…`, `cmpl-…`)."""
    for prefix in ("chatcmpl-", "cmpl-"):
        if ref.startswith(prefix):
            return "req-" + ref[len(prefix) :]
    return ref


def record_feedback(
    workspace: Workspace,
    body: FeedbackIn,
    *,
    api_key_id: str | None = None,
    admin: bool = True,
    reference_metrics: list[str] | tuple[str, ...] = ("rouge_l", "chrf"),
    wait_seconds: float = 5.0,
) -> Feedback:
    """Store feedback on a logged request (waiting briefly for a just-answered request's log row).

    A caller without `admin` may give feedback only on requests made with its own key
    (`api_key_id`); another key's request is "no request" to it, so ids of others are not confirmed.

    Raises:
        FeedbackError: no such request (of this caller's), or a choice or preference index it does
            not have.
    """
    request_id = request_id_of(body.request_id)
    row = _request(workspace, request_id, wait_seconds)
    if not admin and row.api_key_id != api_key_id:
        raise FeedbackError(
            f"no request {request_id} made with this API key; feedback goes on your own requests "
            "(a key with the admin scope may rate any request)"
        )
    answers = list(row.output or [])
    if body.choice >= max(len(answers), 1):
        raise FeedbackError(f"request {request_id} has {len(answers)} answer(s); no choice {body.choice}")
    preference = None
    if body.preference is not None:
        preference = {
            side: _answer_text(answers, getattr(body.preference, side), request_id)
            for side in ("chosen", "rejected")
        }
    rating, scale = body.normalised
    feedback = Feedback(
        request_id=request_id,
        version_id=row.version_id,
        choice=body.choice,
        rating=rating,
        scale=scale,
        comment=body.comment,
        correction=body.correction,
        preference=preference,
        user=body.user or row.user,
        api_key_id=api_key_id,
        at=utcnow(),
    )
    scores = []
    if body.correction and answers:
        scores = reference_scores(
            request_id, row.version_id, str(answers[body.choice]), body.correction, list(reference_metrics)
        )
    with session(workspace.engine) as s:
        s.add(feedback)
        s.add_all(scores)
    return feedback


def _request(workspace: Workspace, request_id: str, wait_seconds: float) -> RequestLog:
    deadline = time.monotonic() + wait_seconds
    while True:
        with session(workspace.engine) as s:
            row = s.scalars(select(RequestLog).where(RequestLog.id == request_id)).first()
        if row is not None:
            return row
        if time.monotonic() >= deadline:
            raise FeedbackError(f"no request {request_id} in the request log")
        time.sleep(0.1)  # the log is written off the request path: a fresh answer may not be there yet


def _answer_text(answers: list[Any], side: int | str, request_id: str) -> str:
    if isinstance(side, str):
        return side
    if not 0 <= side < len(answers):
        raise FeedbackError(f"request {request_id} has {len(answers)} answer(s); no answer {side} to prefer")
    return str(answers[side])
