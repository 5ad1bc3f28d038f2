"""Validation: each bad graph gives one pinned, one-line error naming the node or edge."""

from __future__ import annotations

import pytest

import stairflow as sf


def moa(**agg: object) -> sf.Graph:
    g = sf.Graph("t")
    q = g.input("q")
    ps = [g.llm(f"p{i}") for i in range(3)]
    a = g.llm("agg", **agg)
    g.connect(q, ps)
    g.connect(ps, a, trigger=sf.tokens([8, 16]))
    g.connect(a, g.output("out"))
    return g


def test_a_valid_graph_builds_into_a_frozen_networkx_dag():
    fg = moa().build()
    assert fg.layers == [["q"], ["p0", "p1", "p2"], ["agg"], ["out"]]
    assert fg.dag.number_of_edges() == 7
    with pytest.raises(Exception):  # noqa: B017,PT011 - networkx: "Frozen graph can't be modified"
        fg.dag.add_edge("out", "q")
    assert [e.trigger.describe() for e in fg.inputs_of("out")] == ["tokens(1)"]
    # the input is one token: its edges say so; between nodes the paper's growing schedule
    assert fg.inputs_of("p0")[0].trigger.describe() == "complete"
    assert fg.inputs_of("agg")[0].trigger.describe() == "tokens(8,16,…)"
    g = sf.Graph("t")
    g.input("q")
    g.llm("a")
    g.llm("b")
    g.connect("q", "a")
    g.connect("a", "b")
    g.connect("b", g.output("o"))
    assert g.build().inputs_of("b")[0].trigger.describe() == "tokens(8,16,32,64,…)"


def test_normal_mode_makes_inner_edges_complete_and_can_go_back():
    fg = moa().build()
    normal = fg.with_mode("normal")
    assert {e.trigger.describe() for e in normal.edges if e.dst != "out"} == {"complete"}
    assert normal.inputs_of("out")[0].trigger.describe() == "tokens(1)"
    assert normal.with_mode("staircase").edges == fg.edges


def build_error(g: sf.Graph) -> str:
    with pytest.raises(sf.GraphError) as info:
        g.build()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_cycle_is_named():
    g = sf.Graph("t")
    g.input("q")
    g.llm("a")
    g.llm("b")
    g.connect("q", "a")
    g.connect("a", "b")
    g.connect("b", "a")
    g.connect("b", g.output("out"))
    assert build_error(g) == "graph 't' has a cycle: a -> b -> a; remove one of these edges"


def test_unknown_node_in_edge_suggests_the_close_name():
    g = moa()
    g.connect("pp1", "agg")
    assert build_error(g) == "graph 't', edge pp1 -> agg: unknown node 'pp1'; did you mean 'p1'?"


def test_node_without_inputs():
    g = moa()
    g.llm("lonely")
    g.connect("lonely", "agg")
    assert build_error(g) == (
        "graph 't', node 'lonely' has no inputs; add an edge into it, e.g. from 'q'")


def test_node_that_does_not_reach_the_output():
    g = moa()
    g.llm("dead_end")
    g.connect("q", "dead_end")
    assert build_error(g) == (
        "graph 't', node 'dead_end' does not lead to the output 'out'; connect it towards the "
        "output or remove it")


def test_exactly_one_output_and_one_input():
    g = sf.Graph("t")
    g.input("q")
    g.llm("a")
    g.connect("q", "a")
    assert build_error(g) == "graph 't' needs exactly one output node but has none"
    g2 = moa()
    g2.input("q2")
    assert build_error(g2) == "graph 't' needs exactly one input node but has 2 (q, q2)"


