"""A run: one message through one graph. `open_run` inside Trio, `run` from plain code.

Theory of operation. A run owns one nursery with a task per node. Producers deliver chunks
straight into their consumers' inboxes (see `inbox`), so the whole graph advances as fast as
its joins allow. A node that fails either ends the run (its error, naming it, is raised when
the run's block exits) or, with ``on_error = "drop"``, is dropped and its consumers go on.
Cancelling the run - `Run.cancel`, an exception in the caller's block, an outer cancel
scope - cancels every task and every backend request it started; none outlives the block.
A node whose consumers have all finished is cancelled too: nobody needs the rest of its
output (``node_cancel`` in the trace).
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Unpack

import trio
import trio.testing

from .._backends.base import Backend, describe_backend
from .._backends.redact import redact
from .._backends.select import BackendChoice, EndpointOptions, open_backend
from .._core.policy import Rates
from .._errors import ConfigError, InternalError, NodeError, StairflowError, unwrap
from .._graph import FnNode, FrozenGraph, Graph, InputNode, LLMNode, Mode, OutputNode
from .._joins import join_any
from .._metrics import Report
from .._trace import Event, Trace
from .clock import is_virtual, settle
from .emitter import Emitter
from .inbox import LiveInbox
from .nodes import own_error, run_fn, run_input, run_llm, run_output

if TYPE_CHECKING:
    from .._otel import RunSpans

__all__ = ["Run", "open_run", "prepare", "run"]

_END_KINDS = ("run_end", "run_error", "run_cancel")
_RUN_IDS = itertools.count(1)  # `Request.run_id`


def prepare(graph: Graph | FrozenGraph, mode: Mode = "staircase") -> FrozenGraph:
    if isinstance(graph, str):
        raise ConfigError(f"graph={graph!r} is a name, not a graph; load it with "
                          f"sf.resolve_graph({graph!r}) (a bundled name or a file path)")
    if not isinstance(graph, Graph | FrozenGraph):
        raise ConfigError(f"graph={type(graph).__name__}; give a stairflow Graph or "
                          "FrozenGraph (sf.resolve_graph or sf.load_graph make one)")
    frozen = graph.build() if isinstance(graph, Graph) else graph
    return frozen.with_mode(mode)


class Run:
    """A run in progress. Iterate it for its events as they happen; `report()` at the end."""

    def __init__(self, graph: FrozenGraph, query: str, backend: Backend) -> None:
        info = describe_backend(backend)
        self.id = next(_RUN_IDS)
        self.graph = graph
        self.query = query
        self.backend = backend
        self.backend_name = info.name
        self.simulated = info.simulated
        self.secrets = info.secrets  # redacted from every error the run records or raises
        self.virtual = is_virtual()
        # the clock's own method: trio.current_time goes through two more calls, per token
        self.trace = Trace(trio.lowlevel.current_clock().current_time, meta={
            "graph": graph.name, "mode": graph.mode, "backend": info.name,
            "simulated": info.simulated, "input": graph.input, "output": graph.output,
            "nodes": list(graph.order),
            "edges": [[e.src, e.dst, e.trigger.describe()] for e in graph.edges],
        })
        self.inboxes = {
            name: LiveInbox(
                [e.src for e in graph.inputs_of(name)],
                node.join if isinstance(node, LLMNode | FnNode) else _ANY,
                query, eager=not isinstance(node, FnNode), cap=graph.edge_buffer,
                virtual=self.virtual, clock=trio.current_time,
            )
            for name, node in graph.nodes.items()
            if not isinstance(node, InputNode)
        }
        self.emitters = {
            name: Emitter(name, [(e, self.inboxes[e.dst]) for e in graph.outputs_of(name)],
                          self.trace, self.virtual)
            for name in graph.nodes
        }
        self.output_parts: list[str] = []
        self._rates = getattr(backend, "rates", None)  # optional: see _core/policy.py
        self._scopes: dict[str, trio.CancelScope] = {}
        self._done: set[str] = set()
        self.error: StairflowError | None = None
        self.node_errors: dict[str, NodeError] = {}  # every node that failed, dropped or not
        self.cancelled = False
        self.spans: RunSpans | None = None  # OpenTelemetry, when the application traces
        self._scope = trio.CancelScope()
        self._nodes_scope = trio.CancelScope()
        self._new_event = trio.lowlevel.ParkingLot()  # event iterators waiting
        self.trace.wakers.append(self._on_event)

    def rates_for(self, node: str) -> Rates | None:
        """The backend's rates for ``node``, if it knows them (the simulator does)."""
        rates = self._rates(node) if callable(self._rates) else None
        return rates if isinstance(rates, Rates) else None

    @property
    def output(self) -> str:
        """The output text received so far."""
        return "".join(self.output_parts)

    @property
    def finished(self) -> bool:
        return self.trace.last_kind() in _END_KINDS

    def cancel(self) -> None:
        """Stop the run now: every node task and backend request is cancelled."""
        self.cancelled = True
        self._scope.cancel()

    def report(self) -> Report:
        return Report.from_trace(self.trace)

    def _on_event(self) -> None:
        if self._new_event:
            self._new_event.unpark_all()

    def __aiter__(self) -> AsyncIterator[Event]:
        return _Events(self)

    async def _main(self) -> None:
        if self.spans is not None:  # the node tasks, started from here, inherit it
            self.spans.enter()
        self.trace.record("run_start", graph=self.graph.name, mode=self.graph.mode,
                          backend=self.backend_name, simulated=self.simulated)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nodes_scope = nursery.cancel_scope
                    for name in self.graph.order:
                        nursery.start_soon(self._node_task, name)
        except BaseException:  # cancelled from outside (an outer scope, the caller's error)
            if not self.finished:
                self.trace.record("run_cancel")
            raise
        rates = self._measured()
        if self.error is not None:
            self.trace.record("run_error", error=str(self.error), **rates)
        elif self._scope.cancelled_caught or self.cancelled:
            self.trace.record("run_cancel", **rates)
        else:
            self.trace.record("run_end", **rates)

    def _measured(self) -> dict[str, Any]:
        """The rates a real backend measured (see `stairflow._backends.meter`), for the
        end event: ``{"rates": [...]}``, or nothing when it measured none."""
        measured = getattr(self.backend, "measured_rates", None)
        rates = tuple(r.as_json() for r in measured()) if callable(measured) else ()
        return {"rates": rates} if rates else {}

    def _body(self, name: str) -> Callable[[], Awaitable[None]]:
        node = self.graph.nodes[name]
        if isinstance(node, InputNode):
            return lambda: run_input(self, name)
        if isinstance(node, OutputNode):
            return lambda: run_output(self, name)
        if isinstance(node, LLMNode):
            return lambda: run_llm(self, node)
        return lambda: run_fn(self, node)

    async def _node_task(self, name: str) -> None:
        emitter, inbox = self.emitters[name], self.inboxes.get(name)
        scope = self._scopes[name] = trio.CancelScope()
        self.trace.record("node_start", name)
        try:
            with scope:
                if emitter.timed:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(emitter.tick)
                        await self._body(name)()
                        await emitter.close()
                else:
                    await self._body(name)()
                    await emitter.close()
        except BaseExceptionGroup as group:  # from the ticker's nursery
            err = own_error(group)
            if err is group:
                raise
            self._fail(name, unwrap(err))
        except Exception as exc:  # every failure becomes a NodeError
            self._fail(name, unwrap(exc))
        else:
            if scope.cancelled_caught:
                self.trace.record("node_cancel", name, reason="no consumer needs its output",
                                  tokens=emitter.tokens, text=emitter.text)
            else:
                self.trace.record("node_end", name, tokens=self._tokens_of(name),
                                  text=emitter.text)
        finally:
            if inbox is not None:
                inbox.finish()
        self._done.add(name)
        await self._release(name)

    def _tokens_of(self, name: str) -> int:
        if name != self.graph.output:
            return self.emitters[name].tokens
        # the output node passes its input on without an emitter: count what it received
        return sum(data["tokens"] for _, _, _, data in self.trace.rows(("chunk",))
                   if data["edge"][1] == name)

    async def _release(self, name: str) -> None:
        """Stop producers whose every consumer has finished: their output is not needed
        (e.g. proposers still writing when the aggregator has already ended its answer)."""
        producers = [e.src for e in self.graph.inputs_of(name) if e.src not in self._done]
        if not producers:
            return
        await settle(self.virtual)  # what ends at this very instant ends on its own
        for src in producers:
            if src not in self._done and all(
                e.dst in self._done for e in self.graph.outputs_of(src)
            ):
                self._scopes[src].cancel()

    def _clean(self, exc: BaseException | None) -> bool:
        text = "" if exc is None else f"{exc!r} {exc} {exc.__cause__!r}"
        return redact(text, self.secrets) == text

    def _fail(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, NodeError) and exc.node == name:
            err, cause = exc, exc.__cause__
            if self.secrets:  # whatever a backend or user code put into it
                err = copy.copy(exc)  # its class and attributes (a BackendError's transient)
                NodeError.__init__(err, name, redact(exc.reason, self.secrets))
        else:
            err = NodeError(name, redact(f"{type(exc).__name__}: {exc}", self.secrets))
            cause = exc
        # the original exception goes along for its traceback, unless it holds a secret
        err.__cause__ = cause if self._clean(cause) else None
        err.__suppress_context__ = True
        node = self.graph.nodes[name]
        drop = getattr(node, "on_error", "fail") == "drop"
        self.node_errors[name] = err
        self.trace.record("node_error", name, error=str(err), dropped=drop,
                          tokens=self.emitters[name].tokens)
        if drop:
            self.emitters[name].drop()
            return
        if self.error is None:
            self.error = err
        self._nodes_scope.cancel()


