"""The runtime on small hand-made graphs, in virtual time, with exact expected times."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import trio
import trio.testing

import stairflow as sf
from stairflow.testing import FlakyBackend, check_graph, open_virtual_run, run_virtual

FAST = {"latency_s": 0.5, "prefill_tps": 1024.0, "decode_tps": 8.0}


def chain(**b: object) -> sf.Graph:
    g = sf.Graph("chain", sim=FAST)
    g.input("q")
    g.llm("a", sim={"output_tokens": 16})
    g.llm("b", **b)
    g.connect("q", "a")
    g.connect("a", "b", sf.tokens(4))
    g.connect("b", g.output("out"))
    return g


def test_a_downstream_node_starts_after_the_first_chunk_not_the_last():
    report = run_virtual(chain(sim={"output_tokens": 8}), "hi")
    a_first = report.nodes["a"].ttft_s
    # a's 4th token arrives 3 decode steps after its first; b starts right then
    b_start = report.trace.of("step_start", "b")[0].t
    assert b_start == a_first + 3 / 8
    normal = run_virtual(chain(sim={"output_tokens": 8}), "hi", mode="normal")
    assert normal.trace.of("step_start", "b")[0].t == a_first + 15 / 8
    assert report.ttft_s < normal.ttft_s


def test_steps_follow_the_node_schedule_then_run_to_the_end():
    report = run_virtual(chain(steps=[2, 3], sim={"output_tokens": 40}, max_tokens=40), "hi")
    sizes = [e.data["tokens"] for e in report.trace.of("step_end", "b")]
    finals = [e.data["final"] for e in report.trace.of("step_start", "b")]
    # a ends (2.379 s) while b's second step is writing, one token to go: it finishes that
    # (2.391 s, sooner than a new request could) and the final step starts then
    assert not report.trace.of("request_cancel", "b")
    assert sizes == [2, 3, 35]
    assert finals[-1] and not any(finals[:-1])
    assert sum(sizes) == 40 == report.nodes["b"].tokens


def test_max_tokens_caps_a_node():
    report = run_virtual(chain(max_tokens=5, sim={"output_tokens": 100}), "hi")
    assert report.nodes["b"].tokens == 5


class Spy(sf.SimBackend):
    """The simulator, keeping every request it is sent."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.seen: list[sf.Request] = []

    def open_stream(self, request):  # type: ignore[no-untyped-def]
        self.seen.append(request)
        return super().open_stream(request)


def test_each_step_continues_the_answer_so_far():
    g = chain(steps=[2], sim={"output_tokens": 6}).build()
    backend = Spy.for_graph(g)
    run_virtual(g, "hi", backend=backend)
    b = [r for r in backend.seen if r.node == "b"]
    # the third step is cut before its first token, when a ends: the final one starts there
    assert [r.position for r in b] == [0, 2, 4, 4]
    assert b[0].prefix == ""
    assert all(later.prefix.startswith(earlier.prefix) for earlier, later in itertools.pairwise(b))
    assert b[1].prefix and len(b[1].prefix.split()) == 2


def test_auto_steps_are_sized_from_the_rates_and_each_prompt():
    moa = sf.resolve_graph("moa")
    g = dataclasses.replace(moa, nodes={**moa.nodes, "agg": dataclasses.replace(
        moa.nodes["agg"], steps="auto", step_scale_s=8.0)})
    backend = Spy.for_graph(g)
    run_virtual(g, None, backend=backend)
    agg = [r for r in backend.seen if r.node == "agg"]
    rates = backend.rates("agg")
    # paper timing: 50 ms + prompt/4000 s of fixed cost, 60 tokens/s: sqrt(2 c 8) s of writing
    want = [math.ceil(60 * math.sqrt(16 * (0.05 + rates.count(r.messages, r.prefix) / 4000)))
            for r in agg]
    assert [r.max_tokens for r in agg[:-1]] == want[:-1]
    assert len(set(want)) == len(want)  # each from its own prompt: they grow with it
    # the first prompt is 93 tokens: 0.073 s of fixed cost, then 1.08 s of writing
    assert (rates.count(agg[0].messages, agg[0].prefix), agg[0].max_tokens) == (93, 65)


