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
from ._checks import check_run
from ._reference import check_timeline, timeline_applies

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
    """Run ``graph`` in both modes in virtual time and check every invariant on each run
    (`check_run`): it terminates, leaves no request open, every edge delivers its producer's
    whole output in order, every chunk is the one its trigger asks for whatever the token
    split, nothing happens before its cause, chunks are delivered promptly; and, where the
    exact-timeline reference applies (no fn nodes, no deadline triggers: `timeline_applies`),
    every time equals the timing model's (`check_timeline`). Raises `InvariantError` naming
    the invariant and the node or edge; returns the two reports (``staircase``, ``normal``)."""
    frozen = prepare(graph)
    exact = timeline_applies(frozen)
    reports = {}
    for mode in ("staircase", "normal"):
        backend = SimBackend.for_graph(frozen)
        report = run_virtual(frozen, message, mode=mode, backend=backend)
        check_run(report, frozen, backend)
        if exact:
            check_timeline(report, frozen, message, backend=backend)
        reports[mode] = report
    return reports
