"""Prometheus metrics of one server (its own registry: two servers in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tunesmith_requests",
            "Requests answered, by model asked for, version, route and status",
            ["model", "version", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tunesmith_request_latency_seconds",
            "Time from request to last token",
            ["version", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tunesmith_time_to_first_token_seconds",
            "Time from request to first token",
            ["version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("tunesmith_tokens", "Tokens in and out", ["version", "kind"], registry=r)
        self.shadow = Counter(
            "tunesmith_shadow_requests",
            "Mirrored requests answered by a shadow",
            ["version", "status"],
            registry=r,
        )
        self.rejected = Counter(
            "tunesmith_rejected_requests", "Requests refused before generation", ["reason"], registry=r
        )
        self.queue = Gauge("tunesmith_queue_sequences", "Sequences waiting for a batch", registry=r)
        self.batch = Histogram(
            "tunesmith_batch_sequences",
            "Sequences decoded together",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.swaps = Counter(
            "tunesmith_model_swaps", "Alias moves followed", ["model", "version", "result"], registry=r
        )
        self.reloads = Counter("tunesmith_config_reloads", "Runtime config reloads", ["result"], registry=r)
        self.loaded = Gauge("tunesmith_loaded_versions", "Versions in memory", registry=r)
        self.scoring_dropped = Gauge(
            "tunesmith_scoring_dropped",
            "Sampled answers not scored online: the scoring queue was full",
            registry=r,
        )
        self.feedback = Counter("tunesmith_feedback", "Feedback received", ["version", "kind"], registry=r)
        self.alerts = Counter("tunesmith_alerts", "Alert rules that fired", ["rule"], registry=r)
        self.rollouts = Counter("tunesmith_rollout_events", "Rollout steps", ["route", "event"], registry=r)