def test_auto_steps_without_rates_take_a_growing_schedule():
    class NoRates(Spy):
        def rates(self, node: str) -> None:  # type: ignore[override]
            return None

    g = sf.Graph("long", sim=FAST)
    g.input("q")
    g.llm("a", sim={"output_tokens": 600}, max_tokens=600)
    g.llm("b", steps="auto", max_tokens=600, sim={"output_tokens": 500})
    g.connect("q", "a")
    g.connect("a", "b", sf.tokens(4))
    g.connect("b", g.output("out"))
    backend = NoRates.for_graph(g.build())
    run_virtual(g, "hi", backend=backend)
    assert [r.max_tokens for r in backend.seen if r.node == "b"][:4] == [32, 64, 128, 128]


def test_join_any_and_quorum_and_straggler_timeout():
    def moa(join: object) -> sf.Graph:
        g = sf.Graph("m", sim=FAST)
        g.input("q")
        g.llm("fast", sim={"decode_tps": 64.0, "output_tokens": 8})
        g.llm("slow", sim={"latency_s": 10.0, "output_tokens": 8})
        g.llm("agg", join=join, sim={"output_tokens": 4})
        g.connect("q", ["fast", "slow"])
        g.connect(["fast", "slow"], "agg", sf.tokens(8))
        g.connect("agg", g.output("o"))
        return g

    fast_done = run_virtual(moa("all")).nodes["fast"].done_s
    slow_done = run_virtual(moa("all")).nodes["slow"].done_s
    start = lambda join: run_virtual(moa(join)).trace.of("step_start", "agg")[0].t  # noqa: E731
    assert start("all") == slow_done
    assert start("any") == fast_done
    assert start({"quorum": 1}) == fast_done
    assert start({"quorum": 2}) == slow_done
    assert start({"policy": "all", "max_wait_s": 1.0}) == fast_done + 1.0


def test_interval_trigger_cuts_by_time():
    g = sf.Graph("i", sim=FAST)
    g.input("q")
    g.llm("a", sim={"output_tokens": 20})
    g.llm("b", steps=[1], sim={"output_tokens": 4})  # one token a step: b reads to a's end
    g.connect("q", "a")
    g.connect("a", "b", sf.interval(1.0))
    g.connect("b", g.output("o"))
    report = run_virtual(g)
    first = report.nodes["a"].ttft_s
    chunks = [e for e in report.trace.of("chunk") if e.data["edge"] == ("a", "b")]
    # 8 tokens/s, token k at first + k/8 (k = 0..19). A chunk holds every token that arrived
    # up to and including its deadline, 1 s after its own first token: tokens 0-8 (cut at
    # first + 1), 9-17 (first token at 9/8, cut at 17/8), then the last two at the end (19/8).
    assert [e.data["tokens"] for e in chunks] == [9, 9, 2]
    assert [e.t - first for e in chunks] == [1.0, 17 / 8, 19 / 8]
    assert [e.data["first_token_s"] - first for e in chunks] == [0.0, 9 / 8, 18 / 8]
    assert [e.data["last"] for e in chunks] == [False, False, True]
    assert "".join(e.data["text"] for e in chunks) == report.trace.of("node_end", "a")[0].data["text"]
    # b steps on each chunk as it comes
    assert [e.t - first for e in report.trace.of("step_start", "b")][:2] == [1.0, 17 / 8]


async def upper(inputs: sf.Inputs):
    async for step in inputs:
        for text in step.new.values():
            yield text.upper()


async def broken(inputs: sf.Inputs):
    async for _ in inputs:
        raise ValueError("bad data")
        yield ""  # pragma: no cover


async def wrong_type(inputs: sf.Inputs):
    async for _ in inputs:
        yield 42  # type: ignore[misc]


def fn_graph(fn: object, **kw: object) -> sf.Graph:
    g = sf.Graph("f", sim=FAST)
    g.input("q")
    g.llm("a", sim={"output_tokens": 12})
    g.fn("f", fn, **kw)  # type: ignore[arg-type]
    g.connect("q", "a")
    g.connect("a", "f", sf.tokens(3))
    g.connect("f", g.output("o"))
    return g


def test_fn_nodes_consume_step_by_step_and_stream_text():
    report = run_virtual(fn_graph(upper))
    assert report.output == report.trace.of("node_end", "a")[0].data["text"].upper()
    assert len(report.trace.of("step_start", "f")) >= 4


def test_fn_failures_name_the_node():
    with pytest.raises(sf.NodeError, match=r"node 'f' failed: ValueError: bad data"):
        run_virtual(fn_graph(broken))
    with pytest.raises(sf.NodeError, match=r"node 'f' failed: yielded int; yield str text"):
        run_virtual(fn_graph(wrong_type))


