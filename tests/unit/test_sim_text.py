"""The simulated backend's text: deterministic, shaped like an answer, generated lazily."""

from __future__ import annotations

import tracemalloc

import stairflow as sf
from stairflow._backends.sim import sim_tokens
from stairflow.testing import run_virtual


def test_the_text_has_what_every_bundled_trigger_looks_for():
    text = "".join(sim_tokens(0, "a", 400))
    assert ", " in text  # clauses (regex triggers)
    assert ". " in text  # sentences
    assert "\n\n" in text  # paragraphs
    assert "\n- " in text  # list items (examples/custom_trigger.py)
    assert text.endswith(".")
    # an answer opens with a short paragraph, then a list
    head, _, rest = text.partition("\n\n")
    assert rest.startswith("- ") and head.endswith(":")


def test_any_stretch_of_an_answer_is_the_same_as_in_the_whole():
    whole = sim_tokens(3, "p1", 200)
    assert sim_tokens(3, "p1", 200, 50, 120) == whole[50:120]
    assert sim_tokens(3, "p1", 200, 190, 500) == whole[190:]
    # only the answer's last token depends on its length (it ends the last sentence)
    assert sim_tokens(3, "p1", 300)[:199] == whole[:199]
    assert sim_tokens(3, "p2", 200) != whole


def test_a_long_answer_costs_only_what_is_streamed():
    # the longest answer a graph may declare; built eagerly, it would take tens of MB
    g = sf.Graph("big", sim={"output_tokens": 10**6})
    g.input("q")
    g.llm("a", max_tokens=5)
    g.connect("q", "a")
    g.connect("a", g.output("out"))
    tracemalloc.start()
    try:
        report = run_virtual(g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.output_tokens == 5
    assert peak < 5_000_000, f"{peak} bytes"
