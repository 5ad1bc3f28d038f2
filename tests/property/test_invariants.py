"""The scheduling invariants, each a Hypothesis property over random DAGs in virtual time.

Random multi-layer DAGs (fan-in and fan-out), random triggers, joins and timing models. Each
test is named after the invariant it proves (1 conservation, 2 trigger conformance, 3
causality, 4 plumbing equivalence, 5 termination, 6 staircase never slower, 7 exactness, 8
cancellation, 9 failure, 10 backpressure); together they run several hundred random graphs.
They use the checks `stairflow.testing` exports to users, plus checks of their own written
independently of the scheduler.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import stairflow as sf
from stairflow.testing import (
    FlakyBackend,
    check_causality,
    check_conservation,
    check_promptness,
    check_requests,
    check_termination,
    check_timeline,
    check_triggers,
    moa_graphs,
    open_virtual_run,
    run_virtual,
)
from stairflow.testing import graphs as any_graphs
from stairflow.testing._strategies import concat_at_end

ALL_TRIGGERS = ("tokens", "schedule", "sentence", "paragraph", "regex", "complete", "interval")
ENOUGH = settings(max_examples=150)


def graphs(**kw: Any) -> Any:
    # the suite also covers nodes that write nothing (ttft_s None); every test allows for it
    return any_graphs(empty_answers=True, **kw)


def chunks_by_edge(report: sf.Report) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for e in report.trace.of("chunk"):
        out[tuple(e.data["edge"])].append(e)
    return out


# 1. Conservation -------------------------------------------------------------------------


@ENOUGH
@given(graphs(trigger_kinds=ALL_TRIGGERS, fn_nodes=True), st.sampled_from(["staircase", "normal"]))
def test_1_conservation_every_edge_delivers_the_whole_stream_in_order(g, mode):
    report = run_virtual(g, mode=mode)
    check_conservation(report)
    # and the caller gets exactly what the last node wrote
    last = g.inputs_of(g.output)[0].src
    assert report.output == report.trace.of("node_end", last)[0].data["text"]


# 2. Trigger conformance ------------------------------------------------------------------


@ENOUGH
@given(graphs(trigger_kinds=ALL_TRIGGERS, fn_nodes=True))
def test_2_every_chunk_but_the_last_satisfies_its_trigger(g):
    report = run_virtual(g)
    check_triggers(report, g)  # replays every trigger on the real token split and others
    # and, written out here per kind of trigger, exactly where each chunk must end
    edges = {(e.src, e.dst): e for e in g.edges}
    ended = {e.node for e in report.trace.of("node_end")}
    for key, events in chunks_by_edge(report).items():
        trigger = edges[key].trigger
        closed = key[0] in ended
        for e, following in zip(events, [*events[1:], None], strict=True):
            d = e.data
            if following is not None:
                assert d["text"], f"{key}: empty chunk before the end"
            if trigger.describe().startswith("tokens"):
                size = trigger.size(d["index"])  # type: ignore[attr-defined]
                # a chunk ends at its size; the last holds what was left, less than a chunk
                assert d["tokens"] == size if following else d["tokens"] < size or not closed
            elif trigger.describe().startswith("every"):
                if d["first_token_s"] is None:
                    continue
                due = d["first_token_s"] + trigger.seconds  # type: ignore[attr-defined]
                # every token that arrived by the deadline, and none after it
                assert d["last_token_s"] <= due, (key, d["index"], "held past its deadline")
                if following is not None:
                    nxt = following.data["first_token_s"]
                    assert nxt is None or nxt > due  # cut at the deadline, not later
                    if not isinstance(g.nodes[key[1]], sf.FnNode):  # (fn: backpressure)
                        assert e.t == due, (key, d["index"], e.t, due)
            elif trigger.describe() == "complete":
                assert following is None, f"{key}: complete trigger cut early"
            else:
                # rule triggers: the chunk ends exactly where the rule first fires on the
                # text that followed (a rule may look ahead, e.g. a sentence needs a space)
                rest = "".join(x.data["text"] for x in events[d["index"] + 1 :])
                buf = sf.Buffer(index=d["index"], text=d["text"] + rest)
                want = len(d["text"]) if following else None
                if following or closed:
                    assert trigger.boundary(buf) == want, (key, d["text"])


# 3. Causality ----------------------------------------------------------------------------


@ENOUGH
@given(graphs(trigger_kinds=ALL_TRIGGERS, fn_nodes=True))
def test_3_no_chunk_before_its_tokens_no_step_before_its_join(g):
    report = run_virtual(g)
    check_causality(report, g)  # the join rules are written out there, not imported
    check_promptness(report, g)  # and nothing waits longer than its cause
    for e in report.trace.of("chunk"):
        if e.data["last_token_s"] is not None:
            assert e.t >= e.data["last_token_s"]


# 4. Plumbing equivalence -----------------------------------------------------------------


@ENOUGH
@given(graphs(fn_nodes=True, fn=concat_at_end))
def test_4_outputs_identical_in_staircase_and_normal_mode(g):
    stair, normal = run_virtual(g), run_virtual(g, mode="normal")
    texts = lambda r: {e.node: e.data["text"] for e in r.trace.of("node_end")}  # noqa: E731
    both = texts(stair).keys() & texts(normal).keys()  # not those cancelled when unneeded
    assert {k: texts(stair)[k] for k in both} == {k: texts(normal)[k] for k in both}
    assert stair.output == normal.output
    # a node is only ever cut short once every consumer has finished
    for report in (stair, normal):
        done = {e.node: e.t for e in report.trace.events
                if e.kind in ("node_end", "node_error", "node_cancel")}
        for e in report.trace.of("node_cancel"):
            assert all(done[x.dst] <= e.t for x in g.outputs_of(e.node))


# 5. Termination --------------------------------------------------------------------------


def live_tasks() -> set[trio.lowlevel.Task]:
    """Every task in this Trio run, found by walking the task tree from its root."""
    todo, seen = [trio.lowlevel.current_root_task()], set()
    while todo:
        task = todo.pop()
        seen.add(task)
        todo += [t for nursery in task.child_nurseries for t in nursery.child_tasks]
    return seen


@ENOUGH
@given(graphs(trigger_kinds=ALL_TRIGGERS, fn_nodes=True), st.sampled_from(["staircase", "normal"]))
def test_5_every_run_ends_and_leaves_nothing_behind(g, mode):
    backend = sf.SimBackend.for_graph(g)

    async def main() -> tuple[sf.Report, set[trio.lowlevel.Task]]:
        before = live_tasks()
        with trio.fail_after(1e5):  # a hang fails at once in virtual time
            async with open_virtual_run(g, mode=mode, backend=backend) as run:
                pass
        return run.report(), live_tasks() - before

    report, tasks_after = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    check_termination(report, g)
    check_requests(report, backend)
    assert report.trace.events[-1].kind == "run_end"
    assert backend.active == 0
    started = {e.node for e in report.trace.of("node_start")}
    ended = {e.node for e in report.trace.events if e.kind in ("node_end", "node_cancel")}
    assert started == ended == set(g.nodes)
    sent = report.trace.of("request_sent")
    closed = report.trace.of("request_end") + report.trace.of("request_cancel")
    assert len(sent) == len(closed) == backend.opened
    assert not tasks_after, f"tasks outlived the run: {tasks_after}"


# 6. Staircase is never slower ------------------------------------------------------------


# hundreds of graphs per CI run, thousands with STAIRFLOW_HYPOTHESIS=explore
NO_REGRET = settings(max_examples=max(400, settings.default.max_examples))


def assert_never_slower(g: Any) -> None:
    stair, normal = run_virtual(g), run_virtual(g, mode="normal")
    cancelled = {e.node for e in stair.trace.of("node_cancel")}
    for name, n in normal.nodes.items():
        s = stair.nodes[name]
        if n.ttft_s is not None and s.ttft_s is None:
            assert name in cancelled, f"{name} wrote nothing in staircase mode"
        elif n.ttft_s is not None:
            assert s.ttft_s <= n.ttft_s, f"{name}: first token {s.ttft_s} vs {n.ttft_s} normal"
        if n.done_s is not None:
            assert s.done_s is not None and s.done_s <= n.done_s, \
                f"{name}: done at {s.done_s} vs {n.done_s} in normal mode"
    assert stair.total_s <= normal.total_s


@NO_REGRET
@given(graphs(trigger_kinds=ALL_TRIGGERS, joins=("all",), max_wait=False))
def test_6_no_node_is_ever_slower_in_staircase_mode(g):
    # the step policy (stairflow/_core/policy.py): a step before the inputs end is taken only
    # if re-reading what it writes costs no more than writing it, and the step in flight when
    # the last input ends is cut. Proven there for joins that wait for every input, at any
    # depth, with any trigger; checked here node by node, first token and completion.
    assert_never_slower(g)


@ENOUGH
@given(moa_graphs(empty_answers=True))
def test_6_never_slower_on_moa_shapes(g):
    assert_never_slower(g)


def first_request(report: sf.Report, name: str) -> tuple[float, int] | None:
    """When ``name`` sent its first request, and that request's prompt tokens."""
    sent = [e.t for e in report.trace.of("request_sent", name) if e.data["step"] == 0]
    if not sent:
        return None
    closed = report.trace.of("request_end", name) + report.trace.of("request_cancel", name)
    return sent[0], next(int(e.data["prompt_tokens"]) for e in closed if e.data["step"] == 0)


