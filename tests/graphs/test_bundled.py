"""The bundled graphs: both modes, and closed-form TTFTs from the timing model."""

from __future__ import annotations

import math

import pytest

import stairflow as sf
from stairflow.testing import run_virtual

Q = "Why is the sky blue?"


@pytest.mark.parametrize("name", ["moa", "moa-3layer", "debate", "chain"])
@pytest.mark.parametrize("mode", ["staircase", "normal"])
def test_bundled_graph_runs(name, mode):
    report = run_virtual(sf.resolve_graph(name), None, mode=mode)
    assert report.trace.events[-1].kind == "run_end"
    assert report.output and report.output_tokens > 0
    assert report.simulated


# The closed forms below are worked out by hand from the timing model written in the graph
# and the words of each prompt, counted here: nothing is computed with stairflow's own prompt
# builder, tokenizer or timing code. The simulated tokenizer counts whitespace-separated words
# plus 3 per message.
PER_MESSAGE = 3
QUESTION_WORDS = 5  # "Why is the sky blue?"
# moa-aggregate's system message: the instruction (13 + 13 + 10 + 9 + 9 words, counted by
# hand from the template), then "Responses:", then "1. <text>", "2. <text>"... ('…' marks an
# unfinished reference and is attached to its last word: no extra word)
INSTRUCTION_WORDS = 54


def words(text: str) -> int:
    return len(text.split())


def chunk_texts(report: sf.Report, src: str, dst: str) -> list[str]:
    return [e.data["text"] for e in report.trace.of("chunk") if e.data["edge"] == (src, dst)]


def test_moa_ttft_matches_the_closed_form_and_beats_the_paper():
    g = sf.resolve_graph("moa")
    # graphs/moa.toml: latency 0.05 s, prefill 4000 tokens/s, decode 60 tokens/s, proposers
    # write 600 tokens; the aggregator's first chunk of each proposer is 8 tokens
    latency, prefill, decode, answer, first = 0.05, 4000, 60, 600, 8
    # each proposer: system "You are a helpful assistant." (5 words) + the question
    proposer_prompt = 5 + QUESTION_WORDS + 2 * PER_MESSAGE

    def t_proposer(n_tokens: int) -> float:  # when a proposer's n-th token arrives
        return latency + proposer_prompt / prefill + (n_tokens - 1) / decode

    def aggregator_prompt(references: list[str]) -> int:
        numbered = sum(1 + words(r) for r in references)  # "1." + the text
        return INSTRUCTION_WORDS + 1 + numbered + QUESTION_WORDS + 2 * PER_MESSAGE

    s = run_virtual(g, Q)
    n = run_virtual(g, Q, mode="normal")
    props = ["p1", "p2", "p3"]
    # staircase: TTFT = max_i T(R_i1) + T_prefill(first aggregator prompt)
    firsts = [chunk_texts(s, p, "agg")[0] for p in props]
    stair = t_proposer(first) + latency + aggregator_prompt(firsts) / prefill
    # normal: TTFT = max_i sum_j T(R_ij) + T_prefill(full prompt)
    wholes = ["".join(chunk_texts(n, p, "agg")) for p in props]
    normal = t_proposer(answer) + latency + aggregator_prompt(wholes) / prefill

    assert math.isclose(s.ttft_s, stair, rel_tol=1e-12)
    assert math.isclose(n.ttft_s, normal, rel_tol=1e-12)
    assert 10.0 < n.ttft_s < 11.0  # the paper's normal-mode shape (10.6 s)
    assert 1 - s.ttft_s / n.ttft_s >= 0.93  # at least the paper's reduction
    # and the first chunks really are 8 tokens of each proposer's answer
    assert [len(e.data["token_ends"]) for e in s.trace.of("chunk")
            if e.data["edge"][1] == "agg" and e.data["index"] == 0] == [first] * 3


def test_chain_ttft_matches_the_closed_form():
    latency, prefill, decode, answer, chunk = 0.25, 1024.0, 16.0, 40, 5
    g = sf.Graph("c", sim={"latency_s": latency, "prefill_tps": prefill, "decode_tps": decode,
                           "output_tokens": answer})
    g.input("question")
    g.llm("a")
    g.llm("b", prompt="Improve: {a}")
    g.llm("c", prompt="Improve: {b}")
    g.connect("question", "a")
    g.connect("a", "b", sf.tokens(chunk))
    g.connect("b", "c", sf.tokens(chunk))
    g.connect("c", g.output("out"))
    fg = g.build()

    def until_first(prompt_words: int) -> float:  # request sent -> first token, one message
        return latency + (prompt_words + PER_MESSAGE) / prefill

    def improve(text: str) -> int:  # "Improve: <text>"
        return 1 + words(text)

    s = run_virtual(fg, Q)
    n = run_virtual(fg, Q, mode="normal")
    a_b, b_c = chunk_texts(s, "a", "b")[0], chunk_texts(s, "b", "c")[0]
    stair = (until_first(QUESTION_WORDS) + (chunk - 1) / decode
             + until_first(improve(a_b)) + (chunk - 1) / decode
             + until_first(improve(b_c)))
    a_all, b_all = "".join(chunk_texts(n, "a", "b")), "".join(chunk_texts(n, "b", "c"))
    normal = (until_first(QUESTION_WORDS) + (answer - 1) / decode
              + until_first(improve(a_all)) + (answer - 1) / decode
              + until_first(improve(b_all)))
    assert math.isclose(s.ttft_s, stair, rel_tol=1e-12)
    assert math.isclose(n.ttft_s, normal, rel_tol=1e-12)


def test_the_report_says_how_much_of_its_inputs_a_node_read():
    stair = sf.run(sf.resolve_graph("moa"), None, virtual_clock=True)
    normal = sf.run(sf.resolve_graph("moa"), None, virtual_clock=True, mode="normal")
    # staircase: the aggregator ends at its 400 tokens, the proposers still writing
    assert {src: (r.tokens, r.whole) for src, r in stair.nodes["agg"].read.items()} == {
        p: (376, False) for p in ("p1", "p2", "p3")}
    assert all(r.sent > r.tokens for r in stair.nodes["agg"].read.values())
    assert {src: (r.tokens, r.sent, r.whole) for src, r in normal.nodes["agg"].read.items()} == {
        p: (600, 600, True) for p in ("p1", "p2", "p3")}
    assert stair.nodes["p1"].read == {"question": sf.Read(1, 1, True)}
    assert stair.to_dict()["nodes"]["agg"]["read"]["p1"] == {"tokens": 376, "sent": 440,
                                                             "whole": False}