def test_a_backend_failing_mid_stream_names_the_node_and_never_hangs():
    g = chain(sim={"output_tokens": 30}).build()
    sim = sf.SimBackend.for_graph(g)
    with pytest.raises(sf.NodeError) as info:
        run_virtual(g, backend=FlakyBackend(sim, {"b": 7}))
    assert info.value.node == "b"
    assert str(info.value) == (
        "node 'b' failed: InjectedFault: injected failure: connection reset mid-stream")
    assert sim.active == 0


def test_drop_policy_lets_the_aggregator_go_on_without_the_failed_proposer():
    g = sf.Graph("m", sim=FAST)
    g.input("q")
    g.llm("p1", sim={"output_tokens": 8})
    g.llm("p2", sim={"output_tokens": 8}, on_error="drop")
    g.llm("agg", sim={"output_tokens": 30}, steps=[2])
    g.connect("q", ["p1", "p2"])
    g.connect(["p1", "p2"], "agg", sf.tokens(2))
    g.connect("agg", g.output("o"))
    fg = g.build()
    seen: list[sf.Request] = []

    class Spy(FlakyBackend):
        def open_stream(self, request):  # type: ignore[no-untyped-def]
            seen.append(request)
            return super().open_stream(request)

    report = run_virtual(fg, backend=Spy(sf.SimBackend.for_graph(fg), {"p2": 3}))
    assert report.trace.events[-1].kind == "run_end"
    err = report.trace.of("node_error", "p2")[0]
    assert err.data["dropped"] and err.data["tokens"] == 3
    p2_text = "".join(e.data["text"] for e in report.trace.of("chunk") if e.data["edge"][0] == "p2")
    agg = [r for r in seen if r.node == "agg"]
    assert p2_text in agg[0].all_text()
    assert p2_text not in agg[-1].all_text()


def test_all_inputs_dropped_fails_the_consumer():
    g = sf.Graph("m", sim=FAST)
    g.input("q")
    g.llm("p", on_error="drop")
    g.llm("agg")
    g.connect("q", "p")
    g.connect("p", "agg")
    g.connect("agg", g.output("o"))
    fg = g.build()
    with pytest.raises(sf.NodeError, match="node 'agg' failed: every input failed and was dropped"):
        run_virtual(fg, backend=FlakyBackend(sf.SimBackend.for_graph(fg), {"p": 0}))


def test_open_run_streams_events_as_they_happen():
    async def main() -> list[str]:
        kinds = []
        async with open_virtual_run(chain(sim={"output_tokens": 4}), "hi") as run:
            async for event in run:
                kinds.append(event.kind)
        assert run.output == run.report().output
        return kinds

    kinds = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    last_end = len(kinds) - 1 - kinds[::-1].index("node_end")
    assert kinds.index("first_token") < kinds.index("output") < last_end


def test_sf_run_plain_call_and_its_errors():
    report = sf.run(chain(sim={"output_tokens": 4}), "hi", virtual_clock=True)
    assert report.simulated and report.backend == "simulated"
    with pytest.raises(sf.ConfigError, match="needs a message"):
        sf.run(chain(), virtual_clock=True)

    async def inside() -> None:
        sf.run(chain(), "hi")

    with pytest.raises(sf.ConfigError, match="cannot run inside Trio"):
        trio.run(inside)
    with pytest.raises(sf.ConfigError, match="unknown backend 'gpt'"):
        sf.run(chain(), "hi", backend="gpt")


def test_check_graph_on_every_bundled_graph():
    for name in sf.bundled_graphs():
        reports = check_graph(sf.resolve_graph(name))
        assert reports["staircase"].ttft_s < reports["normal"].ttft_s


def test_a_nodes_error_is_found_in_a_group_that_also_holds_a_cancellation():
    # a node's nursery (its preemption watcher, its ticker) fails with the node's error and
    # the watcher's Cancelled when the run is cancelled at the same moment
    from stairflow._runtime.nodes import own_error

    async def a_cancelled() -> BaseException:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                return exc
        raise AssertionError("not cancelled")

    cancelled = trio.run(a_cancelled)
    boom = RuntimeError("boom")
    assert own_error(BaseExceptionGroup("", [cancelled, boom])) is boom
    assert own_error(BaseExceptionGroup("", [BaseExceptionGroup("", [boom]), cancelled])) is boom
    only = BaseExceptionGroup("", [cancelled])
    assert own_error(only) is only


