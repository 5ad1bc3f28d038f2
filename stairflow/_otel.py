"""OpenTelemetry spans of a run (the optional extra ``otel``; see docs/observability.md).

When the application has configured a tracer provider, each run becomes one trace under the
span that was current where the run was opened (a web request's, say):

    invoke_workflow {graph}          the run                        INTERNAL
      invoke_agent {node}            an llm node                    INTERNAL
        chat {model}                 one model request (a step)     CLIENT (INTERNAL: simulated)
      stairflow.node {node}          an input, fn or output node    INTERNAL

The names and the ``gen_ai.*`` attributes follow the OpenTelemetry GenAI semantic
conventions (development status; the agent and workflow spans of gen-ai-agent-spans.md, the
inference span of gen-ai-spans.md); ``stairflow.*`` attributes carry the rest.

Theory of operation. The scheduling core stays free of I/O: nothing here runs per token.
`open_spans` starts the run's span when the run opens and makes it the current span of the
run's tasks (so what a fn node or an instrumented HTTP client traces lands in the run's
trace); `RunSpans.end` derives every other span from the run's trace, once, when the run has
ended, with explicit start and end times: the wall clock when the run opened plus each
event's offset. Under a virtual clock the offsets are virtual seconds: the spans are still
emitted, anchored at the wall clock, and marked ``stairflow.virtual_time``.

No prompt, answer, system prompt or API key goes into a span: names of graphs and nodes,
models, token counts, times, finish reasons, and the (redacted) error of a failed node.

Cost: this module is imported only once the application has imported ``opentelemetry.trace``
(see `stairflow._runtime.run`); while the global provider is still the API's proxy (nothing
configured) a run asks for it once and does nothing else. The tracer is cached per provider,
so a provider set later is picked up by the next run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    TracerProvider,
)

from ._backends.redact import redact
from ._errors import BackendError
from ._graph import FnNode, InputNode, LLMNode

if TYPE_CHECKING:
    from ._runtime.run import Run

__all__ = ["RunSpans", "open_spans", "remote_parent"]

_log = logging.getLogger("stairflow")
_SCOPE = "stairflow"
_END_KINDS = ("run_end", "run_error", "run_cancel")
_KINDS = frozenset({"node_start", "node_end", "node_error", "node_cancel", "first_token",
                    "request_sent", "request_end", "request_cancel", "output", *_END_KINDS})

_cached: tuple[TracerProvider, Tracer] | None = None


def _tracer() -> Tracer | None:
    """The tracer of the application's provider; None while none is configured."""
    global _cached
    provider = trace.get_tracer_provider()
    if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
        return None
    if _cached is None or _cached[0] is not provider:
        from . import __version__

        _cached = (provider, provider.get_tracer(_SCOPE, __version__))
    return _cached[1]


@contextmanager
def remote_parent(headers: Iterable[tuple[bytes, bytes]]) -> Iterator[None]:
    """The W3C trace context in an HTTP request's ``headers`` (``traceparent``,
    ``tracestate``: the global propagator's fields), as the current context for the block;
    the current one stays if the request has none."""
    carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers
               if k.lower() in (b"traceparent", b"tracestate", b"baggage")}
    if not carrier:
        yield
        return
    try:
        token = otel_context.attach(propagate.extract(carrier))
    except Exception:  # a malformed header must never fail the request
        _log.exception("stairflow: could not read the request's trace context")
        yield
        return
    try:
        yield
    finally:
        otel_context.detach(token)


def open_spans(run: Run) -> RunSpans | None:
    """Start ``run``'s span under the current context, if the application traces (and its
    sampler keeps the run); call in the task that opens the run, as the run starts."""
    try:
        tracer = _tracer()
        if tracer is None:
            return None
        return _start(tracer, run)
    except Exception:  # tracing must never break a run
        _log.exception("stairflow: could not start the run's OpenTelemetry span")
        return None


def _start(tracer: Tracer, run: Run) -> RunSpans | None:
    parent = otel_context.get_current()
    # the wall clock at the run's t = 0 (its trace times are offsets from there)
    anchor = time.time_ns() - round(run.trace.now() * 1e9)
    span = tracer.start_span(
        f"invoke_workflow {run.graph.name}", context=parent, kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": run.graph.name,
            "stairflow.graph": run.graph.name,
            "stairflow.mode": run.graph.mode,
            "stairflow.backend": redact(run.backend_name, run.secrets),
            "stairflow.run.id": run.id,
            "stairflow.simulated": run.simulated,
            "stairflow.virtual_time": run.virtual,
        },
        start_time=anchor,
    )
    if not span.is_recording():  # sampled out: nothing more to do
        span.end(anchor)
        return None
    return RunSpans(tracer, span, trace.set_span_in_context(span, parent), anchor)


@dataclass
class _Request:
    step: int
    sent: float
    max_tokens: int
    first: float | None = None
    end: float | None = None
    data: Mapping[str, Any] | None = None  # request_end's or request_cancel's
    cancelled: bool = False


