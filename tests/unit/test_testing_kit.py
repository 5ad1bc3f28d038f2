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

import stairflow as sf
from stairflow.testing import (
    InvariantError,
    check_causality,
    check_conservation,
    check_graph,
    check_promptness,
    check_requests,
    check_run,
    check_termination,
    check_triggers,
    run_virtual,
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
    from stairflow.testing import check_graph, run_virtual

    g = sf.Graph("mine", sim={"output_tokens": 20})
    g.input("q")
    g.llm("a")
    g.connect("q", "a")
    g.connect("a", g.output("out"), trigger=sf.sentence())
    print(run_virtual(g, "hi").output_tokens, sorted(check_graph(g, "hi")))
    print("hypothesis" in sys.modules)
    try:
        from stairflow.testing import graphs
    except ModuleNotFoundError as exc:
        print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "20 ['normal', 'staircase']",
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
    from stairflow.testing import InvariantError, check_conservation, check_graph, run_virtual

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
    """, "-O")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "trigger conformance",
        "conservation: edge q -> a: q ended but the edge got no last chunk",
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
    return lambda e: e.data["edge"] == [src, dst] and e.data["index"] == index


def test_each_check_names_the_invariant_and_where_it_broke():
    g = small_graph(sf.sentence())
    report = run_virtual(g)
    check_run(report, g)

    broken = run_virtual(g)
    edit(broken, "chunk", on("a", "b", 1), text="")
    with pytest.raises(InvariantError, match=r"^conservation: edge a -> b: the chunks joined"):
        check_conservation(broken)

    broken = run_virtual(g)
    texts = [e.data["text"] for e in broken.trace.of("chunk") if e.data["edge"] == ["a", "b"]]
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
    chunks = [e for e in report.trace.of("chunk") if e.data["edge"] == ["a", "b"]]
    assert len(chunks) > 2
    # as if the ticker never ran: every token in one chunk, long after its deadline
    edit(report, "chunk", on("a", "b", 0), last_token_s=chunks[-1].data["last_token_s"])
    with pytest.raises(InvariantError, match=r"^trigger conformance: edge a -> b \(every 1s\): "
                       r"chunk 0 holds a token that arrived at .* after its deadline"):
        check_triggers(report, g)


def test_check_graph_returns_both_reports():
    reports = check_graph(small_graph())
    assert reports["staircase"].ttft_s < reports["normal"].ttft_s
