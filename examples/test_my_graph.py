"""How to test your own graph with stairflow.testing (run it with pytest)."""

from hypothesis import given, settings

import stairflow as sf
from stairflow.testing import (
    check_graph,
    check_run,
    check_timeline,
    dyadic_timings,
    moa_graphs,
    run_virtual,
)


def my_graph(timing: dict[str, float] | None = None) -> sf.Graph:
    g = sf.Graph("mine", sim=timing or {"output_tokens": 100})
    g.input("q")
    g.llm("a")
    g.llm("b")
    g.llm("judge", prompt="moa-aggregate")
    g.connect("q", ["a", "b"])
    g.connect(["a", "b"], "judge", trigger=sf.tokens([8, 16, 32]))
    g.connect("judge", g.output("out"))
    return g


def test_my_graph_keeps_every_invariant():
    # both modes, every invariant, and every time exactly as the timing model says
    reports = check_graph(my_graph(), "Is tea better than coffee?")
    assert reports["staircase"].ttft_s < reports["normal"].ttft_s


def test_my_graph_starts_answering_within_half_a_second_of_model_time():
    assert run_virtual(my_graph(), "Why?").ttft_s < 0.5


@settings(max_examples=20)
@given(dyadic_timings())
def test_my_graph_keeps_every_invariant_under_any_timing(timing):
    for mode in ("staircase", "normal"):
        report = run_virtual(my_graph(timing), mode=mode)
        check_run(report, my_graph(timing))
        check_timeline(report, my_graph(timing))


@settings(max_examples=20)
@given(moa_graphs())
def test_staircase_never_slower_on_moa_shapes(g):
    # every drawn node writes at least one token, so both TTFTs are numbers
    assert run_virtual(g).ttft_s <= run_virtual(g, mode="normal").ttft_s


if __name__ == "__main__":
    test_my_graph_keeps_every_invariant()
    test_my_graph_starts_answering_within_half_a_second_of_model_time()
    test_my_graph_keeps_every_invariant_under_any_timing()
    test_staircase_never_slower_on_moa_shapes()
    print("[simulated] all checks passed")
