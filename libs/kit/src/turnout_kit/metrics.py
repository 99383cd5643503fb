"""HTTP metrics shared by every service.

Module-level, on prometheus_client's default registry: metrics must be registered once
per process however many apps are created (tests create many), and `/metrics` should
also show what other modules register there (outbox backlog, consumer lag).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from receiving a request to the end of its response.",
    ["method", "route", "status"],
    # Fine at the bottom: marking a vote should take a few milliseconds.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Route label for requests that matched no route: probes of random paths must not
# create a time series each.
UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    # The method is client-chosen text: bound its cardinality too.
    return method if method in _METHODS else "OTHER"
