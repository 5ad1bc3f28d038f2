"""Graphs for the batch command's tests, named on the command line as module:attribute."""

from __future__ import annotations

from collections.abc import AsyncIterator

import stairflow as sf


async def _explode(inputs: sf.Inputs) -> AsyncIterator[str]:
    """Echo the question; fail on "boom"."""
    if "boom" in inputs.query:
        raise ValueError("boom")
    yield inputs.query


def _boom() -> sf.Graph:
    g = sf.Graph("boom")
    g.input("q")
    g.fn("f", _explode)
    g.connect("q", "f")
    g.connect("f", g.output("out"))
    return g


boom = _boom()