def steps_on_part(g: sf.FrozenGraph, name: str) -> bool:
    """Whether a node's join may step before every input has ended (written out here)."""
    join, n = g.nodes[name].join, len(g.inputs_of(name))
    return n > 1 and (join.policy == "any" or (join.policy == "quorum" and join.k < n)
                      or join.max_wait_s is not None or join.straggler is not None)


def assert_no_regret_at_every_join(g: Any, cache: str = "none") -> int:
    """For every llm node whose inputs all end no later in staircase mode than in normal mode
    (the class the step policy's argument covers; an input cancelled because nobody needed it
    any more has had this node finish first, and in normal mode it never ends), whatever its
    join: its first
    request is sent no later; at a join on part of the inputs its first token trails normal
    mode's by at most the prefill time of the extra prompt tokens its first request read; at
    a join on every input, its first token and end come no later. Returns how many nodes on
    part of their inputs it compared. ``cache``: the simulated servers' prefix cache."""
    what_if = {"cache": cache}
    stair = run_virtual(g, backend=sf.SimBackend(sim=what_if))
    normal = run_virtual(g, mode="normal", backend=sf.SimBackend(sim=what_if))
    sim = sf.SimBackend.for_graph(g)
    compared = 0
    for node in g.llm_nodes():
        name, s, n = node.name, stair.nodes[node.name], normal.nodes[node.name]
        ins = [e.src for e in g.inputs_of(name) if not normal.trace.of("node_cancel", e.src)]
        if any(stair.nodes[i].done_s > normal.nodes[i].done_s for i in ins):
            continue  # outside the class: an input ended later (below a join on part)
        cancelled = stair.trace.of("node_cancel", name)
        normal_first, stair_first = first_request(normal, name), first_request(stair, name)
        if normal_first is not None:
            if stair_first is None:  # nobody needed it any more, before normal mode's step
                assert cancelled and cancelled[0].t <= normal_first[0], name
            else:
                assert stair_first[0] <= normal_first[0], \
                    f"{name}: first request at {stair_first[0]} vs {normal_first[0]} normal"
        if not steps_on_part(g, name):
            if not normal.trace.of("node_cancel", name):  # normal mode may stop it early
                assert n.ttft_s is None or s.ttft_s is not None or cancelled, name
                assert n.ttft_s is None or s.ttft_s is None or s.ttft_s <= n.ttft_s, \
                    f"{name}: first token {s.ttft_s} vs {n.ttft_s} normal"
                assert s.done_s <= n.done_s, f"{name}: done at {s.done_s} vs {n.done_s}"
            continue
        if n.ttft_s is None or s.ttft_s is None or normal_first is None or stair_first is None:
            continue  # nothing written (or nobody needed it): nothing to compare
        compared += 1
        extra = (stair_first[1] - normal_first[1]) / sim.timing_for(name).prefill_tps
        assert s.ttft_s <= n.ttft_s + extra, (f"{name}: first token {s.ttft_s} vs {n.ttft_s} "
                                              f"normal + {extra} for the extra prompt")
    return compared


