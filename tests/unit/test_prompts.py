from __future__ import annotations

from stairflow._prompts import (
    AGGREGATE_INSTRUCTION,
    UNFINISHED,
    InputText,
    Message,
    StepText,
    build_messages,
)

REFS = [InputText("q", "Why?", True, True), InputText("p1", "Because ", False),
        InputText("p2", "Light.", True)]


def test_moa_aggregate_puts_numbered_references_in_the_system_message():
    msgs, prefix = build_messages("moa-aggregate", "Be brief.", "Why?", REFS, "So far")
    assert prefix == "So far"
    assert msgs[0].role == "system"
    assert msgs[0].content.startswith("Be brief.\n\n" + AGGREGATE_INSTRUCTION)
    assert msgs[0].content.endswith(f"1. Because{UNFINISHED}\n\n2. Light.")
    assert msgs[1] == Message("user", "Why?")


def test_user_placement_for_models_without_a_system_role():
    msgs, _ = build_messages("moa-aggregate-user", "", "Why?", REFS, "")
    assert [m.role for m in msgs] == ["system", "user"]
    assert "1. Because" in msgs[1].content and msgs[1].content.startswith("Why?")


def test_automatic_template_chat_for_the_query_moa_for_references():
    chat, _ = build_messages(None, "", "Why?", REFS[:1], "")
    assert chat == [Message("user", "Why?")]
    agg, _ = build_messages(None, "", "Why?", REFS, "")
    assert AGGREGATE_INSTRUCTION in agg[0].content


def test_template_string_fills_inputs_and_marks_unfinished():
    msgs, _ = build_messages("Q: {query} A: {p1} B: {p2}", "sys", "Why?", REFS, "")
    assert msgs == [Message("system", "sys"),
                    Message("user", f"Q: Why? A: Because{UNFINISHED} B: Light.")]


def test_append_layout_only_grows():
    h1 = [StepText((("p1", "Because"),), "It is")]
    h2 = [*h1, StepText((("p1", " light"), ("p2", "Sun.")), "")]
    m1, p1 = build_messages("moa-aggregate", "", "Why?", REFS, "It is", "append",
                            [StepText((("p1", "Because"),), "")])
    m2, p2 = build_messages("moa-aggregate", "", "Why?", REFS, "It is", "append", h2)
    assert p1 == "" and p2 == ""
    assert m2[: len(m1)] == m1  # the earlier context is a prefix of the later one
    assert m2[len(m1)] == Message("assistant", "It is")
    assert m2[-1].content.startswith("More of the responses:")
    # a step with no new reference text continues the previous answer
    h3 = [*h2[:-1], StepText((("p1", " light"),), " blue"), StepText((), "")]
    m3, p3 = build_messages("moa-aggregate", "", "Why?", REFS, "", "append", h3)
    assert p3 == " blue" and m3[-1].role == "user"
