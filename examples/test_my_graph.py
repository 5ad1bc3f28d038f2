"""How to test your own graph with stairflow.testing (run it with pytest)."""

from hypothesis import given, settings

import stairflow as sf
from stairflow.testing import check_graph, moa_graphs, run_virtual


def my_graph() -> sf.Graph:
    g = sf.Graph("mine", sim={"output_tokens": 100})
    g.input("q")
    g.llm("a")
    g.llm("b")
    g.llm("judge", prompt="moa-aggregate")
    g.connect("q", ["a", "b"])
    g.connect(["a", "b"], "judge", trigger=sf.tokens([8, 16, 32]))
    g.connect("judge", g.output("out"))
    return g


def test_my_graph_keeps_every_token_and_terminates():
    reports = check_graph(my_graph(), "Is tea better than coffee?")
    assert reports["staircase"].ttft_s < reports["normal"].ttft_s


def test_my_graph_starts_answering_within_half_a_second_of_model_time():
    assert run_virtual(my_graph(), "Why?").ttft_s < 0.5


@settings(max_examples=20)
@given(moa_graphs())
def test_staircase_never_slower_on_moa_shapes(g):
    stair, normal = run_virtual(g).ttft_s, run_virtual(g, mode="normal").ttft_s
    assert normal is None or (stair is not None and stair <= normal)


if __name__ == "__main__":
    test_my_graph_keeps_every_token_and_terminates()
    test_my_graph_starts_answering_within_half_a_second_of_model_time()
    test_staircase_never_slower_on_moa_shapes()
    print("[simulated] all checks passed")
