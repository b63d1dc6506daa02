"""`POST /v1/feedback`: a rating, preference, correction or comment on an answered request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from tunesmith.monitor.feedback import FeedbackError, FeedbackIn, record_feedback
from tunesmith.serve.keys import Caller
from tunesmith.serve.routes.deps import body, caller, parse, server_of
from tunesmith.serve.schemas import ApiError
from tunesmith.serve.server import Server

router = APIRouter()


def feedback_kind(row: Any) -> str:
    """The metric label of a feedback row."""
    if row.preference is not None:
        return "preference"
    if row.correction:
        return "correction"
    if row.rating is not None:
        return f"rating_{row.scale}"
    return "comment"


@router.post("/v1/feedback", openapi_extra=body(FeedbackIn))
async def feedback(
    request: Request, who: Caller = Depends(caller), server: Server = Depends(server_of)
) -> dict[str, Any]:
    given = await parse(request, FeedbackIn)
    if server.scrub:
        given = server.scrub.feedback(given)
    try:
        row = await server.off_path(
            record_feedback,
            server.workspace,
            given,
            api_key_id=who.key_id,
            admin=who.admin,
            reference_metrics=server.config.monitor.reference_metrics,
        )
    except FeedbackError as exc:
        raise ApiError(404 if "no request" in str(exc) else 400, str(exc), param="request_id") from None
    server.metrics.feedback.labels(row.version_id or "", feedback_kind(row)).inc()
    return {"object": "feedback", "id": row.id, "request_id": row.request_id, "status": "recorded"}
