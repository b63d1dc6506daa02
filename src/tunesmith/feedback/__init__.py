"""Human feedback collection: reviewers rank sampled answers; rankings become preference datasets."""

from tunesmith.feedback.collect import (
    FeedbackError,
    Session,
    collect,
    import_reviews,
    list_sessions,
    open_session,
    preference_pairs,
    read_prompts,
    review_in_terminal,
    write_dataset,
)

__all__ = [
    "FeedbackError",
    "Session",
    "collect",
    "import_reviews",
    "list_sessions",
    "open_session",
    "preference_pairs",
    "read_prompts",
    "review_in_terminal",
    "write_dataset",
]
