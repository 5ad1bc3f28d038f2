"""stairflow.testing as users get it: importable without Hypothesis, and its checks raise
(under ``python -O`` too) with messages naming the invariant and the node or edge."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

import stairflow as sf
from stairflow.testing import (
    FlakyBackend,
    InvariantError,
    check_causality,
    check_conservation,
    check_graph,
    check_promptness,
    check_requests,
    check_run,
    check_termination,
    check_timeline,
    check_triggers,
    expected_timeline,
    run_virtual,
    timeline_applies,
)

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


NO_HYPOTHESIS = """
    import sys

    class NoHypothesis:  # as on a plain `pip install stairflow`: the test extra is missing
        def find_spec(self, name, path=None, target=None):
            if name == "hypothesis" or name.startswith("hypothesis."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoHypothesis())
"""


def test_the_kit_works_without_hypothesis_and_says_what_the_strategies_need():
    result = run_python(NO_HYPOTHESIS + """
    import stairflow as sf
    from stairflow.testing import check_graph, check_timeline, run_virtual

    g = sf.Graph("mine", sim={"output_tokens": 20})
    g.input("q")
    g.llm("a")
    g.connect("q", "a")
    g.connect("a", g.output("out"), trigger=sf.sentence())
    report = run_virtual(g, "hi")
    print(report.output_tokens, sorted(check_graph(g, "hi")), sorted(check_timeline(report, g)))
    print("hypothesis" in sys.modules)
    try:
        from stairflow.testing import graphs
    except ModuleNotFoundError as exc:
        print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "20 ['normal', 'staircase'] ['a', 'out', 'q']",
        "False",
        "stairflow.testing.graphs needs Hypothesis: pip install 'stairflow[test]'",
    ]


def test_unknown_names_are_attribute_errors():
    import stairflow.testing

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = stairflow.testing.nope  # type: ignore[attr-defined]


def small_graph(trigger: sf.Trigger | None = None, **sim: Any) -> sf.Graph:
    g = sf.Graph("mine", sim={"latency_s": 0.5, "prefill_tps": 1024.0, "decode_tps": 8.0,
                              "output_tokens": 60, **sim})
    g.input("q")
    g.llm("a")
    g.llm("b", steps=[4])
    g.connect("q", "a")
    g.connect("a", "b", trigger or sf.tokens(4))
    g.connect("b", g.output("out"))
    return g


def test_check_graph_raises_under_python_O():
    result = run_python("""
    import stairflow as sf
    from stairflow.testing import (InvariantError, check_conservation, check_graph,
                                   check_timeline, run_virtual)

    class AfterComma(sf.Trigger):  # looks only at the newest token: split-dependent
        def boundary(self, buf):
            return len(buf.text) if buf.text.endswith(",") else None

    g = sf.Graph("mine", sim={"output_tokens": 60})
    g.input("q")
    g.llm("a")
    g.llm("b")
    g.connect("q", "a")
    g.connect("a", "b", AfterComma())
    g.connect("b", g.output("out"))
    try:
        check_graph(g)
    except InvariantError as exc:
        print(exc.invariant)
    report = run_virtual(g.build().with_mode("normal"), mode="normal")
    report.trace.events[:] = [e for e in report.trace.events if e.kind != "chunk" or e.data["index"]]
    try:
        check_conservation(report)
    except InvariantError as exc:
        print(exc)
    late = sf.SimBackend.for_graph(g.build(), nodes={"b": {"latency_s": 1.0}})
    try:
        check_timeline(run_virtual(g, backend=late), g)
    except InvariantError as exc:
        print(exc.invariant, exc.where)
    """, "-O")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "trigger conformance",
        "conservation: edge q -> a: q ended but the edge got no last chunk",
        "exactness node b",
    ]


class Stateful(sf.Trigger):
    """A chunk per two clauses - but it counts calls, not commas: its cuts depend on how many
    tokens the text came in."""

    def __init__(self) -> None:
        self.seen = 0

    def boundary(self, buf: sf.Buffer) -> int | None:
        i = buf.text.find(",")
        if i < 0:
            return None
        self.seen += 1
        return i + 1 if self.seen % 2 == 0 else None


class Clauses(sf.Trigger):
    def boundary(self, buf: sf.Buffer) -> int | None:
        i = buf.text.find(",")
        return i + 1 if i >= 0 else None