@dataclass
class _Node:
    start: float | None = None
    end: float | None = None
    kind: str | None = None  # node_end, node_error or node_cancel
    data: Mapping[str, Any] = field(default_factory=dict)
    first: float | None = None
    requests: dict[int, _Request] = field(default_factory=dict)


@dataclass(frozen=True)
class _Where:
    """Where an llm node's requests go, as far as the backend tells."""

    provider: str
    model: str
    operation: str  # chat | text_completion
    address: str | None = None
    port: int | None = None


class RunSpans:
    """A run's span, started; `end` emits the rest from the run's trace."""

    def __init__(self, tracer: Tracer, span: Span, context: otel_context.Context,
                 anchor: int) -> None:
        self.tracer = tracer
        self.span = span
        self.context = context  # the run span's: the run's tasks run in it
        self.anchor = anchor
        self._ended = False

    def enter(self) -> None:
        """Make the run's span the current one of the calling task (the run's main task,
        whose node tasks inherit it)."""
        otel_context.attach(self.context)

    def _ns(self, t: float) -> int:
        return self.anchor + round(t * 1e9)

    def end(self, run: Run) -> None:
        """Emit the node and request spans and end the run's span (once; never raises)."""
        if self._ended:
            return
        self._ended = True
        try:
            self._emit(run)
        except Exception:  # tracing must never break a run
            _log.exception("stairflow: could not emit the run's OpenTelemetry spans")
            self.span.end()

    def _emit(self, run: Run) -> None:
        nodes: dict[str, _Node] = {name: _Node() for name in run.graph.order}
        run_end: tuple[float, str] | None = None
        first_output: float | None = None
        last = 0.0
        for t, kind, name, data in run.trace.rows(_KINDS):
            last = t
            if kind in _END_KINDS:
                run_end = run_end or (t, kind)
                continue
            if kind == "output":
                if first_output is None and data.get("text"):
                    first_output = t
                continue
            node = nodes.get(name) if name is not None else None
            if node is None:
                continue
            if kind == "node_start":
                node.start = t
            elif kind in ("node_end", "node_error", "node_cancel"):
                if node.kind is None:
                    node.end, node.kind, node.data = t, kind, data
            elif kind == "first_token":
                node.first = t if node.first is None else node.first
                request = node.requests.get(data.get("step", 0))
                if request is not None and request.first is None:
                    request.first = t
            elif kind == "request_sent":
                node.requests[data["step"]] = _Request(data["step"], t, data["max_tokens"])
            else:  # request_end, request_cancel
                request = node.requests.get(data["step"])
                if request is not None and request.end is None:
                    request.end, request.data = t, data
                    request.cancelled = kind == "request_cancel"
        end = run_end[0] if run_end else max(last, run.trace.now())
        common = {"stairflow.simulated": run.simulated, "stairflow.virtual_time": run.virtual}
        for name, node in nodes.items():
            self._node(run, name, node, end, common, run.node_errors.get(name))
        self._end_run(run, run_end, end, first_output)

    def _node(self, run: Run, name: str, node: _Node, run_end: float,
              common: Mapping[str, Any], error: BaseException | None) -> None:
        spec = run.graph.nodes[name]
        start = node.start if node.start is not None else 0.0
        end = node.end if node.end is not None else run_end
        attrs: dict[str, Any] = {
            **common, "stairflow.node": name, "stairflow.node.kind": _kind(spec),
        }
        if node.first is not None:
            attrs["stairflow.ttft_s"] = node.first  # since the run started, as the Report
        if "tokens" in node.data:
            attrs["stairflow.node.tokens"] = int(node.data["tokens"])
        if node.kind == "node_cancel":
            attrs["stairflow.node.cancelled"] = True
        if node.kind == "node_error" and node.data.get("dropped"):
            attrs["stairflow.node.dropped"] = True
        llm = spec if isinstance(spec, LLMNode) else None
        where = _where(run, llm) if llm is not None else None
        if llm is not None and where is not None:
            requests = [r.data for r in node.requests.values() if r.data is not None]
            attrs.update(_genai(where, "invoke_agent"))
            attrs.update({
                "gen_ai.agent.name": name,
                "gen_ai.request.temperature": llm.temperature,
                "gen_ai.usage.input_tokens": sum(int(d.get("prompt_tokens", 0))
                                                 for d in requests),
                "gen_ai.usage.output_tokens": sum(int(d.get("tokens", 0)) for d in requests),
                "gen_ai.usage.cache_read.input_tokens": sum(int(d.get("cached_tokens", 0))
                                                            for d in requests),
                "stairflow.node.calls": len(node.requests),
            })
            if node.first is not None:
                attrs["gen_ai.response.time_to_first_chunk"] = node.first - start
            span_name = f"invoke_agent {name}"
        else:
            span_name = f"stairflow.node {name}"
        span = self.tracer.start_span(span_name, context=self.context,
                                      kind=SpanKind.INTERNAL, attributes=attrs,
                                      start_time=self._ns(start))
        failed = node.kind == "node_error"
        message = str(node.data.get("error", "")) if failed else ""
        error_type = _error_type(error)
        if llm is not None and where is not None:
            context = trace.set_span_in_context(span, self.context)
            for request in node.requests.values():
                self._request(request, llm, where, context, common, end,
                              (message, error_type) if failed else None)
        if failed:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, message))
        span.end(self._ns(end))

    def _request(self, request: _Request, spec: LLMNode, where: _Where,
                 context: otel_context.Context, common: Mapping[str, Any], node_end: float,
                 failure: tuple[str, str] | None) -> None:
        data = request.data or {}
        attrs: dict[str, Any] = {
            **common, **_genai(where, where.operation),
            "gen_ai.request.max_tokens": request.max_tokens,
            "gen_ai.request.temperature": spec.temperature,
            "gen_ai.request.stream": True,
            "gen_ai.usage.input_tokens": int(data.get("prompt_tokens", 0)),
            "gen_ai.usage.output_tokens": int(data.get("tokens", 0)),
            "gen_ai.usage.cache_read.input_tokens": int(data.get("cached_tokens", 0)),
            "stairflow.node": spec.name,
            "stairflow.step": request.step,
        }
        if request.first is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = request.first - request.sent
        if data.get("finish_reason"):
            attrs["gen_ai.response.finish_reasons"] = (str(data["finish_reason"]),)
        if request.cancelled:
            attrs["stairflow.request.cancelled"] = True
        kind = SpanKind.INTERNAL if common["stairflow.simulated"] else SpanKind.CLIENT
        span = self.tracer.start_span(f"{where.operation} {where.model}", context=context,
                                      kind=kind, attributes=attrs,
                                      start_time=self._ns(request.sent))
        if request.end is None and failure is not None:  # the request the node failed in
            span.set_attribute("error.type", failure[1])
            span.set_status(Status(StatusCode.ERROR, failure[0]))
        span.end(self._ns(request.end if request.end is not None else node_end))

    def _end_run(self, run: Run, run_end: tuple[float, str] | None, end: float,
                 first_output: float | None) -> None:
        span = self.span
        if first_output is not None:
            span.set_attribute("stairflow.ttft_s", first_output)
        span.set_attribute("stairflow.total_s", end)
        kind = run_end[1] if run_end else None
        if kind == "run_error" or (kind is None and run.error is not None):
            span.set_attribute("error.type", _error_type(run.error))
            span.set_status(Status(StatusCode.ERROR, str(run.error or "")))
        elif kind == "run_cancel":
            span.set_attribute("stairflow.cancelled", True)
        span.end(self._ns(end))


