"""The simulator's batches change nothing: a run is the same whether the simulated streams
hand over the tokens that complete no chunk in one wake-up (`_SimStream.take`) or one at a
time, in both modes, with every kind of trigger, and when the run is cancelled midway."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import stairflow as sf
from stairflow._backends.sim import _SimStream
from stairflow.testing import graphs, run_virtual

ALL_TRIGGERS = ("tokens", "schedule", "sentence", "paragraph", "regex", "complete", "interval")


def events(report: sf.Report) -> list[tuple[Any, ...]]:
    # in any order within an instant (Trio shuffles what is due at once); the output node's
    # steps may take one instant's chunks together or apart, so its text events are left out
    return sorted((e.t, e.kind, e.node or "", repr(sorted(e.data.items())))
                  for e in report.trace.events if e.kind != "output")


def both_ways(g: Any, **kw: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    batched = events(run_virtual(g, **kw))
    with pytest.MonkeyPatch.context() as mp:
        mp.delattr(_SimStream, "take")
        one_by_one = events(run_virtual(g, **kw))
    return batched, one_by_one


@settings(max_examples=200)
@given(graphs(trigger_kinds=ALL_TRIGGERS, empty_answers=True),
       st.sampled_from(["staircase", "normal"]), st.none() | st.floats(0, 5))
def test_a_run_is_the_same_with_and_without_batches(g, mode, cancel_at):
    async def cancel(run: sf.Run) -> None:
        await trio.sleep(cancel_at)
        run.cancel()

    batched, one_by_one = both_ways(g, mode=mode, during=None if cancel_at is None else cancel)
    assert batched == one_by_one


def test_a_batch_cut_by_a_cancellation_keeps_the_tokens_due_by_then():
    # p reads its 5 prompt tokens in 1/8 s, then writes a token every 1/8 s; its edge to the
    # output waits for the whole answer, so everything after the first token comes in one
    # batch, due at 5 s. Cancelled at 1.0625 s, p has written the 8 tokens due by then (the
    # last at 1 s), as one at a time it would have.
    g = sf.Graph("cut", sim={"latency_s": 0.0, "prefill_tps": 40.0, "decode_tps": 8.0,
                             "output_tokens": 40})
    g.input("q")
    g.llm("p")
    g.connect("q", "p")
    g.connect("p", g.output("out"), sf.complete())

    async def cancel(run: sf.Run) -> None:
        await trio.sleep(1.0625)
        run.cancel()

    batched, one_by_one = both_ways(g, during=cancel)
    assert batched == one_by_one
    cut = [e for e in batched if e[1] == "request_cancel"]
    assert len(cut) == 1 and "('tokens', 8)" in cut[0][3]


async def slow(inputs: sf.Inputs) -> Any:
    async for step in inputs:
        await trio.sleep(2.0)  # busy between steps: p waits for room on its edge
        yield "".join(step.new.values())


def test_tokens_held_back_by_a_busy_consumer_come_when_they_are_taken():
    # p's edge into a busy fn node holds 1 chunk of 4 tokens: p's third chunk, complete at
    # 1.5 s, waits until f has done its step at 2.5 s, and the tokens due meanwhile are
    # written then, not when they were due (one at a time, a stream asked for a token
    # already due hands it over at once)
    g = sf.Graph("held", edge_buffer=1, sim={"latency_s": 0.0, "prefill_tps": 40.0,
                                             "decode_tps": 8.0, "output_tokens": 24})
    g.input("q")
    g.llm("p")
    g.fn("f", slow)
    g.connect("q", "p")
    g.connect("p", "f", sf.tokens(4))
    g.connect("f", g.output("out"))
    batched, one_by_one = both_ways(g)
    assert batched == one_by_one
    chunks = [e for e in batched if e[1] == "chunk" and "('p', 'f')" in e[3]]
    assert [e[0] for e in chunks[:5]] == [0.5, 1.0, 2.5, 2.5, 2.5]
    assert "('first_token_s', 2.5)" in chunks[3][3]  # due at 1.625 s, held back