class EveryThreeTokens(sf.Trigger):
    token_based = True

    def boundary(self, buf: sf.Buffer) -> int | None:
        return buf.token_ends[2] if len(buf.token_ends) >= 3 else None


def test_a_stateful_trigger_is_caught():
    with pytest.raises(InvariantError) as info:
        check_graph(small_graph(Stateful()))
    assert info.value.invariant == "trigger conformance"
    assert info.value.where == "edge a -> b (Stateful)"
    assert "cuts must not depend on how the text is split into tokens" in str(info.value)
    check_graph(small_graph(Clauses()))  # the stateless rule passes


def test_a_token_count_trigger_says_so_and_is_checked_on_the_real_tokens():
    check_graph(small_graph(EveryThreeTokens()))

    class Undeclared(EveryThreeTokens):
        token_based = False

    with pytest.raises(InvariantError, match=r"fed in one piece; cuts must not depend"):
        check_graph(small_graph(Undeclared()))


def edit(report: sf.Report, kind: str, match: Any, **data: Any) -> None:
    """Corrupt the first event of ``kind`` that ``match(event)`` accepts."""
    events = report.trace.events
    i = next(i for i, e in enumerate(events) if e.kind == kind and match(e))
    events[i] = dataclasses.replace(events[i], data={**events[i].data, **data})


def on(src: str, dst: str, index: int) -> Any:
    return lambda e: e.data["edge"] == (src, dst) and e.data["index"] == index


def test_each_check_names_the_invariant_and_where_it_broke():
    g = small_graph(sf.sentence())
    report = run_virtual(g)
    check_run(report, g)

    broken = run_virtual(g)
    edit(broken, "chunk", on("a", "b", 1), text="")
    with pytest.raises(InvariantError, match=r"^conservation: edge a -> b: the chunks joined"):
        check_conservation(broken)

    broken = run_virtual(g)
    texts = [e.data["text"] for e in broken.trace.of("chunk") if e.data["edge"] == ("a", "b")]
    edit(broken, "chunk", on("a", "b", 0), text=texts[0] + texts[1])  # one sentence too many
    edit(broken, "chunk", on("a", "b", 1), text="")
    with pytest.raises(InvariantError, match=r"^trigger conformance: edge a -> b \(sentence\): "
                       r"chunk 0 was .*, but the trigger cuts .* token by token as the run did"):
        check_triggers(broken, g)

    broken = run_virtual(g)
    edit(broken, "chunk", on("a", "b", 0), last_token_s=1e3)
    with pytest.raises(InvariantError, match=r"^causality: edge a -> b: chunk 0 delivered at "):
        check_causality(broken, g)

    broken = run_virtual(g)
    edit(broken, "step_start", lambda e: e.node == "b", consumed={"a": 5})
    with pytest.raises(InvariantError, match=r"^causality: node b: step 0 consumed 5 chunks "
                       r"from a, only 1 were delivered"):
        check_causality(broken, g)

    broken = run_virtual(g)
    events = broken.trace.events
    i = next(i for i, e in enumerate(events) if e.kind == "chunk" and on("a", "b", 0)(e))
    events[i] = dataclasses.replace(events[i], t=events[i].t + 0.25)  # held back a while
    with pytest.raises(InvariantError, match=r"^promptness: edge a -> b \(sentence\): chunk 0 "
                       r"came at .* s; it was complete at "):
        check_promptness(broken, g)

    broken = run_virtual(g)
    broken.trace.events.pop()
    with pytest.raises(InvariantError, match=r"^termination: graph mine: the trace does not end "
                       r"with run_end \(last event: node_end\)"):
        check_termination(broken, g)

    broken = run_virtual(g)
    broken.trace.events[:] = [e for e in broken.trace.events
                              if not (e.kind == "request_end" and e.node == "a")]
    with pytest.raises(InvariantError, match=r"^no request left open: node a: 1 request\(s\) "
                       r"sent and never ended"):
        check_requests(broken)


def test_a_step_before_its_join_holds_is_caught():
    g = sf.Graph("j", sim={"output_tokens": 8})
    g.input("q")
    g.llm("p1")
    g.llm("p2", sim={"latency_s": 3.0})
    g.llm("agg", join="all")
    g.connect("q", ["p1", "p2"])
    g.connect(["p1", "p2"], "agg", sf.tokens(4))
    g.connect("agg", g.output("out"))
    report = run_virtual(g)
    check_causality(report, g)
    edit(report, "step_start", lambda e: e.node == "agg", consumed={"p1": 1})
    with pytest.raises(InvariantError, match=r"^causality: node agg: step 0 started at .* with "
                       r"1 of 2 inputs ready; join all needs 2"):
        check_causality(report, g)


