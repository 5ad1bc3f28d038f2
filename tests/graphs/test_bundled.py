"""The bundled graphs: both modes, and closed-form TTFTs from the timing model."""

from __future__ import annotations

import math

import pytest

import stairflow as sf
from stairflow._backends.sim import count_tokens, sim_tokens
from stairflow._prompts import InputText, build_messages
from stairflow.testing import run_virtual

Q = "Why is the sky blue?"


@pytest.mark.parametrize("name", ["moa", "moa-3layer", "debate", "chain"])
@pytest.mark.parametrize("mode", ["staircase", "normal"])
def test_bundled_graph_runs(name, mode):
    report = run_virtual(sf.resolve_graph(name), None, mode=mode)
    assert report.trace.events[-1].kind == "run_end"
    assert report.output and report.output_tokens > 0
    assert report.simulated


def prompt_tokens(node: sf.LLMNode, inputs: list[InputText]) -> int:
    messages, prefix = build_messages(node.prompt, node.system, Q, inputs, "")
    return count_tokens(messages, prefix)


def test_moa_ttft_matches_the_closed_form_and_beats_the_paper():
    g = sf.resolve_graph("moa")
    sim = sf.SimBackend.for_graph(g)
    props = ["p1", "p2", "p3"]
    first = 8  # tokens in each proposer's first chunk

    def t_proposer(p: str, n_tokens: int) -> float:
        t = sim.timing_for(p)
        node = g.nodes[p]
        assert isinstance(node, sf.LLMNode)
        p_tok = prompt_tokens(node, [InputText("question", Q, True, True)])
        return t.latency_s + p_tok / t.prefill_tps + (n_tokens - 1) / t.decode_tps

    agg = g.nodes["agg"]
    assert isinstance(agg, sf.LLMNode)
    ta = sim.timing_for("agg")

    def refs(n_tokens: int, finished: bool) -> list[InputText]:
        out = []
        for p in props:
            t = sim.timing_for(p)
            out.append(InputText(p, "".join(sim_tokens(t.seed, p, t.output_tokens)[:n_tokens]),
                                 finished))
        return out

    # staircase: TTFT = max_i T(R_i1) + T_prefill(first aggregator prompt)
    stair = max(t_proposer(p, first) for p in props) + ta.latency_s + prompt_tokens(
        agg, refs(first, False)) / ta.prefill_tps
    # normal: TTFT = max_i sum_j T(R_ij) + T_prefill(full prompt)
    out_tokens = sim.timing_for("p1").output_tokens
    normal = max(t_proposer(p, out_tokens) for p in props) + ta.latency_s + prompt_tokens(
        agg, refs(out_tokens, True)) / ta.prefill_tps

    s = run_virtual(g, Q)
    n = run_virtual(g, Q, mode="normal")
    assert math.isclose(s.ttft_s, stair, rel_tol=1e-12)
    assert math.isclose(n.ttft_s, normal, rel_tol=1e-12)
    assert 10.0 < n.ttft_s < 11.0  # the paper's normal-mode shape (10.6 s)
    assert 1 - s.ttft_s / n.ttft_s >= 0.93  # at least the paper's reduction


def test_chain_ttft_matches_the_closed_form():
    g = sf.Graph("c", sim={"latency_s": 0.25, "prefill_tps": 1024.0, "decode_tps": 16.0,
                           "output_tokens": 40})
    g.input("question")
    g.llm("a")
    g.llm("b", prompt="Improve: {a}")
    g.llm("c", prompt="Improve: {b}")
    g.connect("question", "a")
    g.connect("a", "b", sf.tokens(5))
    g.connect("b", "c", sf.tokens(5))
    g.connect("c", g.output("out"))
    fg = g.build()
    sim = sf.SimBackend.for_graph(fg)
    t = sim.timing_for("a")

    def text(node: str, n: int) -> str:
        return "".join(sim_tokens(t.seed, node, t.output_tokens)[:n])

    def node(name: str) -> sf.LLMNode:
        n = fg.nodes[name]
        assert isinstance(n, sf.LLMNode)
        return n

    def prefill(name: str, inputs: list[InputText]) -> float:
        return t.latency_s + prompt_tokens(node(name), inputs) / t.prefill_tps

    q = InputText("question", Q, True, True)
    stair = (prefill("a", [q]) + 4 / t.decode_tps
             + prefill("b", [InputText("a", text("a", 5), False)]) + 4 / t.decode_tps
             + prefill("c", [InputText("b", text("b", 5), False)]))
    normal = (prefill("a", [q]) + 39 / t.decode_tps
              + prefill("b", [InputText("a", text("a", 40), True)]) + 39 / t.decode_tps
              + prefill("c", [InputText("b", text("b", 40), True)]))
    assert math.isclose(run_virtual(fg, Q).ttft_s, stair, rel_tol=1e-12)
    assert math.isclose(run_virtual(fg, Q, mode="normal").ttft_s, normal, rel_tol=1e-12)
