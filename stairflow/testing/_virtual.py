"""Running graphs in virtual time, and checking a user's graph against the invariants."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from .._backends.base import Backend
from .._backends.sim import SimBackend, SimTiming
from .._graph import FrozenGraph, Graph, Mode
from .._metrics import Report
from .._runtime.run import Run, open_run, prepare

__all__ = ["check_graph", "open_virtual_run", "run_virtual"]


def run_virtual(
    graph: Graph | FrozenGraph,
    message: str | None = "test question",
    *,
    mode: Mode = "staircase",
    backend: Backend | None = None,
    timing: SimTiming | None = None,
    during: Callable[[Run], Awaitable[Any]] | None = None,
    limit_s: float = 1e6,
) -> Report:
    """Run ``graph`` on the simulated backend under `MockClock`: exact times, no waiting.

    ``during(run)``, if given, is awaited inside the run's block (to cancel it, iterate it...).
    A run that has not ended after ``limit_s`` virtual seconds fails with `trio.TooSlowError`
    (a hang shows up as that error, instantly, instead of a stuck test).
    """
    frozen = prepare(graph, mode)
    chosen = backend or SimBackend.for_graph(frozen, timing)

    async def main() -> Report:
        with trio.fail_after(limit_s):
            async with open_run(frozen, message, backend=chosen, mode=mode) as run:
                if during is not None:
                    await during(run)
        return run.report()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def open_virtual_run(
    graph: Graph | FrozenGraph, message: str | None = "test question", **kwargs: Any
) -> Any:
    """`open_run` with the simulated backend; use inside a test already running on a
    `MockClock` (e.g. ``trio.run(main, clock=MockClock(autojump_threshold=0))``)."""
    frozen = prepare(graph, kwargs.pop("mode", "staircase"))
    timing = kwargs.pop("timing", None)
    backend = kwargs.pop("backend", None) or SimBackend.for_graph(frozen, timing)
    return open_run(frozen, message, backend=backend, **kwargs)


def check_graph(graph: Graph | FrozenGraph, message: str = "test question") -> dict[str, Report]:
    """Run ``graph`` in both modes in virtual time and assert what every graph must satisfy:
    it terminates, every edge delivers its producer's whole output in order, and no backend
    request is left open. Returns the two reports (``staircase``, ``normal``)."""
    frozen = prepare(graph)
    reports = {}
    for mode in ("staircase", "normal"):
        backend = SimBackend.for_graph(frozen)
        report = run_virtual(frozen, message, mode=mode, backend=backend)
        assert backend.active == 0, f"{mode}: {backend.active} backend requests left open"
        assert report.trace.events[-1].kind == "run_end", f"{mode}: the run did not end"
        check_conservation(report)
        reports[mode] = report
    return reports


def check_conservation(report: Report) -> None:
    """Every edge's chunks, joined, equal the producer's whole output: no loss, no
    duplicates, no reordering; chunk numbers run 0, 1, 2... and only the last is marked last."""
    texts = {e.node: e.data["text"] for e in report.trace.of("node_end")}
    # a node cancelled because no consumer needed more delivers a prefix of what it wrote
    cut_short = {e.node: e.data["text"] for e in report.trace.of("node_cancel")}
    chunks: dict[tuple[str, str], list[Any]] = {}
    for e in report.trace.of("chunk"):
        chunks.setdefault(tuple(e.data["edge"]), []).append(e.data)
    for src, dst, _ in report.trace.meta["edges"]:
        got = chunks.get((src, dst), [])
        assert [c["index"] for c in got] == list(range(len(got))), f"{src}->{dst}: order"
        assert not any(c["last"] for c in got[:-1]), f"{src}->{dst}: early last chunk"
        joined = "".join(c["text"] for c in got)
        if src in cut_short:
            assert cut_short[src].startswith(joined), f"{src}->{dst}: not a prefix"
            continue
        assert got and got[-1]["last"], f"{src}->{dst}: no last chunk"
        assert joined == texts[src], f"{src}->{dst}: chunks do not rebuild the output"