def test_interval_cuts_are_checked_against_their_deadline():
    g = small_graph(sf.interval(1.0))
    report = run_virtual(g)
    check_run(report, g)
    chunks = [e for e in report.trace.of("chunk") if e.data["edge"] == ("a", "b")]
    assert len(chunks) > 2
    # as if the ticker never ran: every token in one chunk, long after its deadline
    edit(report, "chunk", on("a", "b", 0), last_token_s=chunks[-1].data["last_token_s"])
    with pytest.raises(InvariantError, match=r"^trigger conformance: edge a -> b \(every 1s\): "
                       r"chunk 0 holds a token that arrived at .* after its deadline"):
        check_triggers(report, g)


def test_check_graph_returns_both_reports():
    reports = check_graph(small_graph())
    assert reports["staircase"].ttft_s < reports["normal"].ttft_s


# The exact-timeline reference -------------------------------------------------------------


@pytest.mark.parametrize("name", ["moa", "moa-3layer", "debate", "chain"])
@pytest.mark.parametrize("mode", ["staircase", "normal"])
def test_check_timeline_holds_on_the_bundled_graphs(name, mode):
    g = sf.resolve_graph(name)
    report = run_virtual(g, "Why is the sky blue?", mode=mode)
    want = check_timeline(report, g)  # the message: the one the trace shows
    assert want[g.output].text == report.output
    assert want[g.output].first_token_s == pytest.approx(report.ttft_s, abs=1e-9)
    check_timeline(report, g, "Why is the sky blue?")


def test_check_timeline_catches_a_model_slower_than_the_graph_says():
    g = small_graph()
    late = sf.SimBackend.for_graph(g.build(), nodes={"b": {"latency_s": 0.5 + 1 / 1024}})
    report = run_virtual(g, "Why?", backend=late)
    check_timeline(report, g, backend=late)  # the what-if it ran with is part of the model
    with pytest.raises(InvariantError) as info:
        check_timeline(report, g)
    assert str(info.value) == ("exactness: node b: first token at 1.4453125 s; the timing model "
                               "says 1.44433594 s")
    assert (info.value.invariant, info.value.where) == ("exactness", "node b")


def rebuilt(report: sf.Report) -> sf.Report:
    return sf.Report.from_trace(report.trace)  # the per-node figures, from the edited trace


def test_check_timeline_names_what_differs_in_a_corrupted_trace():
    g = small_graph()
    want = expected_timeline(g, "Why?")
    assert want["b"].step_starts[:2] == (0.87890625, 1.8193359375)
    assert (want["b"].first_token_s, want["b"].end_s) == (1.4443359375, 12.4072265625)
    assert want["b"].prompt_tokens[:3] == (67, 75, 89) and not want["b"].cancelled

    broken = run_virtual(g, "Why?")
    events = broken.trace.events
    i = next(i for i, e in enumerate(events) if e.kind == "step_start" and e.node == "b"
             and e.data["step"] == 1)
    events[i] = dataclasses.replace(events[i], t=events[i].t + 1 / 1024)
    with pytest.raises(InvariantError, match=r"^exactness: node b: step 1 started at 1.8203125 "
                       r"s; the timing model says 1.81933594 s$"):
        check_timeline(broken, g)

    broken = run_virtual(g, "Why?")
    edit(broken, "request_end", lambda e: e.node == "b" and e.data["step"] == 2,
         prompt_tokens=88)
    with pytest.raises(InvariantError, match=r"^exactness: node b: step 2's prompt was 88 "
                       r"tokens; the timing model says 89$"):
        check_timeline(rebuilt(broken), g)

    broken = run_virtual(g, "Why?")
    broken.trace.events[:] = [e for e in broken.trace.events
                              if not (e.kind == "step_start" and e.node == "b"
                                      and e.data["step"] == 8)]
    with pytest.raises(InvariantError, match=r"^exactness: node b: 8 step\(s\) started; the "
                       r"timing model starts step 8 at 7.87890625 s$"):
        check_timeline(broken, g)

    broken = run_virtual(g, "Why?")
    edit(broken, "output", lambda e: True, text="Yes")
    with pytest.raises(InvariantError, match=r"^exactness: node out: the output differs from "
                       r"the timing model's at character 0$"):
        check_timeline(rebuilt(broken), g)


