"""Prometheus metrics (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "ledgerbridge_requests_total", "Gateway requests", ["method", "route", "status"], registry=REGISTRY
)
UPSTREAM = Histogram(
    "ledgerbridge_upstream_seconds",
    "Upstream call latency",
    ["provider", "kind", "status"],
    registry=REGISTRY,
)
REFRESHES = Counter(
    "ledgerbridge_token_refreshes_total", "Upstream credential refreshes", ["provider"], registry=REGISTRY
)
RATE_LIMITED = Counter("ledgerbridge_rate_limited_total", "429 answers", ["source"], registry=REGISTRY)
ERRORS = Counter("ledgerbridge_errors_total", "Error answers", ["code"], registry=REGISTRY)


def observe_upstream(provider: str, kind: str, status: int | None, seconds: float) -> None:
    UPSTREAM.labels(provider, kind, str(status) if status is not None else "error").observe(seconds)
    if status == 429:
        RATE_LIMITED.labels("upstream").inc()
    if kind == "auth":
        REFRESHES.labels(provider).inc()
