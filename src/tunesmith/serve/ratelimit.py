"""Per-key rate limits: requests and tokens per minute, so one client cannot starve the others.

A key's own limits (`tunesmith serve keys create NAME --rpm N --tpm N`) win over the server's
(`serve.rate_limit`); no limit on either means none is applied. Tokens are counted when a request
is admitted, as OpenAI does: its prompt tokens plus `max_tokens` for each of its `n` choices. A
request over a limit gets 429 with `Retry-After` (seconds until the window has room) and the
`x-ratelimit-*` headers. Counters live in the `limits` library's storage: in memory by default, or
a shared Redis (`serve.rate_limit.storage: redis://...`) when several replicas serve one key.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute, storage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from tunesmith.config import RateLimitConfig
from tunesmith.serve.keys import Caller


@dataclass(frozen=True)
class Refusal:
    """A request over a limit: why, when to retry (None: never, the request alone is too large)."""

    message: str
    retry_after: int | None
    headers: dict[str, str]


class RateLimiter:
    """Requests per minute on a moving window (exact: one entry per request); tokens per minute on a
    sliding window counter (constant memory whatever the token count)."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        store = storage.storage_from_string(config.storage)
        self._requests = MovingWindowRateLimiter(store)
        self._tokens = SlidingWindowCounterRateLimiter(store)

    def limits_of(self, caller: Caller) -> tuple[int | None, int | None]:
        """(requests, tokens) per minute that apply to `caller`."""
        return (
            caller.requests_per_minute or self.config.requests_per_minute,
            caller.tokens_per_minute or self.config.tokens_per_minute,
        )

    def admit_request(self, caller: Caller) -> Refusal | None:
        """Count one request of `caller`; a refusal when its requests-per-minute window is full."""
        limit = self.limits_of(caller)[0]
        if limit is None:
            return None
        item = RateLimitItemPerMinute(limit)
        if self._requests.hit(item, "requests", _who(caller)):
            return None
        wait = self._retry_after(self._requests.get_window_stats(item, "requests", _who(caller)).reset_time)
        return Refusal(
            f"Rate limit reached for requests: the key {caller.name!r} may send {limit} per minute. "
            f"Please try again in {wait}s.",
            wait,
            _headers("requests", limit, 0, wait),
        )

    def admit_tokens(self, caller: Caller, tokens: int) -> Refusal | None:
        """Count `tokens` (prompt plus requested completion) of `caller` against its tokens per minute."""
        limit = self.limits_of(caller)[1]
        if limit is None:
            return None
        if tokens > limit:
            return Refusal(
                f"Request too large: it may use {tokens} tokens (prompt plus max_tokens x n), and the key "
                f"{caller.name!r} may use {limit} per minute. Lower max_tokens or n, or shorten the prompt.",
                None,
                _headers("tokens", limit, limit, None),
            )
        item = RateLimitItemPerMinute(limit)
        if self._tokens.hit(item, "tokens", _who(caller), cost=tokens):
            return None
        stats = self._tokens.get_window_stats(item, "tokens", _who(caller))
        wait = self._retry_after(stats.reset_time)
        return Refusal(
            f"Rate limit reached for tokens: the key {caller.name!r} may use {limit} per minute, "
            f"{stats.remaining} are left and this request may use {tokens}. Please try again in {wait}s.",
            wait,
            _headers("tokens", limit, stats.remaining, wait),
        )

    @staticmethod
    def _retry_after(reset_time: float) -> int:
        return max(1, math.ceil(reset_time - time.time()))


def _who(caller: Caller) -> str:
    return caller.key_id or "anonymous"


def _headers(kind: str, limit: int, remaining: int, wait: int | None) -> dict[str, str]:
    headers = {f"x-ratelimit-limit-{kind}": str(limit), f"x-ratelimit-remaining-{kind}": str(remaining)}
    if wait is not None:
        headers["Retry-After"] = str(wait)
        headers[f"x-ratelimit-reset-{kind}"] = f"{wait}s"
    return headers