_ANY = join_any()


class _Events:
    """Cursor over a run's trace: every event once, in order, until the run ends."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._i = 0

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        events = self._run.trace.events
        if self._i and events[self._i - 1].kind in _END_KINDS:
            raise StopAsyncIteration
        while self._i >= len(events):
            await self._run._new_event.park()
        self._i += 1
        return events[self._i - 1]


def _message(message: object, graph: FrozenGraph) -> str:
    if message is None:
        if graph.default_input is None:
            raise ConfigError(f"graph '{graph.name}' needs a message: pass one to the run")
        return graph.default_input
    if not isinstance(message, str):
        raise ConfigError(f"the message must be a str (the user's question), got "
                          f"{type(message).__name__}")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:  # e.g. undecodable bytes from a terminal or a file
        raise ConfigError("the message is not valid UTF-8 text; check its encoding") from None
    return message


@asynccontextmanager
async def open_run(
    graph: Graph | FrozenGraph,
    message: str | None = None,
    *,
    backend: BackendChoice | Backend | None = None,
    mode: Mode = "staircase",
    **options: Unpack[EndpointOptions],
) -> AsyncIterator[Run]:
    """Start a run inside Trio; leaving the block waits for it to end (or `Run.cancel` it).

    ``backend``: ``None``/``"auto"`` (each node's own endpoint, else ``base_url=``/``model=``
    from ``options``, else the local model), ``"local"``, ``"openai"``, ``"sim"`` (the
    simulated backend), or a `Backend` object. See docs/backends.md for the precedence.
    Raises the failing node's `NodeError` on exit if the run failed.
    """
    frozen = prepare(graph, mode)
    query = _message(message, frozen)
    if is_virtual() and frozen.llm_nodes() and (backend is None
                                                 or backend in ("auto", "local", "openai")):
        raise ConfigError("a run in virtual time (MockClock) needs the simulated backend: pass "
                          "backend='sim' or a SimBackend")
    async with open_backend(frozen, backend, **options) as chosen:
        warm_up = getattr(chosen, "warm_up", None)  # optional: see _backends/base.py
        if callable(warm_up):
            await warm_up([(n.name, n.model) for n in frozen.llm_nodes()])
        the_run = Run(frozen, query, chosen)
        the_run.spans = _open_spans(the_run)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(the_run._main)
                yield the_run
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        finally:
            if the_run.spans is not None:
                the_run.spans.end(the_run)
    if the_run.error is not None:
        raise the_run.error
    if not the_run.finished:
        raise InternalError("the run's tasks ended without an end event")


def _open_spans(run: Run) -> RunSpans | None:
    """The run's OpenTelemetry spans (`stairflow._otel`), started in the opening task's
    context, if the application traces. An application that has configured a tracer provider
    has imported ``opentelemetry.trace``; until then nothing is imported, and nothing done."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from .._otel import open_spans

    return open_spans(run)


