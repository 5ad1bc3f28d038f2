"""Helpers for testing graphs: the simulated backend in virtual time, fault injection, and
Hypothesis strategies for random graphs. ``import stairflow`` does not load this module.

    from stairflow.testing import run_virtual, check_graph

    report = run_virtual(my_graph, "a question")        # exact simulated timings, instantly
    check_graph(my_graph, "a question")                  # the invariants, on your graph
"""

from __future__ import annotations

from ._faults import FlakyBackend, InjectedFault
from ._strategies import dyadic_timings, graphs, moa_graphs, triggers
from ._virtual import check_graph, open_virtual_run, run_virtual

__all__ = [
    "FlakyBackend",
    "InjectedFault",
    "check_graph",
    "dyadic_timings",
    "graphs",
    "moa_graphs",
    "open_virtual_run",
    "run_virtual",
    "triggers",
]