@NO_REGRET
@given(graphs(trigger_kinds=ALL_TRIGGERS))
def test_6_no_regret_at_every_join(g):
    # the step policy's third rule (stairflow/_core/policy.py): a node takes the first step
    # normal mode's join would take, evaluated online on the inputs that have ended, paying
    # or not, and its first request is not cut before its first token. Checked over every
    # join kind, straggler timeouts and factors included, at any depth: the first request
    # is never later, and the first token trails normal mode's only by the prefill of the
    # extra text read (the all-input guarantee holds too, for the nodes it covers).
    assert_no_regret_at_every_join(g)


@NO_REGRET
@given(graphs(trigger_kinds=ALL_TRIGGERS))
def test_6_no_regret_with_a_slot_cache(g):
    # a slot per node (as llama.cpp with slot pinning): normal mode's one request per node
    # finds its slot empty, and staircase mode's later steps reuse what the earlier ones
    # read and wrote, so the policy's bounds, which count every prompt token, still hold
    assert_no_regret_at_every_join(g, cache="slot")


def quorum_with_a_timeout() -> sf.Graph:
    """agg waits for 2 of its 4 inputs, or 3 s after the first one ended: a ends at 0.1875 s,
    the others write a token every 1/4 s until 9.875 s, 11.875 s and 13.875 s."""
    g = sf.Graph("quorum-wait", sim={"latency_s": 0.0, "prefill_tps": 32.0, "decode_tps": 4.0})
    g.input("q")
    g.llm("a", sim={"output_tokens": 2, "decode_tps": 16.0})
    slow = {"s0": 40, "s1": 48, "s2": 56}
    for name, n in slow.items():
        g.llm(name, sim={"output_tokens": n})
    g.llm("agg", join={"quorum": 2, "max_wait_s": 3.0}, context="append", steps=[1],
          sim={"output_tokens": 4, "prefill_tps": 64.0})
    g.connect("q", ["a", *slow])
    g.connect(["a", *slow], "agg", sf.tokens(1))
    g.connect("agg", g.output("out"))
    return g