def _error_type(error: BaseException | None) -> str:
    """``error.type``: what went wrong, in a word. For a model endpoint's failure its kind
    (``read_timeout``, ``http_5xx``, ``connect``...: the words of the serve metrics; the
    backend raises its own error, without the client library's as its cause); otherwise the
    class of the error a node's error wraps (as its cause, unless the cause held a secret),
    e.g. ``ValueError``."""
    if error is None:
        return "_OTHER"
    if isinstance(error, BackendError) and error.kind != "other":
        return error.kind
    cause = error.__cause__ or error
    kind = type(cause)
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    if module.startswith("stairflow.") or module.startswith("openai."):
        module = module.split(".")[0]  # the package, not its private module
    return f"{module}.{kind.__qualname__}"


def _kind(spec: object) -> str:
    if isinstance(spec, LLMNode):
        return "llm"
    if isinstance(spec, FnNode):
        return "fn"
    return "input" if isinstance(spec, InputNode) else "output"


def _genai(where: _Where, operation: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": where.provider,
        "gen_ai.request.model": where.model,
    }
    if where.address:
        attrs["server.address"] = where.address
        if where.port is not None:
            attrs["server.port"] = where.port
    return attrs


def _where(run: Run, node: LLMNode) -> _Where:
    """The provider, model, operation and server of ``node``'s requests: an OpenAI-compatible
    backend knows each node's endpoint; other backends give their name."""
    endpoint_for = getattr(run.backend, "endpoint_for", None)
    if callable(endpoint_for):
        try:
            ep = endpoint_for(node.name, node.model)
            url = urlsplit(str(ep.base_url))
            port = url.port or {"https": 443, "http": 80}.get(url.scheme)
            operation = "text_completion" if ep.continuation == "completions" else "chat"
            return _Where("openai", str(ep.model), operation, url.hostname, port)
        except (AttributeError, ValueError):  # not the endpoint we know
            pass
    provider = "stairflow.simulated" if run.simulated else run.backend_name
    return _Where(redact(provider, run.secrets), node.model or run.backend_name, "chat")
