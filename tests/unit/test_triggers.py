"""Triggers on every split of their input (h11-style): whole, token by token, random splits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stairflow as sf
from stairflow._triggers import Cutter, parse_trigger

TEXT = (
    "The sky is blue. Light scatters! Does it? Yes... it costs 3.14 units.\n\n"
    "New paragraph, with commas, here.\n  \nLast one"
)


def cut_all(trigger: sf.Trigger, pieces: list[str], step: float = 0.0) -> list[str]:
    c = Cutter(trigger)
    out = []
    for i, p in enumerate(pieces):
        out += [x.text for x in c.feed(p, i * step)]
    out.append(c.close().text)
    return out


def splits(text: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.integers(0, len(text)), max_size=20).map(
        lambda cuts: [text[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(text)],
                                                strict=True)]
    )


RULES = [sf.sentence(), sf.paragraph(), sf.regex(r","), sf.complete()]


@pytest.mark.parametrize("trigger", RULES, ids=str)
def test_rule_triggers_cut_the_same_whatever_the_split(trigger):
    whole = cut_all(trigger, [TEXT])
    assert "".join(whole) == TEXT
    assert cut_all(trigger, list(TEXT)) == whole  # one character at a time


@pytest.mark.parametrize("trigger", RULES, ids=str)
@given(data=st.data())
def test_rule_triggers_on_random_splits(trigger, data):
    pieces = data.draw(splits(TEXT))
    assert cut_all(trigger, pieces) == cut_all(trigger, [TEXT])


def test_sentence_chunks():
    assert cut_all(sf.sentence(), list(TEXT))[:4] == [
        "The sky is blue.", " Light scatters!", " Does it?", " Yes...",
    ]
    # "3.14" is not a sentence end
    assert " it costs 3.14 units." in cut_all(sf.sentence(), list(TEXT))


def test_paragraph_chunks():
    assert cut_all(sf.paragraph(), [TEXT]) == [
        TEXT.split("\n\n")[0] + "\n\n", "New paragraph, with commas, here.\n  \n", "Last one",
    ]


def test_complete_is_one_chunk():
    assert cut_all(sf.complete(), list("abc")) == ["abc"]


@given(st.lists(st.text(min_size=1, max_size=4), max_size=60), st.integers(1, 9))
def test_tokens_n(tokens, n):
    chunks = cut_all(sf.tokens(n), tokens)
    assert "".join(chunks) == "".join(tokens)
    for i, chunk in enumerate(chunks[:-1]):
        assert chunk == "".join(tokens[i * n : (i + 1) * n])
    assert len(chunks) == len(tokens) // n + 1


@pytest.mark.parametrize(
    ("trigger", "tokens", "cut_by"),
    [
        (sf.tokens(3), ["a", "b", "c", "d"], 2),  # the 3rd token completes the chunk
        (sf.tokens([1, 2]), ["a", "b", "c"], 0),
        (sf.sentence(), ["Hi", ".", " Yo"], 2),  # the space after '.' confirms the end
        (sf.paragraph(), ["a", "\n", "\n", "b"], 3),
        (sf.regex(";"), ["a", ";", "b"], 2),
    ],
    ids=str,
)
def test_a_chunk_is_cut_by_the_token_that_completes_it(trigger, tokens, cut_by):
    c = Cutter(trigger)
    got = [bool(c.feed(t, float(i))) for i, t in enumerate(tokens)]
    assert got.index(True) == cut_by


def test_growing_schedule_last_size_repeats():
    toks = [str(i % 10) for i in range(40)]
    sizes = [len(c) for c in cut_all(sf.tokens([2, 4, 8]), toks)]
    assert sizes == [2, 4, 8, 8, 8, 8, 2]


def test_a_cut_inside_a_token_counts_it_where_it_ends():
    c = Cutter(sf.sentence())
    assert c.feed("Hi", 1.0) == []
    (piece,) = c.feed(". Then", 2.0)  # the lookahead space arrived: the cut falls inside
    assert (piece.text, piece.tokens, piece.first_token_s, piece.last_token_s) == (
        "Hi.", 1, 1.0, 2.0)
    rest = c.close()
    assert (rest.text, rest.tokens, rest.first_token_s, rest.last) == (" Then", 1, 2.0, True)


def test_interval_cuts_at_its_deadline():
    c = Cutter(sf.interval(0.5))
    assert c.deadline() is None
    c.feed("a", 1.0)
    assert c.deadline() == 1.5
    c.feed("b", 1.2)
    assert c.poll(1.4) == []
    (p,) = c.poll(1.5)
    assert (p.text, p.tokens, p.first_token_s) == ("ab", 2, 1.0)
    assert c.deadline() is None


class EveryComma(sf.Trigger):
    """A user-defined trigger: a chunk after every comma."""

    def boundary(self, buf: sf.Buffer) -> int | None:
        i = buf.text.find(",")
        return i + 1 if i >= 0 else None

    def describe(self) -> str:
        return "comma"


def test_user_defined_trigger():
    assert cut_all(EveryComma(), list("a,b,,c")) == ["a,", "b,", ",", "c"]


class Broken(sf.Trigger):
    def boundary(self, buf: sf.Buffer) -> int | None:
        return len(buf.text) + 5


def test_describe_defaults_to_the_class_name():
    assert Broken().describe() == str(Broken()) == "Broken"
    assert EveryComma().describe() == "comma"


def test_a_trigger_cutting_outside_its_buffer_is_the_triggers_error():
    with pytest.raises(sf.GraphError) as info:
        Cutter(Broken()).feed("x", 0.0)
    assert str(info.value) == (
        "trigger 'Broken' cut at 6, outside its buffer of 1 characters; boundary(buf) must "
        "return None or a length 0 < n <= len(buf.text)")
    assert not isinstance(info.value, sf.InternalError)


def test_a_run_names_the_edge_whose_trigger_cut_outside_its_buffer():
    g = sf.Graph("bad", sim={"output_tokens": 4})
    g.input("q")
    g.llm("a")
    g.connect("q", "a")
    g.connect("a", g.output("out"), trigger=Broken())
    with pytest.raises(sf.NodeError) as info:
        sf.run(g, "hi", virtual_clock=True)
    assert info.value.node == "a"
    assert str(info.value).startswith(
        "node 'a' failed: edge a -> out: trigger 'Broken' cut at ")
    assert isinstance(info.value.__cause__, sf.GraphError)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"tokens": 0}, "tokens(0): chunk sizes must be whole numbers >= 1"),
        ({"tokens": []}, "tokens([]): chunk sizes must be whole numbers >= 1"),
        ({"regex": "("}, "regex('('): not a valid regular expression"),
        ({"regex": "x*"}, "regex('x*'): the pattern matches the empty string"),
        ({"interval_s": 0}, "interval(0): the interval must be a number of seconds > 0"),
        ("sentences", "unknown trigger 'sentences'; use { tokens = 8 }"),
        ({"tokens": 8, "regex": ","}, "unknown trigger"),
    ],
)
def test_bad_triggers_have_clear_errors(value, message):
    with pytest.raises(sf.GraphError, match=None) as info:
        parse_trigger(value)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "trigger",
    [sf.tokens(8), sf.tokens([8, 16]), sf.sentence(), sf.paragraph(), sf.regex(";"),
     sf.interval(0.5), sf.complete()],
    ids=str,
)
def test_config_round_trip(trigger):
    assert parse_trigger(trigger.to_config()) == trigger