def run(
    graph: Graph | FrozenGraph,
    message: str | None = None,
    *,
    backend: BackendChoice | Backend | None = None,
    mode: Mode = "staircase",
    virtual_clock: bool = False,
    **options: Unpack[EndpointOptions],
) -> Report:
    """Run a graph from plain (non-Trio) code and return its `Report`.

    ``backend`` and ``options`` as for `open_run`. ``virtual_clock=True`` runs the simulated
    backend under `trio.testing.MockClock`: exact timings, no waiting.
    """
    if _inside_trio():
        raise ConfigError("sf.run() cannot run inside Trio; use `async with sf.open_run(...)`")
    frozen = prepare(graph, mode)
    query = _message(message, frozen)
    if virtual_clock:
        backend = "sim" if backend is None else backend
        if isinstance(backend, str) and backend not in ("sim", "simulated"):
            raise ConfigError(f"the virtual clock needs the simulated backend, not {backend!r}")
        if not isinstance(backend, str):
            info = describe_backend(backend)
            if not info.simulated:
                raise ConfigError(f"the virtual clock needs a simulated backend, not {info.name}")

    async def main() -> Report:
        async with open_run(frozen, query, backend=backend, mode=mode, **options) as r:
            pass
        return r.report()

    clock = trio.testing.MockClock(autojump_threshold=0) if virtual_clock else None
    return trio.run(main, clock=clock)


def _inside_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
