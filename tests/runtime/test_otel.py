"""OpenTelemetry spans (stairflow._otel): one trace per run, GenAI attributes equal to the
Report's figures, errors on the spans that failed, nothing without a configured provider.

Each test gets its own SDK `TracerProvider` with an in-memory exporter, handed to stairflow
through `opentelemetry.trace.get_tracer_provider` (the API lets an application set its global
provider once per process, so the tests do not). Runs are simulated, in virtual time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes
from opentelemetry.trace import ProxyTracerProvider, SpanKind, StatusCode

import stairflow as sf
from stairflow.testing import FlakyBackend, open_virtual_run, run_virtual

FAST = {"latency_s": 0.5, "prefill_tps": 1024.0, "decode_tps": 8.0}
QUESTION = "Is the QUESTION-7f3a secret safe?"
SYSTEM = "SYSTEM-PROMPT-9c2e: answer tersely."


def moa(**p2: Any) -> sf.Graph:
    """Two proposers (one with its own model), an aggregator stepping on their chunks, a fn
    node after it."""
    g = sf.Graph("otel-moa", sim=FAST)
    g.input("q")
    g.llm("p1", model="tiny-model", system=SYSTEM, sim={"output_tokens": 12})
    g.llm("p2", sim={"output_tokens": 12}, **p2)
    g.llm("agg", sim={"output_tokens": 20}, steps=[4])
    g.fn("shout", upper)
    g.connect("q", ["p1", "p2"])
    g.connect(["p1", "p2"], "agg", sf.tokens(4))
    g.connect("agg", "shout", sf.tokens(4))
    g.connect("shout", g.output("out"))
    return g


async def upper(inputs: sf.Inputs):
    async for step in inputs:
        for text in step.new.values():
            yield text.upper()



def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    found = exporter.get_finished_spans()
    out = {s.name: s for s in found if not s.name.startswith("chat ")}
    assert len(out) + len(requests(exporter)) == len(found)
    return out


def requests(exporter: InMemorySpanExporter, node: str | None = None) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")
            and (node is None or s.attributes["stairflow.node"] == node)]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_run_is_one_trace_a_span_per_node_and_one_per_request(spans):
    report = run_virtual(moa(), QUESTION)
    named = by_name(spans)
    root = named.pop("invoke_workflow otel-moa")
    assert root.parent is None and root.kind is SpanKind.INTERNAL
    every = spans.get_finished_spans()
    assert {s.context.trace_id for s in every} == {root.context.trace_id}
    assert set(named) == {"stairflow.node q", "invoke_agent p1", "invoke_agent p2",
                          "invoke_agent agg", "stairflow.node shout", "stairflow.node out"}
    for span in named.values():
        assert span.parent is not None and span.parent.span_id == root.context.span_id
    for node in ("p1", "p2", "agg"):
        agent = named[f"invoke_agent {node}"]
        calls = requests(spans, node)
        assert len(calls) == report.nodes[node].calls == attrs(agent)["stairflow.node.calls"]
        assert {c.parent.span_id for c in calls if c.parent} == {agent.context.span_id}
        assert sorted(attrs(c)["stairflow.step"] for c in calls) == list(range(len(calls)))
    assert report.nodes["agg"].calls >= 3  # staircase steps, each its own request span


def test_genai_attributes_equal_the_reports_figures(spans):
    report = run_virtual(moa(), QUESTION)
    named = by_name(spans)
    root = named["invoke_workflow otel-moa"]
    assert attrs(root) == {
        "gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "otel-moa",
        "stairflow.graph": "otel-moa", "stairflow.mode": "staircase",
        "stairflow.backend": "simulated", "stairflow.run.id": attrs(root)["stairflow.run.id"],
        "stairflow.simulated": True, "stairflow.virtual_time": True,
        "stairflow.ttft_s": report.ttft_s, "stairflow.total_s": report.total_s,
    }
    for node, model in (("p1", "tiny-model"), ("p2", "simulated"), ("agg", "simulated")):
        n = report.nodes[node]
        agent = attrs(named[f"invoke_agent {node}"])
        start = report.trace.of("node_start", node)[0].t
        assert agent["gen_ai.operation.name"] == "invoke_agent"
        assert agent["gen_ai.agent.name"] == node
        assert agent["gen_ai.provider.name"] == "stairflow.simulated"
        assert agent["gen_ai.request.model"] == model
        assert agent["gen_ai.usage.input_tokens"] == n.prompt_tokens > 0
        assert agent["gen_ai.usage.output_tokens"] == n.completion_tokens > 0
        assert agent["gen_ai.usage.cache_read.input_tokens"] == n.cached_tokens
        assert agent["stairflow.ttft_s"] == n.ttft_s
        assert agent["gen_ai.response.time_to_first_chunk"] == n.ttft_s - start
        assert agent["stairflow.node.tokens"] == n.tokens
        calls = requests(spans, node)
        assert sum(attrs(c)["gen_ai.usage.input_tokens"] for c in calls) == n.prompt_tokens
        assert sum(attrs(c)["gen_ai.usage.output_tokens"] for c in calls) == n.completion_tokens
        for call in calls:
            a = attrs(call)
            step = a["stairflow.step"]
            sent = next(e for e in report.trace.of("request_sent", node)
                        if e.data["step"] == step)
            first = [e for e in report.trace.of("first_token", node) if e.data["step"] == step]
            assert a["gen_ai.operation.name"] == "chat" and call.name == f"chat {model}"
            assert a["gen_ai.request.model"] == model
            assert a["gen_ai.request.max_tokens"] == sent.data["max_tokens"]
            if first:
                assert a["gen_ai.response.time_to_first_chunk"] == first[0].t - sent.t
            else:  # a step cut before its first token (its inputs all ended)
                assert "gen_ai.response.time_to_first_chunk" not in a
            assert call.kind is SpanKind.INTERNAL  # a simulated model runs in the process
    steps = {attrs(c)["stairflow.step"]: attrs(c) for c in requests(spans, "agg")}
    ended = {e.data["step"]: e.data["finish_reason"] for e in report.trace.of("request_end", "agg")}
    cut = {e.data["step"] for e in report.trace.of("request_cancel", "agg")}
    assert ended and set(ended) | cut == set(steps)
    for step, a in steps.items():
        assert a.get("gen_ai.response.finish_reasons") == (
            (ended[step],) if step in ended else None)
        assert a.get("stairflow.request.cancelled", False) is (step in cut)
    assert ended[max(ended)] == "stop"
    shout = attrs(named["stairflow.node shout"])
    assert shout["stairflow.node.kind"] == "fn"
    assert shout["stairflow.ttft_s"] == report.nodes["shout"].ttft_s
    assert not any(k.startswith("gen_ai.") for k in shout)


def test_every_genai_name_is_in_the_semantic_conventions(spans):
    run_virtual(moa(), QUESTION)
    known = {v for k, v in vars(gen_ai_attributes).items() if k.startswith("GEN_AI_")}
    operations = {v.value for v in gen_ai_attributes.GenAiOperationNameValues}
    used = {k for s in spans.get_finished_spans() for k in attrs(s)}
    assert {k for k in used if k.startswith("gen_ai.")} <= known
    assert {k for k in used if not k.startswith(("gen_ai.", "stairflow."))} == set()
    assert {attrs(s)["gen_ai.operation.name"] for s in spans.get_finished_spans()
            if "gen_ai.operation.name" in attrs(s)} <= operations


def test_virtual_time_spans_are_anchored_at_the_wall_clock(spans):
    before = time.time_ns()
    report = run_virtual(moa(), QUESTION)
    after = time.time_ns()
    named = by_name(spans)
    root = named["invoke_workflow otel-moa"]
    assert root.start_time is not None and before <= root.start_time <= after
    # minutes of simulated time took milliseconds: the spans last the virtual seconds
    assert root.end_time == root.start_time + round(report.total_s * 1e9)
    for node in ("p1", "agg"):
        span = named[f"invoke_agent {node}"]
        start = report.trace.of("node_start", node)[0].t
        assert span.start_time == root.start_time + round(start * 1e9)
        assert span.end_time == root.start_time + round(report.nodes[node].done_s * 1e9)


def test_a_failed_node_marks_its_span_its_request_and_the_run_as_errors(spans):
    g = moa().build()
    with pytest.raises(sf.NodeError) as info:
        run_virtual(g, QUESTION, backend=FlakyBackend(sf.SimBackend.for_graph(g), {"agg": 6}))
    named = by_name(spans)
    agg, root = named["invoke_agent agg"], named["invoke_workflow otel-moa"]
    assert agg.status.status_code is StatusCode.ERROR
    assert agg.status.description == str(info.value)
    assert "injected failure" in str(agg.status.description)
    assert attrs(agg)["error.type"] == "stairflow.InjectedFault"
    failed = [c for c in requests(spans, "agg") if c.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and failed[0].end_time == agg.end_time
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == str(info.value)
    assert attrs(root)["error.type"] == "stairflow.InjectedFault"
    assert named["invoke_agent p1"].status.status_code is StatusCode.UNSET


def test_a_dropped_node_has_its_error_and_the_run_goes_on(spans):
    g = moa(on_error="drop").build()
    report = run_virtual(g, QUESTION,
                         backend=FlakyBackend(sf.SimBackend.for_graph(g), {"p2": 3}))
    named = by_name(spans)
    p2 = named["invoke_agent p2"]
    assert p2.status.status_code is StatusCode.ERROR
    assert p2.status.description == report.nodes["p2"].error
    assert attrs(p2)["stairflow.node.dropped"] is True
    assert attrs(p2)["gen_ai.usage.output_tokens"] == report.nodes["p2"].completion_tokens
    assert named["invoke_workflow otel-moa"].status.status_code is StatusCode.UNSET
    assert named["invoke_agent agg"].status.status_code is StatusCode.UNSET


def test_a_cancelled_run_ends_every_span(spans):
    async def cancel_at_the_first_answer_token(run: sf.Run) -> None:
        async for event in run:
            if event.kind == "first_token" and event.node == "agg":
                run.cancel()

    report = run_virtual(moa(), QUESTION, during=cancel_at_the_first_answer_token)
    named = by_name(spans)
    root = named["invoke_workflow otel-moa"]
    assert attrs(root)["stairflow.cancelled"] is True
    assert root.status.status_code is StatusCode.UNSET  # cancelling is not failing
    assert len(named) == 7  # every node's span ended too
    cut = requests(spans, "agg")[-1]
    assert attrs(cut)["stairflow.request.cancelled"] is True
    assert cut.end_time == root.start_time + round(report.trace.of("request_cancel", "agg")[-1]
                                                   .t * 1e9)


def test_a_run_left_by_an_error_in_the_callers_block_still_ends_its_spans(spans):
    async def main() -> None:
        async with open_virtual_run(moa(), QUESTION) as run:
            async for event in run:
                if event.kind == "first_token" and event.node == "agg":
                    raise KeyError("the caller gave up")

    with pytest.raises(KeyError, match="the caller gave up"):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    named = by_name(spans)
    assert attrs(named["invoke_workflow otel-moa"])["stairflow.cancelled"] is True
    assert len(named) == 7


def test_a_run_inside_an_application_span_is_its_child(spans):
    app = trace.get_tracer_provider().get_tracer("app")
    with app.start_as_current_span("POST /v1/chat/completions") as request:
        sf.run(moa(), QUESTION, backend="sim", virtual_clock=True)
    root = by_name(spans)["invoke_workflow otel-moa"]
    assert root.parent is not None and root.parent.span_id == request.get_span_context().span_id
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {
        request.get_span_context().trace_id}


def test_spans_made_inside_the_run_are_under_the_run_span(spans):
    """What a fn node (or an instrumented HTTP client in a backend) traces joins the run's
    trace: the node tasks run in the run span's context."""
    tracer = trace.get_tracer_provider().get_tracer("user code")

    async def traced(inputs: sf.Inputs):
        with tracer.start_as_current_span("lookup"):
            async for step in inputs:
                yield "".join(step.new.values())

    g = sf.Graph("inner", sim=FAST)
    g.connect(g.input("q"), g.fn("f", traced))
    g.connect("f", g.output("o"))
    run_virtual(g, QUESTION)
    named = by_name(spans)
    assert named["lookup"].parent is not None
    assert named["lookup"].parent.span_id == named["invoke_workflow inner"].context.span_id