def test_6_a_join_on_part_of_the_inputs_takes_normal_modes_first_step_paying_or_not():
    # issue 16's worst case, rebuilt: normal mode steps on the one input that has ended, 3 s
    # after it ended (3.1875 s). In staircase mode the other three have sent text by then, and
    # in the append layout each adds markers to every later prompt (14 tokens against normal
    # mode's 10, at 64 prompt tokens/s against 4 output tokens/s): no early step paid, and
    # the first one came at 9.875 s, its first token at 12.984375 s instead of 4.234375 s.
    # Now the node takes normal mode's step when normal mode would, paying or not; it reads
    # the 44 more prompt tokens of the others' text so far, and its first token trails
    # normal mode's by their prefill, 44/64 s, exactly the bound.
    g = quorum_with_a_timeout()
    stair, normal = run_virtual(g, "q"), run_virtual(g, "q", mode="normal")
    assert first_request(stair, "agg") == (3.1875, 111)
    assert first_request(normal, "agg") == (3.1875, 67)
    assert (stair.nodes["agg"].ttft_s, normal.nodes["agg"].ttft_s) == (4.921875, 4.234375)
    assert 4.921875 == 4.234375 + (111 - 67) / 64
    assert_no_regret_at_every_join(g.build())
    check_timeline(stair, g, "q")


