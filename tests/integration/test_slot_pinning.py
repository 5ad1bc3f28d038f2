"""Slot pinning on a real llama-server: each node keeps the slot holding its prefix, so its
later steps are served from the prompt cache; with too few slots, requests go unpinned and
the run still answers."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import Any

import pytest
import trio

import stairflow as sf
from stairflow import Endpoint, OpenAIBackend

from .conftest import LOCAL_MODEL, Server, start_server

pytestmark = pytest.mark.integration

SEAM = 8  # prompt tokens


def append_moa(max_tokens: int = 48) -> sf.FrozenGraph:
    g = sf.resolve_graph("moa").capped(max_tokens)
    return replace(g, nodes={n: replace(v, context="append") if isinstance(v, sf.LLMNode) else v
                             for n, v in g.nodes.items()})


def run(server: Server, graph: sf.FrozenGraph, **kw: Any) -> tuple[sf.Report, list[Any]]:
    """A staircase run on ``server``; also each pinning decision, (key, slot)."""
    picked: list[Any] = []

    async def main() -> sf.Report:
        backend = OpenAIBackend(Endpoint(server.base_url, LOCAL_MODEL, None, "completions",
                                         "document", extra_body={"ignore_eos": True}),
                                remember_rates=False, **kw)
        async with backend:
            await backend.warm_up([(n.name, None) for n in graph.llm_nodes()])
            slots = backend.slots.get(server.base_url)
            if slots is not None:
                take = slots.take

                def spy(key: Hashable) -> int | None:
                    slot = take(key)
                    picked.append((key, slot))
                    return slot

                slots.take = spy  # type: ignore[method-assign]
            with trio.fail_after(300):
                async with sf.open_run(graph, "Why is the sky blue?", backend=backend) as r:
                    pass
        return r.report()

    return trio.run(main), picked


def agg_steps(report: sf.Report) -> list[dict[str, Any]]:
    closed = report.trace.of("request_end", "agg") + report.trace.of("request_cancel", "agg")
    return [e.data for e in sorted(closed, key=lambda e: e.data["step"])]


def test_each_node_keeps_its_slot_and_its_later_steps_are_served_from_the_cache(
        server: Server):
    report, picked = run(server, append_moa())
    assert report.output.strip()
    slots = {key[1]: set() for key, _ in picked}
    for key, slot in picked:
        slots[key[1]].add(slot)
    # four nodes, four slots: every request pinned, each node always on its own slot
    assert all(len(s) == 1 and None not in s for s in slots.values()), picked
    assert len({next(iter(s)) for s in slots.values()}) == len(slots) == 4
    # (a step cut before it reported usage counts no prompt tokens)
    later = [d for d in agg_steps(report) if d["step"] > 0 and d["prompt_tokens"]]
    assert later, f"the aggregator wrote in one step only: {agg_steps(report)}"
    first = agg_steps(report)[0]
    for d in later:  # each later step reuses at least the prompt the first step read (less a
        # few tokens: where the answer meets "Answer:", re-reading it may tokenize otherwise)
        assert d["cached_tokens"] >= first["prompt_tokens"] - SEAM, agg_steps(report)


def test_a_server_with_too_few_slots_still_answers_unpinned():
    small = start_server(slots=1)
    try:
        report, picked = run(small, append_moa(24))
    finally:
        small.stop()
    assert report.output.strip()
    assert all(report.nodes[n].tokens > 0 for n in ("p1", "p2", "p3", "agg"))
    assert any(slot is None for _, slot in picked)  # fell back: the server queued those
    assert any(slot == 0 for _, slot in picked)


def test_pinning_can_be_turned_off(server: Server):
    report, picked = run(server, append_moa(16), pin_slots=False)
    assert report.output.strip() and picked == []
