"""An fn node raising KeyboardInterrupt: the node's error, like any other failure; a real
Ctrl-C while a node's code runs still stops the whole run (and the program)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import pytest

import stairflow as sf


def _graph(fn: sf.FnNode | object) -> sf.FrozenGraph:
    g = sf.Graph("interrupted")
    q = g.input("q")
    f = g.fn("f", fn)  # type: ignore[arg-type]
    g.connect(q, f)
    g.connect(f, g.output("o"))
    return g.build()


def test_an_fn_raising_keyboard_interrupt_fails_its_node():
    async def fn(inputs: sf.Inputs) -> AsyncIterator[str]:
        yield "partial"
        raise KeyboardInterrupt

    with pytest.raises(sf.NodeError) as caught:
        sf.run(_graph(fn), "why?", virtual_clock=True)
    assert caught.value.node == "f"
    assert "raised KeyboardInterrupt; raise an Exception subclass" in str(caught.value)


def test_a_real_ctrl_c_while_an_fn_runs_still_interrupts_the_run():
    async def fn(inputs: sf.Inputs) -> AsyncIterator[str]:
        yield "partial"
        signal.raise_signal(signal.SIGINT)  # as the terminal sends it: Trio's handler raises
        for _ in range(1000):  # the handler runs between two bytecodes of this code
            pass
        yield "never"

    with pytest.raises(KeyboardInterrupt):
        sf.run(_graph(fn), "why?", virtual_clock=True)
