"""Traces exported for Perfetto / chrome://tracing, checked against the trace-event format."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from hypothesis import given, settings

import stairflow as sf
from stairflow.testing import FlakyBackend, graphs, run_virtual

PHASES = {"X", "i", "s", "f", "M"}


def check_chrome(trace: dict[str, Any]) -> None:
    """The Chrome trace-event JSON object format, as Perfetto reads it, and our own rules:
    every node has a named thread, slices on a thread nest, every flow has both ends, each
    end inside a slice of its thread, and the timed events come in time order."""
    assert set(trace) >= {"traceEvents"}
    json.dumps(trace)  # plain JSON
    events = trace["traceEvents"]
    named = {e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    slices: dict[int, list[tuple[float, float]]] = defaultdict(list)
    flows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    last_ts = 0.0
    for e in events:
        assert e["ph"] in PHASES, e
        assert isinstance(e["name"], str) and isinstance(e["pid"], int)
        assert isinstance(e["tid"], int), e
        if e["ph"] == "M":
            continue
        assert isinstance(e["ts"], int | float) and e["ts"] >= last_ts, (e, last_ts)
        last_ts = e["ts"]
        if e["tid"]:
            assert e["tid"] in named, e
        if e["ph"] == "X":
            assert e["dur"] >= 0
            slices[e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
        elif e["ph"] == "i":
            assert e["s"] in ("t", "p", "g")
        else:
            flows[e["id"]].append(e)
    for tid, spans in slices.items():  # nested or apart, never crossing
        open_ends: list[float] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1] + 1e-6, (tid, start, end, open_ends)
            open_ends.append(end)
    for fid, ends in flows.items():
        assert sorted(e["ph"] for e in ends) == ["f", "s"], (fid, ends)
        start, finish = sorted(ends, key=lambda e: e["ph"] != "s")
        assert start["ts"] <= finish["ts"] and finish.get("bp") == "e"
        for end in (start, finish):
            assert any(a - 1e-6 <= end["ts"] <= b + 1e-6 for a, b in slices[end["tid"]]), end


def flows_between(trace: dict[str, Any]) -> Counter[str]:
    return Counter(e["args"]["edge"] for e in trace["traceEvents"] if e["ph"] == "s")


def test_a_moa_run_exports_its_staircase():
    report = run_virtual(sf.resolve_graph("moa"), None)
    trace = report.trace.to_chrome()
    check_chrome(trace)
    threads = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert threads == {"question", "p1", "p2", "p3", "agg", "answer"}
    # every chunk a step took is an arrow; p1's last chunks came after agg had finished
    flows = flows_between(trace)
    taken = sum(e.data["consumed"].get("p1", 0) for e in report.trace.of("step_start", "agg"))
    sent = [e for e in report.trace.of("chunk") if e.data["edge"] == ("p1", "agg")]
    assert flows["p1 -> agg"] == taken < len(sent)
    # into the output node, every chunk (the 400 tokens, then the empty last one)
    assert flows["agg -> answer"] == 401
    requests = [e for e in trace["traceEvents"] if e.get("cat") == "request"]
    assert len(requests) == report.llm_calls
    assert sum(e["args"]["cancelled"] for e in requests) == 3  # the proposers, cut off
    firsts = [e for e in trace["traceEvents"] if e["name"] == "first token"]
    assert len(firsts) == len(report.trace.of("first_token"))
    # times in microseconds
    agg_first = min(e["ts"] for e in firsts if e["tid"] == 5)
    assert agg_first == round(report.nodes["agg"].ttft_s * 1e6, 3)


def test_fn_nodes_dropped_nodes_and_normal_mode_export_too():
    async def shout(inputs: sf.Inputs):  # type: ignore[no-untyped-def]
        async for step in inputs:
            for text in step.new.values():
                yield text.upper()

    g = sf.Graph("mixed", sim={"latency_s": 0.125, "decode_tps": 8.0, "output_tokens": 12})
    g.input("q")
    g.llm("a")
    g.llm("b", on_error="drop")
    g.fn("loud", shout)
    g.connect("q", ["a", "b"])
    g.connect(["a", "b"], "loud", sf.tokens(4))
    g.connect("loud", g.output("out"))
    built = g.build()
    for mode in ("staircase", "normal"):
        frozen = built.with_mode(mode)
        report = run_virtual(frozen, "hi", mode=mode,
                             backend=FlakyBackend(sf.SimBackend.for_graph(frozen), {"b": 2}))
        trace = report.trace.to_chrome()
        check_chrome(trace)
        steps = [e for e in trace["traceEvents"] if e.get("cat") == "step" and e["tid"] == 4]
        assert steps and all(e["dur"] >= 0 for e in steps)
        assert flows_between(trace)["a -> loud"] >= 1


@settings(max_examples=40)
@given(graphs())
def test_any_graphs_trace_is_a_valid_chrome_trace(g):
    check_chrome(run_virtual(g, "q").trace.to_chrome())


def test_the_checker_catches_what_perfetto_would_choke_on():
    trace = run_virtual(sf.resolve_graph("moa"), None).trace.to_chrome()
    events = trace["traceEvents"]
    broken = [e for e in events if not (e["ph"] == "f" and e["id"] == 1)]  # a flow without end
    for bad in (broken, list(reversed(events))):
        try:
            check_chrome({"traceEvents": bad})
        except AssertionError:
            continue
        raise AssertionError("the checker let a broken trace through")
