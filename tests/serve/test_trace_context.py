"""A served run joins its caller's trace: the W3C ``traceparent`` a request carries becomes
the parent of the run's OpenTelemetry span (an in-memory exporter; virtual time)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stairflow._serve.app import App
from tests.serve.test_app import ASK, Counting, Response, call, serve

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7



def ask(header: bytes | None) -> Response:
    headers = () if header is None else ((b"traceparent", header),)

    async def go(app: App, backend: Counting) -> Response:
        return await call(app, "POST", "/v1/chat/completions", ASK, headers=headers)

    return serve(go)


def run_span(exporter: InMemorySpanExporter):  # type: ignore[no-untyped-def]
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("invoke_workflow")]
    return span


def test_a_request_with_a_traceparent_puts_its_run_under_the_callers_span(spans):
    r = ask(f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01".encode())
    assert r.status == 200
    span = run_span(spans)
    assert span.context.trace_id == TRACE_ID
    assert span.parent is not None and span.parent.span_id == PARENT_ID and span.parent.is_remote
    # every span of the run is in the caller's trace
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {TRACE_ID}


@pytest.mark.parametrize("header", [None, b"00-not-a-trace-context"], ids=["none", "malformed"])
def test_without_a_usable_traceparent_the_run_is_a_trace_of_its_own(spans, header):
    r = ask(header)
    assert r.status == 200
    span = run_span(spans)
    assert span.parent is None and span.context.trace_id != TRACE_ID
