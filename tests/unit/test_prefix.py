"""The simulator's prefix cache (`stairflow._backends.prefix`): what a request reuses, when,
and what that does to its timing and to the reports."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stairflow as sf
from stairflow._backends.prefix import Entry, Owner, PrefixCache, sequence
from stairflow._backends.sim import count_tokens, sim_tokens
from stairflow.testing import check_timeline, run_virtual

QUESTION = "why is the sky blue?"


def moa(context: str = "append") -> sf.FrozenGraph:
    g = sf.resolve_graph("moa")
    return replace(g, nodes={n: replace(v, context=context) if isinstance(v, sf.LLMNode) else v
                             for n, v in g.nodes.items()})


def run(cache: str, mode: str = "staircase", context: str = "append",
        backend: sf.SimBackend | None = None) -> sf.Report:
    return run_virtual(moa(context), QUESTION, mode=mode,
                       backend=backend or sf.SimBackend(sim={"cache": cache}))


messages = st.lists(st.builds(sf.Message, st.sampled_from(["system", "user", "assistant"]),
                              st.text(" \nab.…-", max_size=30)), max_size=4)


@given(messages, st.text(" \nab-", max_size=20))
def test_a_prompts_tokens_are_as_many_as_the_simulated_tokenizer_counts(msgs, prefix):
    assert len(sequence(msgs, prefix)) == count_tokens(msgs, prefix)


def steps(report: sf.Report, node: str) -> list[dict]:
    closed = report.trace.of("request_end", node) + report.trace.of("request_cancel", node)
    return [e.data for e in sorted(closed, key=lambda e: e.data["step"])]


def test_in_the_append_layout_each_step_reuses_all_the_last_one_read_and_wrote():
    report = run("slot")
    agg = steps(report, "agg")
    assert len(agg) >= 3
    assert agg[0]["cached_tokens"] == 0
    for before, step in itertools.pairwise(agg):
        # what the slot holds: the last prompt, and the words the last step wrote after it
        assert step["cached_tokens"] == before["prompt_tokens"] + _words(report, before)
    # proposers send one request each: nothing to reuse
    assert all(s["cached_tokens"] == 0 for p in ("p1", "p2", "p3") for s in steps(report, p))


def _words(report: sf.Report, data: dict) -> int:
    """How many words the aggregator's step ``data`` wrote (its tokens, read back)."""
    timing = sf.SimBackend.for_graph(moa()).timing_for("agg")
    position = next(e.data["position"] for e in report.trace.of("request_sent", "agg")
                    if e.data["step"] == data["step"])
    return len("".join(sim_tokens(timing.seed, "agg", timing.output_tokens, position,
                                  position + data["tokens"])).split())


def test_the_first_token_comes_after_reading_only_the_uncached_prompt():
    report = run("slot")
    timing = sf.SimBackend.for_graph(moa()).timing_for("agg")
    sent = {e.data["step"]: e.t for e in report.trace.of("request_sent", "agg")}
    firsts = {e.data["step"]: e.t for e in report.trace.of("first_token", "agg")}
    for data in steps(report, "agg"):
        if data["step"] in firsts and data["cached_tokens"]:
            uncached = data["prompt_tokens"] - data["cached_tokens"]
            want = sent[data["step"]] + timing.latency_s + uncached / timing.prefill_tps
            assert firsts[data["step"]] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("cache", ["slot", "shared"])
def test_normal_mode_reuses_nothing_and_staircase_recomputes_less(cache):
    stair, normal = run(cache), run(cache, mode="normal")
    assert normal.cached_tokens == 0 and normal.recomputed_tokens == normal.prompt_tokens
    assert stair.recomputed_tokens == stair.prompt_tokens - stair.cached_tokens
    # the target: at most 1.2x normal mode's recomputed prompt tokens, same TTFT
    assert stair.recomputed_tokens <= 1.2 * normal.recomputed_tokens
    assert stair.ttft_s == run("none").ttft_s
    # proposers sent the same prompt at the same instant: neither sees the other's
    assert all(s["cached_tokens"] == 0 for p in ("p1", "p2", "p3") for s in steps(stair, p))


def test_without_a_cache_nothing_is_reused():
    report = run("none")
    assert report.cached_tokens == 0 and report.recomputed_tokens == report.prompt_tokens


def test_a_cache_belongs_to_one_run():
    backend = sf.SimBackend(sim={"cache": "shared"})
    first, second = run("shared", backend=backend), run("shared", backend=backend)
    assert first.cached_tokens == second.cached_tokens > 0
    assert first.ttft_s == second.ttft_s and first.total_s == second.total_s


def test_a_request_cut_while_reading_its_prompt_leaves_what_it_read():
    prompt = tuple("abcdefghij")
    entry = Entry(prompt, first_at=1.0, decode_tps=10.0, read_tps=10.0, start_read=0.2,
                  cached=2, words=lambda k: ["w"] * k)
    assert entry.visible(1.0) == () and entry.visible(1.05) == (*prompt, "w")
    entry.end(0.55, 0)  # 0.35 s of reading at 10 tokens/s: 3 more than the 2 cached
    assert entry.visible(9.0) == prompt[:5]
    done = Entry(prompt, 1.0, 10.0, 10.0, 0.2, 2, lambda k: ["w"] * k)
    done.end(1.25, 3)
    assert done.visible(1.1) == (*prompt, "w", "w", "w")


def test_the_last_prompt_token_is_always_computed_again():
    cache, prompt = PrefixCache(), tuple("abc")
    cache.add("slot", Owner(1, "n", None), Entry(prompt, 0.0, 1.0, 1.0, 0.0, 0, lambda k: []))
    assert cache.cached("slot", Owner(1, "n", None), prompt, 1.0) == 2
    assert cache.cached("slot", Owner(2, "n", None), prompt, 1.0) == 0
    assert cache.cached("none", Owner(1, "n", None), prompt, 1.0) == 0


def test_the_reference_models_a_slot_cache_and_says_it_does_not_model_a_shared_one():
    for mode in ("staircase", "normal"):
        backend = sf.SimBackend(sim={"cache": "slot"})
        report = run("slot", mode=mode, backend=backend)
        want = check_timeline(report, moa(), QUESTION, backend=backend)
        assert sum(want["agg"].cached_tokens) == report.nodes["agg"].cached_tokens
    backend = sf.SimBackend(sim={"cache": "shared"})
    report = run("shared", backend=backend)
    with pytest.raises(sf.ConfigError, match="node 'p1' has a shared prefix cache"):
        check_timeline(report, moa(), QUESTION, backend=backend)


def test_an_unknown_cache_kind_is_a_one_line_error_with_the_fix():
    with pytest.raises(sf.ConfigError, match=r"cache='lru'; use \"none\", \"slot\""):
        sf.SimBackend(sim={"cache": "lru"})
    g = sf.Graph("g", sim={"cache": "radix"})
    g.input("q")
    g.llm("a")
    g.connect("q", "a")
    g.connect("a", g.output("out"))
    with pytest.raises(sf.GraphError, match=r"cache='radix'"):
        g.build()