def test_a_straggler_join_keeps_ttft_near_the_fast_proposers():
    # moa with p3 writing 6 tokens/s instead of 60: "all" waits for p3's first chunk
    # (8 tokens, 1.3 s); "straggler = 1" waits as long again as the fast ones' first chunks
    # took (0.168 s), then goes on and reads p3 at a later step
    from dataclasses import replace

    moa = sf.resolve_graph("moa")

    def run(join: sf.Join) -> sf.Report:
        g = replace(moa, nodes={n: replace(v, join=join) if n == "agg" else v
                                for n, v in moa.nodes.items()})
        return run_virtual(g, None, backend=sf.SimBackend.for_graph(
            g, nodes={"p3": {"decode_tps": 6.0}}))

    def first_step(report: sf.Report) -> set[str]:
        return set(report.trace.of("step_start", "agg")[0].data["consumed"])

    fast = run_virtual(moa, None).ttft_s
    waiting, going_on = run(sf.join_all()), run(sf.join_all(straggler=1.0))
    assert waiting.ttft_s > 1.3 and first_step(waiting) == {"p1", "p2", "p3"}
    assert fast < going_on.ttft_s < fast + 0.2 and first_step(going_on) == {"p1", "p2"}
    assert any("p3" in e.data["consumed"] for e in going_on.trace.of("step_start", "agg"))


class _Paced:
    """A stream of fixed words, one every 10 ms of real time; ``gate``: the first word waits
    for that event instead (so that it lands in the same scheduler batch as another task)."""

    def __init__(self, words: list[str], gate: trio.Event | None = None) -> None:
        self.words, self.gate = list(words), gate
        self.usage = sf.Usage(prompt_tokens=1)
        self.finish_reason: str | None = None

    def __aiter__(self) -> _Paced:
        return self

    async def __anext__(self) -> str:
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
            return self.words.pop(0)
        if not self.words:
            self.finish_reason = "stop"
            raise StopAsyncIteration
        await trio.sleep(0.01)  # the model's pace, not a wait for another task
        return self.words.pop(0)


def test_a_step_cut_when_its_inputs_end_never_loses_a_token_on_the_way():
    # Found by review: C's first token is woken in the same batch as the preemption watcher
    # (A's last chunk). The watcher cut the step while the token was on its way; the timed
    # emitter counted it in C's text, then the cancel hit its lock and D never got it
    # (9 runs in 20). A token arriving after the cut is now dropped before it is emitted.
    from contextlib import asynccontextmanager

    from stairflow.testing import check_conservation

    class Gated:
        def __init__(self) -> None:
            self.go = trio.Event()

        @asynccontextmanager
        async def open_stream(self, req: sf.Request):  # type: ignore[no-untyped-def]
            if req.node == "A":
                yield _Paced(["a1 ", "a2 ", "a3 "])
            elif req.node == "C" and req.step == 0:
                yield _Paced(["early ", "c2 "], gate=self.go)
            elif req.node == "C":
                yield _Paced(["f1 ", "f2 "])
            else:
                yield _Paced(["d "])

    g = sf.Graph("race")
    g.connect(g.input(), g.llm("A"))
    g.connect("A", g.llm("C"), sf.tokens(1))
    g.connect("C", g.llm("D"), sf.interval(0.5))  # a timed edge: emit takes a lock
    g.connect("D", g.output())

    async def once() -> sf.Report:
        backend = Gated()
        async with sf.open_run(g, "q", backend=backend) as run:
            def on(e: sf.Event) -> None:
                if e.kind == "chunk" and e.data["edge"] == ("A", "C") and e.data["last"]:
                    backend.go.set()
            run.trace.listeners.append(on)
        return run.report()

    for _ in range(20):
        check_conservation(trio.run(once))


def test_a_finished_runs_trace_leaves_the_cycle_collector_alone():
    # a trace keeps its events as plain values in columns: after one pass the collector no
    # longer walks them (as Event objects they were half the time of a long run)
    import gc

    report = run_virtual(sf.resolve_graph("moa"), None)
    gc.collect()
    watched = [o for o in gc.get_objects()
               if isinstance(o, dict) and ({"edge", "token_ends"} <= set(o) or set(o) == {"text"})]
    assert watched == []
    # and reading them gives the same events as ever, with their data
    chunks = report.trace.of("chunk")
    assert len(chunks) > 400 and len(report.trace.of("output")) > 300
    assert chunks[0].data["edge"] == ("question", "p1") and chunks[0].data["token_ends"] == (20,)
    assert report.trace.events[-1].kind == "run_end"
