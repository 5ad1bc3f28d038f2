"""OpenTelemetry spans of a run against a real HTTP server (tests/integration/fake_openai.py):
the request spans name the server and the model, carry the usage the server reported and a
measured time to first chunk, on the wall clock; the API key appears nowhere."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

import stairflow as sf
from tests.integration.fake_openai import Exchange, fake_openai

pytestmark = pytest.mark.integration

KEY = "sk-otel-test-0123456789abcdef"


def answer(ex: Exchange) -> None:
    ex.sse()
    for word in ("Tides", " follow", " the", " moon"):
        ex.token(word)
    ex.token("", "stop")
    ex.event({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": ex.model,
              "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 4,
                                       "total_tokens": 25}})
    ex.done()



def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_spans_of_a_run_on_an_openai_compatible_server(spans, monkeypatch):
    monkeypatch.setenv("OTEL_TEST_KEY", KEY)
    g = sf.Graph("one")
    g.connect(g.input("q"), g.llm("a", max_tokens=16, system="Be brief."))
    g.connect("a", g.output("out"))
    with fake_openai(answer) as fake:
        backend = sf.OpenAIBackend(sf.Endpoint(fake.base_url, "m", api_key_env="OTEL_TEST_KEY"),
                                   remember_rates=False)
        before = time.time_ns()
        try:
            report = sf.run(g, "Explain tides.", backend=backend)
        finally:
            trio.run(backend.aclose)
        after = time.time_ns()
        assert fake.posts()[0].headers["Authorization"] == f"Bearer {KEY}"
    named = {s.name: s for s in spans.get_finished_spans()}
    assert set(named) == {"invoke_workflow one", "stairflow.node q", "invoke_agent a",
                          "chat m", "stairflow.node out"}
    root, agent, call = named["invoke_workflow one"], named["invoke_agent a"], named["chat m"]
    assert {s.context.trace_id for s in named.values()} == {root.context.trace_id}
    assert call.parent is not None and call.parent.span_id == agent.context.span_id
    assert call.kind is SpanKind.CLIENT
    port = int(fake.base_url.rsplit(":", 1)[1].split("/")[0])
    a = attrs(call)
    assert {k: a[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name",
                              "gen_ai.request.model", "server.address", "server.port",
                              "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                              "gen_ai.response.finish_reasons")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m", "server.address": "127.0.0.1", "server.port": port,
        "gen_ai.usage.input_tokens": 21, "gen_ai.usage.output_tokens": 4,
        "gen_ai.response.finish_reasons": ("stop",)}
    assert attrs(agent)["gen_ai.usage.input_tokens"] == report.nodes["a"].prompt_tokens == 21
    assert attrs(agent)["stairflow.ttft_s"] == report.nodes["a"].ttft_s
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < report.total_s
    assert attrs(root)["stairflow.simulated"] is False
    assert attrs(root)["stairflow.virtual_time"] is False
    # real time: the spans lie within the wall-clock interval of the run
    for span in named.values():
        assert span.start_time is not None and span.end_time is not None
        assert before <= span.start_time <= span.end_time <= after
    for span in named.values():
        values = [span.name, str(span.status.description or ""), *map(str, attrs(span).values())]
        assert not any(KEY in v or "Explain tides" in v or "Be brief" in v or "moon" in v
                       for v in values)


def test_an_endpoints_failure_is_named_by_its_kind_on_the_spans(spans):
    g = sf.Graph("one")
    g.connect(g.input("q"), g.llm("a", max_tokens=16))
    g.connect("a", g.output("out"))
    with fake_openai(lambda ex: ex.json(500, {"error": {"message": "down"}})) as fake:
        backend = sf.OpenAIBackend(sf.Endpoint(fake.base_url, "m", max_retries=0),
                                   remember_rates=False)
        try:
            with pytest.raises(sf.BackendError):
                sf.run(g, "Explain tides.", backend=backend)
        finally:
            trio.run(backend.aclose)
    named = {s.name: s for s in spans.get_finished_spans()}
    # the kind serve's metrics use too, not the backend's own class for every failure
    assert attrs(named["invoke_agent a"])["error.type"] == "http_5xx"
    assert attrs(named["invoke_workflow one"])["error.type"] == "http_5xx"
