"""Helpers for testing graphs: the simulated backend in virtual time, the invariants as
checks, the exact-timeline reference, fault injection, and Hypothesis strategies for random
graphs. ``import stairflow`` does not load this module, and only the strategies need
Hypothesis (the ``test`` extra).

    from stairflow.testing import check_graph, check_timeline, run_virtual

    report = run_virtual(my_graph, "a question")        # exact simulated timings, instantly
    check_graph(my_graph, "a question")                  # the invariants, on your graph
    check_timeline(report, my_graph)                     # every time as the timing model says
"""

from __future__ import annotations

from typing import Any

from ._checks import (
    InvariantError,
    check_causality,
    check_conservation,
    check_promptness,
    check_requests,
    check_run,
    check_termination,
    check_triggers,
)
from ._faults import FlakyBackend, InjectedFault
from ._reference import NodeTimeline, check_timeline, expected_timeline, timeline_applies
from ._virtual import check_graph, open_virtual_run, run_virtual

__all__ = [
    "FlakyBackend",
    "InjectedFault",
    "InvariantError",
    "NodeTimeline",
    "check_causality",
    "check_conservation",
    "check_graph",
    "check_promptness",
    "check_requests",
    "check_run",
    "check_termination",
    "check_timeline",
    "check_triggers",
    "dyadic_timings",
    "expected_timeline",
    "graphs",
    "moa_graphs",
    "open_virtual_run",
    "run_virtual",
    "timeline_applies",
    "triggers",
]

_STRATEGIES = ("dyadic_timings", "graphs", "moa_graphs", "triggers")


def __getattr__(name: str) -> Any:
    # the strategies need Hypothesis; load it only when one is asked for
    if name not in _STRATEGIES:
        raise AttributeError(f"module 'stairflow.testing' has no attribute {name!r}")
    try:
        from . import _strategies
    except ModuleNotFoundError as exc:
        if exc.name != "hypothesis":
            raise
        raise ModuleNotFoundError(
            f"stairflow.testing.{name} needs Hypothesis: pip install 'stairflow[test]'",
            name="hypothesis",
        ) from None
    return getattr(_strategies, name)