def append_slow_prefill() -> sf.Graph:
    """b reads a token by token, in the append layout, at 32 prompt tokens/s against 4 output
    tokens/s: no early step of b pays for reading its answer back."""
    g = sf.Graph("append-slow-prefill", sim={"latency_s": 0.0, "prefill_tps": 32.0,
                                            "decode_tps": 4.0})
    g.input("q")
    g.llm("a", sim={"output_tokens": 10})
    g.llm("b", context="append", steps=[1], sim={"output_tokens": 2})
    g.connect("q", "a")
    g.connect("a", "b", sf.tokens(1))
    g.connect("b", g.output("out"))
    return g


def test_6_a_step_that_cannot_pay_for_reading_itself_back_is_not_taken():
    # Found by Hypothesis with the policy's check switched off: with the append layout every
    # step adds a block of markers to the final prompt, and at 32 prompt tokens/s against 4
    # output tokens/s one token per step never pays for them. Stepping early put b's first
    # token at 2.1875 s but its last at 5.09375 s, after normal mode's 4.96875 s; the policy
    # waits instead, and b does exactly what it does in normal mode.
    g = append_slow_prefill()
    stair, normal = run_virtual(g, "q"), run_virtual(g, "q", mode="normal")
    assert [e.t for e in stair.trace.of("step_start", "b")] == [2.375]
    assert (stair.nodes["b"].ttft_s, stair.nodes["b"].done_s) == (4.71875, 4.96875)
    assert (normal.nodes["b"].ttft_s, normal.nodes["b"].done_s) == (4.71875, 4.96875)


def test_6_a_step_writing_when_the_inputs_end_is_cut_unless_finishing_it_is_no_later():
    # Found by Hypothesis with every writing step left to finish: n2_0 has written 1 of its
    # step's 8 tokens when n1_0 ends at 3.40625 s. Reading the 7 others back would cost up to
    # 14 prompt tokens at 128/s, more than the 1/32 s of progress a new request throws away:
    # finishing the step ended n2_0 at 4.359375 s, after normal mode's 4.3515625 s; cutting it
    # ends n2_0 at 4.328125 s.
    g = sf.Graph("finish-or-cut", sim={"latency_s": 0.0})
    g.input("q")
    g.llm("n0_0", max_tokens=1, sim={"prefill_tps": 32.0, "decode_tps": 4.0, "output_tokens": 0})
    g.llm("n1_0", sim={"prefill_tps": 32.0, "decode_tps": 16.0, "output_tokens": 21})
    g.llm("n2_0", steps=[8], sim={"prefill_tps": 128.0, "decode_tps": 32.0, "output_tokens": 9})
    g.connect("q", ["n0_0", "n1_0"], sf.tokens(1))
    g.connect("n0_0", "n1_0", sf.sentence())
    g.connect("n0_0", "n2_0", sf.tokens(1))
    g.connect("n1_0", "n2_0", sf.tokens(11))
    g.connect("n2_0", g.output("out"), sf.tokens(1))
    stair, normal = run_virtual(g), run_virtual(g, mode="normal")
    cut = stair.trace.of("request_cancel", "n2_0")
    assert [(e.t, e.data["tokens"]) for e in cut] == [(3.40625, 1)]
    assert (stair.nodes["n2_0"].done_s, normal.nodes["n2_0"].done_s) == (4.328125, 4.3515625)


