"""Raw completion prompts (`render_prompt`): in the append layout a step's prompt and what it
wrote are, byte for byte, the start of the next step's prompt, in every format - what a
server's prefix cache needs to serve them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stairflow._backends.openai import render_prompt
from stairflow._prompts import InputText, StepText, build_messages
from stairflow._settings import PROMPT_FORMATS

words = st.text("abc .,\n", min_size=1, max_size=12).map(str.strip).filter(bool)


def prompt(fmt: str, history: list[StepText], output: str) -> str:
    inputs = [InputText("p1", "", False), InputText("p2", "", False)]
    messages, prefix = build_messages(None, "", "Why is the sky blue?", inputs, output,
                                      "append", history)
    return render_prompt(fmt, messages, prefix.rstrip())


@pytest.mark.parametrize("fmt", PROMPT_FORMATS)
@given(st.lists(st.tuples(words, words, words), min_size=2, max_size=4))
def test_in_the_append_layout_each_prompt_and_its_answer_start_the_next_prompt(fmt, steps):
    history: list[StepText] = []
    output = ""
    for i, (a, b, wrote) in enumerate(steps):
        history.append(StepText((("p1", a), ("p2", b)), ""))
        before = prompt(fmt, history, output)
        written = " " + wrote  # a model's answer after "Answer:" or a turn's start
        history[-1] = StepText(history[-1].new, written)
        output += written
        if i + 1 < len(steps):
            after = prompt(fmt, [*history, StepText((("p1", steps[i + 1][0]),), "")], output)
            assert after.startswith(before + written), (before, after)


def test_a_one_turn_document_is_a_question_then_an_answer():
    messages, prefix = build_messages(None, "Be brief.", "Why?", [], "")
    assert render_prompt("document", messages, prefix) == "Be brief.\n\nQuestion: Why?\nAnswer:"
    assert render_prompt("document", messages, "It") == "Be brief.\n\nQuestion: Why?\nAnswer: It"