def test_a_node_nobody_needs_any_more_is_cancelled_in_the_reference_too():
    g = sf.Graph("short", sim={"latency_s": 0.5, "decode_tps": 8.0, "output_tokens": 60})
    g.input("q")
    g.llm("long")
    g.llm("brief", sim={"output_tokens": 6}, steps=[4])
    g.connect("q", "long")
    g.connect("long", "brief", sf.tokens(4))
    g.connect("brief", g.output("out"))
    want = check_timeline(run_virtual(g, "Why?"), g)
    assert want["long"].cancelled and want["long"].end_s == want["brief"].end_s
    assert not want["brief"].cancelled


def fn_graph() -> sf.Graph:
    from stairflow.testing._strategies import concat_at_end

    g = sf.Graph("with-fn")
    g.input("q")
    g.fn("f", concat_at_end)
    g.connect("q", "f")
    g.connect("f", g.output("out"))
    return g


NOT_APPLICABLE = "the exact-timeline reference does not apply to graph"


def test_check_timeline_says_where_it_does_not_apply():
    g = fn_graph()
    assert not timeline_applies(g)
    message = (f"{NOT_APPLICABLE} 'with-fn': node 'f' is an fn node, and the timing model "
               "does not say how user code paces itself; check it with check_run instead")
    with pytest.raises(sf.ConfigError) as info:
        check_timeline(run_virtual(g), g)
    assert str(info.value) == message
    with pytest.raises(sf.ConfigError, match="node 'f' is an fn node"):
        expected_timeline(g, "Why?")
    check_graph(g)  # every other invariant is still checked

    g = small_graph(sf.interval(1.0))
    assert not timeline_applies(g)
    with pytest.raises(sf.ConfigError) as info:
        check_timeline(run_virtual(g), g)
    assert str(info.value) == (
        f"{NOT_APPLICABLE} 'mine': edge a -> b (every 1s) cuts on a deadline, and the timing "
        "model does not order a deadline and a token due at the same instant; check it with "
        "check_run instead")
    check_graph(g)

    g = small_graph()
    assert timeline_applies(g)
    report = run_virtual(g)
    with pytest.raises(sf.ConfigError, match=f"^{NOT_APPLICABLE} 'mine': the run was on backend "
                       "'openai', not the simulated one, so its times come from no timing "
                       "model; check it with check_run instead$"):
        check_timeline(dataclasses.replace(report, simulated=False, backend="openai"), g)
    with pytest.raises(sf.ConfigError, match=r"'mine': backend FlakyBackend is not a SimBackend"):
        check_timeline(report, g, backend=FlakyBackend(sf.SimBackend(), {}))
    with pytest.raises(sf.ConfigError, match=r"^the report is of graph 'mine' with nodes "
                       r"\['a', 'b', 'out', 'q'\], not of graph 'chain'; pass the graph that "
                       r"ran$"):
        check_timeline(report, sf.resolve_graph("chain"))


def test_check_timeline_does_not_apply_to_a_failed_or_unfinished_run():
    g = small_graph()
    g.llm("c", on_error="drop")
    g.connect("q", "c")
    g.connect("c", "b", sf.tokens(4))
    flaky = FlakyBackend(sf.SimBackend.for_graph(g.build()), {"c": 2})
    with pytest.raises(sf.ConfigError, match=r"'mine': node 'c' failed in this run \(the timing "
                       r"model has no failures\)"):
        check_timeline(run_virtual(g, backend=flaky), g)

    async def cancel(run: sf.Run) -> None:
        await trio.sleep(1.0)
        run.cancel()

    with pytest.raises(sf.ConfigError, match=r"'mine': the run did not finish \(its trace ends "
                       r"with run_cancel\)"):
        check_timeline(run_virtual(small_graph(), during=cancel), small_graph())


def test_the_reference_shares_nothing_with_the_runtimes_scheduling():
    import ast

    tree = ast.parse((ROOT / "stairflow" / "testing" / "_reference.py").read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    # the step policy's rule is a pure function with tests of its own (and the no-regret
    # property); when and on what state it is consulted is written out independently
    shared = {m for m in imported if "_runtime" in m or "_core" in m or "trio" in m}
    assert shared == {"_core.policy"}