def test_6_a_join_on_part_of_the_inputs_can_be_slower_by_the_prefill_of_what_it_read():
    # docs/concepts.md's example: 'fast' has sent 12 words at 0.9375 s, 'late' ends its 3 at
    # 1.125 s. Normal mode's "any" step reads late's 3 words at 1.125 s (prompt: 8 tokens,
    # first token at 1.375 s); staircase mode steps on fast's first chunk at 0.9375 s and
    # reads 12 words normal mode never waited for (17 tokens at 32/s: first token at
    # 1.46875 s). Had 'late' ended at 50 s, stepping early would have won by far: a node
    # cannot know which, so no policy that does not see the future avoids both. What it
    # costs is bounded: the prefill of the 9 extra prompt tokens, 9/32 s.
    g = sf.Graph("any-join", sim={"latency_s": 0.0, "prefill_tps": 32.0, "decode_tps": 16.0})
    g.input("q")
    g.llm("fast", sim={"latency_s": 0.125, "output_tokens": 40, "decode_tps": 16.0})
    g.llm("late", sim={"latency_s": 0.875, "output_tokens": 3, "decode_tps": 16.0})
    g.llm("agg", join="any", prompt="Answer: {fast} {late}", sim={"output_tokens": 4})
    g.connect("q", ["fast", "late"])
    g.connect(["fast", "late"], "agg", sf.tokens(12))
    g.connect("agg", g.output("out"))
    stair, normal = run_virtual(g, "q"), run_virtual(g, "q", mode="normal")
    assert [e.t for e in stair.trace.of("step_start", "agg")] == [0.9375]
    assert [e.t for e in normal.trace.of("step_start", "agg")] == [1.125]
    assert (stair.ttft_s, normal.ttft_s) == (0.9375 + 17 / 32, 1.125 + 8 / 32)
    assert stair.ttft_s <= normal.ttft_s + (17 - 8) / 32
    assert assert_no_regret_at_every_join(g.build()) == 1


def test_6_a_partial_reference_never_costs_more_prefill_than_waiting():
    # Found by Hypothesis when unfinished references carried a 4-word marker: p1 is one token
    # short when p0 ends, so the aggregator starts 1/32 s early with a prompt that was longer
    # than the finished one; with slow prefill that made staircase slower than normal.
    g = sf.Graph("regression")
    g.input("q")
    for name, out in (("p0", 23), ("p1", 24)):
        g.llm(name, max_tokens=out, sim={"latency_s": 0.0, "decode_tps": 32.0,
                                         "prefill_tps": 32.0, "output_tokens": out})
    g.llm("agg", prompt="moa-aggregate", steps=[1],
          sim={"latency_s": 0.0, "decode_tps": 4.0, "prefill_tps": 32.0, "output_tokens": 1})
    g.connect("q", ["p0", "p1"])
    g.connect("p0", "agg", sf.paragraph())
    g.connect("p1", "agg", sf.tokens(1))
    g.connect("agg", g.output("out"))
    stair, normal = run_virtual(g), run_virtual(g, mode="normal")
    assert stair.trace.of("step_start", "agg")[0].t < normal.trace.of("step_start", "agg")[0].t
    assert stair.ttft_s <= normal.ttft_s


def test_6_a_first_request_on_part_of_the_inputs_keeps_its_first_token():
    # x steps at once on the message (join "any"); its 64-token prompt takes 2 s to read, and
    # a ends at 0.1875 s meanwhile. Cut then, x's first token would come at 0.1875 + 66/32 =
    # 2.25 s, later than the 2 s the first request promised; so that request is cut after
    # its first token instead, and the final step starts at 2 s. (In both modes: normal mode
    # steps the same way. The end comes later for it, 4.3125 s instead of 2.5625 s: at a join
    # on part of the inputs the promise is about the first request and token.)
    g = sf.Graph("keep-first", sim={"latency_s": 0.0, "prefill_tps": 32.0, "decode_tps": 16.0})
    g.input("q")
    g.llm("a", sim={"output_tokens": 2})
    g.llm("x", join="any", steps=[4], sim={"output_tokens": 6})
    g.connect("q", ["a", "x"])
    g.connect("a", "x", sf.tokens(1))
    g.connect("x", g.output("out"))
    for mode in ("staircase", "normal"):
        report = run_virtual(g, "Why?", mode=mode)
        assert report.nodes["a"].done_s == 0.1875
        assert first_request(report, "x") == (0.0, 64)
        assert [(e.t, e.data["tokens"]) for e in report.trace.of("request_cancel", "x")] == \
            [(2.0, 1)]
        assert (report.nodes["x"].ttft_s, report.nodes["x"].done_s) == (2.0, 4.3125)
        check_timeline(report, g, "Why?")