def test_output_with_two_inputs():
    g = moa()
    g.connect("p0", "out")
    assert build_error(g) == (
        "graph 't', output node 'out' must have exactly one input, has 2 (agg, p0); add a node "
        "that combines them")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": 3}, "graph 't', node 'agg': temperature=3; use a number from 0 to 2"),
        ({"max_tokens": 0}, "graph 't', node 'agg': max_tokens=0; use a whole number >= 1"),
        ({"steps": [8, 0]}, "graph 't', node 'agg': steps=[8, 0]; use a whole number >= 1, a "
                            "non-empty list of them like [32, 64], or 'auto'"),
        ({"join": "most"}, "graph 't', node 'agg': unknown join 'most'"),
        ({"join": {"quorum": 4}}, "graph 't', node 'agg': quorum(4) but only 3 input(s)"),
        ({"temperatur": 1}, "graph 't', node 'agg': unknown field 'temperatur'; did you mean "
                            "'temperature'?"),
        ({"prompt": "moa-agregate"}, "graph 't', node 'agg': unknown prompt template "
                                     "'moa-agregate'"),
        ({"prompt": "{p0} and {p7}"}, "graph 't', node 'agg': prompt uses {p7}, which is not "
                                      "one of its inputs (p0, p1, p2)"),
        ({"on_error": "ignore"}, "graph 't', node 'agg': on_error='ignore'; use 'fail' or "
                                 "'drop'"),
        ({"context": "grow"}, "graph 't', node 'agg': context='grow'; use 'rebuild' or 'append'"),
        ({"sim": {"decode_tps": 0}}, "graph 't', node 'agg': sim.decode_tps=0; use a number of "
                                     "output tokens per second from 0.001 to 1e+09"),
        ({"sim": {"speed": 1}}, "graph 't', node 'agg': unknown field 'sim.speed'; did you mean "
                                "'sim.seed'?"),
    ],
)
def test_bad_parameters_are_named(fields, message):
    assert build_error(moa(**fields)).startswith(message)


def test_bad_names_and_duplicates():
    g = sf.Graph("t")
    with pytest.raises(sf.GraphError, match="node name 'a b' is not valid"):
        g.llm("a b")
    g.llm("a")
    with pytest.raises(sf.GraphError, match="node 'a' is declared twice; rename one"):
        g.llm("a")


def test_edges_into_input_from_output_self_and_twice():
    g = moa()
    g.connect("p0", "agg")
    assert build_error(g) == "graph 't', edge p0 -> agg is declared twice; keep one"
    g = moa()
    g.connect("out", "agg")
    assert build_error(g) == "graph 't', edge out -> agg: the output node 'out' cannot feed other nodes"
    g = moa()
    g.connect("agg", "q")
    assert build_error(g) == "graph 't', edge agg -> q: the input node 'q' cannot have inputs"
    g = moa()
    g.connect("agg", "agg")
    assert build_error(g) == "graph 't', edge agg -> agg connects a node to itself; graphs must be acyclic"


def test_bad_trigger_on_an_edge_names_the_edge():
    g = moa()
    g.connect("q", "agg", {"tokens": -1})
    assert build_error(g).startswith("graph 't', edge q -> agg: tokens(-1): chunk sizes must be")


def test_fn_must_be_an_async_generator_function():
    g = sf.Graph("t")
    g.input("q")

    def plain(inputs):  # not async
        return "x"

    g.fn("f", plain)
    g.connect("q", "f")
    g.connect("f", g.output("out"))
    assert build_error(g) == (
        "graph 't', node 'f': fn=test_fn_must_be_an_async_generator_function.<locals>.plain is "
        "a plain callable; make it an async generator function (async def f(inputs): ... yield "
        "text)")


def test_defaults_apply_unless_overridden():
    g = sf.Graph("t", defaults={"temperature": 0.1, "max_tokens": 99})
    g.input("q")
    g.llm("a")
    g.llm("b", temperature=0.9)
    g.connect("q", ["a", "b"])
    g.llm("c")
    g.connect(["a", "b"], "c")
    g.connect("c", g.output("o"))
    fg = g.build()
    assert (fg.nodes["a"].temperature, fg.nodes["a"].max_tokens) == (0.1, 99)
    assert fg.nodes["b"].temperature == 0.9
    bad = sf.Graph("t", defaults={"colour": 1})
    assert build_error(bad).startswith("graph 't': unknown field 'defaults.colour'; use one of "
                                       "model, system, prompt, temperature,")
