"""Prometheus metrics of `stairflow serve`, on ``GET /metrics``.

Each `App` has its own `prometheus_client.CollectorRegistry` (never the process's global one:
several apps can live in one process, as in the tests). Every label's values are bounded: a
graph label is a served graph's name (or ``""`` when the request named none of them, never
the client's own ``model`` string); a status is an HTTP status this server answers; an
endpoint is an upstream's base URL as configured, without credentials, query or fragment; a
kind is one of `UPSTREAM_KINDS`. docs/serving.md ("Metrics") lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .._urls import display_url

__all__ = ["CONTENT_TYPE", "ROUTES", "UPSTREAM_KINDS", "Metrics", "endpoint_label"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# the route label: which part of the API a request was for
ROUTES = ("chat", "models", "health", "metrics", "other")

# why a request to an upstream endpoint failed (each failed attempt counts, retried or not)
UPSTREAM_KINDS = ("http_401", "http_403", "http_404", "http_429", "http_4xx", "http_5xx",
                  "read_timeout", "deadline", "connect", "broken", "stream_error",
                  "malformed", "no_finish_reason", "finish_reason", "no_such_model", "other")

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOTAL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def endpoint_label(base_url: str) -> str:
    """An upstream's base URL fit for a label: as `display_url` shows it (no ``user:KEY@``;
    a query or fragment, where a key may also travel, is ``?[redacted]``), without that
    mark."""
    return display_url(base_url).split("?", 1)[0]


class Metrics:
    """The app's metrics, in a registry of their own."""

    def __init__(self, graphs: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.graphs = frozenset(graphs)
        self.in_flight = Gauge("stairflow_runs_in_flight", "Graph runs in progress",
                               ["graph"], registry=r)
        self.requests = Counter("stairflow_requests", "HTTP requests answered, by route, "
                                "graph and status (499: the client went away)",
                                ["route", "graph", "status"], registry=r)
        self.ttft = Histogram("stairflow_ttft_seconds", "Time from a chat request's arrival "
                              "to the first text of its answer", ["graph"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.total = Histogram("stairflow_request_duration_seconds", "Time from a chat "
                               "request's arrival to the end of its answer", ["graph"],
                               buckets=TOTAL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("stairflow_prompt_tokens", "Prompt tokens the graphs' "
                                     "model requests processed (tokens in)", ["graph"],
                                     registry=r)
        self.completion_tokens = Counter("stairflow_completion_tokens", "Answer tokens sent "
                                         "to clients (tokens out)", ["graph"], registry=r)
        self.rate_limited = Counter("stairflow_rate_limited", "Requests refused with 429: "
                                    "the server ran --max-concurrent runs already",
                                    ["graph"], registry=r)
        self.upstream_errors = Counter("stairflow_upstream_errors", "Failed requests to the "
                                       "models' endpoints (each attempt, retried or not)",
                                       ["endpoint", "kind"], registry=r)
        for name in sorted(self.graphs):  # every served graph shows, at zero
            self.in_flight.labels(name)
            for family in (self.prompt_tokens, self.completion_tokens, self.rate_limited):
                family.labels(name)

    def _graph(self, name: str | None) -> str:
        return name if name is not None and name in self.graphs else ""

    def request(self, route: str, graph: str | None, status: int) -> None:
        route = route if route in ROUTES else "other"
        self.requests.labels(route, self._graph(graph), str(status)).inc()

    def upstream_error(self, base_url: str, kind: str) -> None:
        self.upstream_errors.labels(endpoint_label(base_url),
                                    kind if kind in UPSTREAM_KINDS else "other").inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