@ENOUGH
@given(graphs(trigger_kinds=("complete",)))
def test_6_equal_when_every_trigger_is_complete(g):
    stair, normal = run_virtual(g), run_virtual(g, mode="normal")
    assert stair.ttft_s == normal.ttft_s
    assert stair.total_s == normal.total_s


# 7. Exactness ----------------------------------------------------------------------------


@settings(max_examples=200)
@given(graphs(), st.sampled_from(["staircase", "normal"]))
def test_7_measured_times_equal_the_independent_reference(g, mode):
    # the reference users get (stairflow.testing.expected_timeline): worked out node by node
    # from the timing model, sharing nothing with the runtime's scheduling
    report = run_virtual(g, "why is the sky blue?", mode=mode)
    check_timeline(report, g, "why is the sky blue?")


@settings(max_examples=200)
@given(graphs(), st.sampled_from(["staircase", "normal"]))
def test_7_with_a_slot_cache_times_and_cached_tokens_equal_the_reference(g, mode):
    backend = sf.SimBackend(sim={"cache": "slot"})
    report = run_virtual(g, "why is the sky blue?", mode=mode, backend=backend)
    check_timeline(report, g, "why is the sky blue?", backend=backend)


# 8. Cancellation -------------------------------------------------------------------------


@ENOUGH
@given(graphs(trigger_kinds=ALL_TRIGGERS, fn_nodes=True), st.floats(0, 5))
def test_8_cancelling_a_run_cancels_every_request_at_once(g, at):
    backend = sf.SimBackend.for_graph(g)

    async def cancel_later(run: sf.Run) -> None:
        await trio.sleep(at)
        run.cancel()

    report = run_virtual(g, backend=backend, during=cancel_later)
    assert backend.active == 0
    last = report.trace.events[-1]
    assert last.kind in ("run_cancel", "run_end")
    if last.kind == "run_cancel":
        assert all(e.t <= at + 1e-9 for e in report.trace.events)
        sent = len(report.trace.of("request_sent"))
        closed = len(report.trace.of("request_end")) + len(report.trace.of("request_cancel"))
        assert sent == closed


@ENOUGH
@given(graphs(fn_nodes=True), st.floats(0, 5))
def test_8_a_consumer_going_away_cancels_the_run(g, at):
    backend = sf.SimBackend.for_graph(g)

    class Gone(Exception):
        pass

    async def leave(run: sf.Run) -> None:
        await trio.sleep(at)
        raise Gone

    with pytest.raises(Gone):
        run_virtual(g, backend=backend, during=leave)
    assert backend.active == 0


# 9. Failure ------------------------------------------------------------------------------


def _llm_names(g: sf.FrozenGraph) -> list[str]:
    return [n.name for n in g.llm_nodes()]


@ENOUGH
@given(graphs(), st.data())
def test_9_a_failing_node_ends_the_run_with_an_error_naming_it(g, data):
    victim = data.draw(st.sampled_from(_llm_names(g)))
    backend = FlakyBackend(sf.SimBackend.for_graph(g), {victim: 0})
    sim = backend.inner
    try:
        report = run_virtual(g, backend=backend)
    except sf.NodeError as exc:
        assert exc.node == victim
        assert f"node '{victim}' failed" in str(exc)
    else:  # only if nobody needed the victim any more before it would have failed
        assert report.trace.of("node_cancel", victim)
    assert sim.active == 0