def test_no_prompt_answer_or_system_text_in_any_span(spans):
    report = run_virtual(moa(), QUESTION)
    texts = [QUESTION, SYSTEM, "QUESTION-7f3a", "SYSTEM-PROMPT-9c2e", report.output]
    texts += [e.data["text"] for e in report.trace.of("node_end") if e.node != "q"]
    seen = []
    for span in spans.get_finished_spans():
        seen += [span.name, str(span.status.description or "")]
        seen += [str(v) for v in attrs(span).values()]
    for text in filter(None, texts):
        assert not any(text in s for s in seen), text


def test_nothing_happens_without_a_configured_provider(monkeypatch):
    """The API's proxy provider (none set) is not even asked for a tracer."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # as in a process that set none
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    assert isinstance(trace.get_tracer_provider(), ProxyTracerProvider)

    asked = []
    get_tracer = ProxyTracerProvider.get_tracer

    def spy(self: ProxyTracerProvider, *args: Any, **kwargs: Any) -> trace.Tracer:
        asked.append(args)
        return get_tracer(self, *args, **kwargs)

    monkeypatch.setattr(ProxyTracerProvider, "get_tracer", spy)

    async def main() -> sf.Run:
        async with open_virtual_run(moa(), QUESTION) as run:
            pass
        return run

    run = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert run.spans is None and run.finished
    assert asked == []  # not even a no-op tracer was made


def test_a_provider_configured_later_is_picked_up(monkeypatch):
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    run_virtual(moa(), QUESTION)  # none yet: nothing to emit to
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    run_virtual(moa(), QUESTION)
    assert "invoke_workflow otel-moa" in by_name(exporter)


def test_without_opentelemetry_imported_a_run_imports_none_of_it():
    code = ("import sys, stairflow as sf\n"
            "sf.run(sf.resolve_graph('moa'), 'hi', backend='sim', virtual_clock=True)\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_a_run_from_asyncio_is_a_child_of_the_handlers_span(spans):
    """stairflow.aio (a FastAPI handler, say) carries the opening task's context into the
    run. The simulator runs in real time here (asyncio has no virtual clock): fast rates."""
    import asyncio

    sfa = pytest.importorskip("stairflow.aio")
    g = sf.Graph("aio", sim={"latency_s": 0.001, "decode_tps": 10_000.0,
                             "output_tokens": 8})
    g.connect(g.input("q"), g.llm("a"))
    g.connect("a", g.output("o"))
    app = trace.get_tracer_provider().get_tracer("app")

    async def handler() -> trace.SpanContext:
        with app.start_as_current_span("POST /answer") as request:
            await sfa.run(g, QUESTION, backend="sim")
        return request.get_span_context()

    request = asyncio.run(handler())
    named = by_name(spans)
    root = named["invoke_workflow aio"]
    assert root.parent is not None and root.parent.span_id == request.span_id
    assert attrs(root)["stairflow.virtual_time"] is False
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {request.trace_id}


def test_an_openai_endpoint_names_its_server_without_credentials():
    from types import SimpleNamespace

    from stairflow._graph import LLMNode
    from stairflow._otel import _where

    backend = sf.OpenAIBackend(sf.Endpoint("https://user:pa55word@api.example.com/v1", "m",
                                           continuation="completions"), remember_rates=False)
    run = SimpleNamespace(backend=backend, simulated=False, backend_name="openai", secrets=())
    where = _where(run, LLMNode("a", model="big"))  # type: ignore[arg-type]
    assert (where.provider, where.model, where.operation, where.address, where.port) == (
        "openai", "big", "text_completion", "api.example.com", 443)