@ENOUGH
@given(graphs(), st.data())
def test_9_a_dropped_node_lets_the_rest_go_on(g, data):
    victim = data.draw(st.sampled_from(_llm_names(g)))
    b = sf.Graph("copy")
    # rebuild with on_error="drop" on the victim
    for name in g.order:
        node = g.nodes[name]
        if isinstance(node, sf.InputNode):
            b.input(name)
        elif isinstance(node, sf.OutputNode):
            b.output(name)
        else:
            assert isinstance(node, sf.LLMNode)
            b.llm(name, join=node.join, sim=dict(node.sim), max_tokens=node.max_tokens,
                  steps=node.steps, step_scale_s=node.step_scale_s,
                  on_error="drop" if name == victim else "fail")
    for e in g.edges:
        b.connect(e.src, e.dst, e.trigger)
    g2 = b.build()
    backend = FlakyBackend(sf.SimBackend.for_graph(g2), {victim: 0})
    # which nodes must fail: the victim's failure spreads only to nodes left with no input
    failed = {victim}
    for name in g2.order:
        ins = {e.src for e in g2.inputs_of(name)}
        if ins and ins <= failed:
            failed.add(name)
    try:
        report = run_virtual(g2, backend=backend)
    except sf.NodeError as exc:
        assert exc.node in failed - {victim}
    else:
        err = report.trace.of("node_error")
        if err:
            assert [e.node for e in err] == [victim] and err[0].data["dropped"]
            assert report.nodes[victim].tokens == 0
        else:  # nobody needed the victim any more before it would have failed
            assert report.trace.of("node_cancel", victim)
        finished = {e.node for e in report.trace.events if e.kind in ("node_end", "node_cancel")}
        assert finished == set(g2.nodes) - {e.node for e in err}
    assert backend.inner.active == 0


# 10. Backpressure ------------------------------------------------------------------------


async def slow_consumer(inputs: sf.Inputs):
    async for step in inputs:
        await trio.sleep(30)  # busy between steps
        yield "".join(step.new.values())


@ENOUGH
@given(graphs(max_layers=2), st.integers(1, 4))
def test_10_a_slow_consumer_bounds_what_is_buffered_on_its_edges(g, cap):
    # put a slow fn node between the last llm node and the output
    b = sf.Graph("bp", edge_buffer=cap)
    for name in g.order:
        node = g.nodes[name]
        if isinstance(node, sf.InputNode):
            b.input(name)
        elif isinstance(node, sf.LLMNode):
            b.llm(name, join=node.join, sim=dict(node.sim), max_tokens=node.max_tokens,
                  steps=node.steps, step_scale_s=node.step_scale_s)
    last = g.inputs_of(g.output)[0].src
    b.fn("slow", slow_consumer)
    b.output("out")
    for e in g.edges:
        if e.dst != g.output:
            b.connect(e.src, e.dst, e.trigger)
    b.connect(last, "slow", sf.tokens(1))
    b.connect("slow", "out")
    g2 = b.build()
    report = run_virtual(g2)
    check_conservation(report)
    # replay the trace: while 'slow' is busy between steps, at most `cap` chunks queue for it
    # (while it waits for a step it takes everything: a join must never deadlock on a full
    # buffer)
    queued, busy = 0, False
    for e in report.trace.events:
        if e.kind == "chunk" and e.data["edge"] == (last, "slow"):
            queued += 1
            assert not busy or queued <= cap, f"{queued} chunks queued with edge_buffer={cap}"
        elif e.kind == "step_start" and e.node == "slow":
            queued -= e.data["consumed"].get(last, 0)
            busy = True
        elif e.kind == "step_wait" and e.node == "slow":
            busy = False
    # and the bound really held the producer back: it could not finish while 'slow' slept
    steps = report.trace.of("step_start", "slow")
    produced = sum(1 for e in report.trace.of("chunk") if e.data["edge"] == (last, "slow"))
    if produced > steps[0].data["consumed"].get(last, 0) + cap:
        assert report.nodes[last].done_s >= 30
