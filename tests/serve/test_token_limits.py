"""Limits count tokens, not stream pieces: how a streamed piece becomes tokens
(`split_tokens`), and a backend that ignores a request's max_tokens cut at it. Against a real
HTTP upstream: tests/integration/test_misbehaving_server.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import stairflow as sf
from stairflow._backends.openai import split_tokens


@pytest.mark.parametrize(("text", "tokens"), [
    (" hello", [" hello"]), ("Hello", ["Hello"]), (".\n\n", [".\n\n"]), ("\n\n", ["\n\n"]),
    (" a b c d e", [" a", " b", " c", " d", " e"]),
    ("one two.\n\nThree", ["one", " two.", "\n\nThree"]),
    ("x" * 70, ["x" * 32, "x" * 32, "x" * 6]),
    (" " * 100, [" " * 64, " " * 36]),
    # scripts without spaces: a token per two characters (a tokenizer gives one or two)
    ("你好", ["你好"]), ("你好吗", ["你好", "吗"]), (" 東京です。", [" 東京", "です", "。"]),
    ("Hello世界 ok", ["Hello", "世界", " ok"]), ("สวัสดีครับ", ["สว", "ัส", "ดี", "คร", "ับ"]),
])
def test_a_piece_counts_a_token_per_word(text, tokens):
    assert split_tokens(text, 1000) == (tokens, False)
    assert "".join(tokens) == text


def test_a_piece_past_the_limit_is_cut_there():
    units, left = split_tokens(" w" * 5_000_000, 200)  # 10 MB in one piece
    assert len(units) == 200 and left and "".join(units) == " w" * 200
    units, left = split_tokens("x" * 10_000_000, 3)
    assert units == ["x" * 32] * 3 and left
    units, left = split_tokens("中" * 3_000_000, 100)  # 9 MB of Chinese in one piece
    assert units == ["中中"] * 100 and left


def test_the_servers_own_count_applies_when_it_is_higher():
    # a server's running usage.completion_tokens says this piece is 4 tokens: it counts 4
    assert split_tokens("abcdefgh", 100, reported=4) == (["ab", "cd", "ef", "gh"], False)
    assert split_tokens("abcdefgh", 2, reported=4) == (["abcd", "efgh"], False)
    # never fewer than the estimate: a server cannot pass more text by claiming one token
    assert split_tokens(" a b c", 100, reported=1) == ([" a", " b", " c"], False)


class Ignoring:
    """A backend that ignores max_tokens: it writes 1,000 tokens whatever it is asked."""

    name = "ignores max_tokens"
    simulated = True

    def __init__(self) -> None:
        self.sent = 0

    @asynccontextmanager
    async def open_stream(self, request: sf.Request) -> AsyncIterator[Any]:
        yield self._stream()

    def _stream(self) -> Any:
        backend = self

        class Stream:
            usage = sf.Usage()
            finish_reason: str | None = None

            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> str:
                if backend.sent == 1000:
                    self.finish_reason = "stop"
                    raise StopAsyncIteration
                backend.sent += 1
                return " word"

        return Stream()


def test_a_backend_that_ignores_max_tokens_is_cut_at_the_nodes_limit():
    g = sf.Graph("one")
    q = g.input("q")
    a = g.llm("a", max_tokens=200)
    g.connect(q, a)
    g.connect(a, g.output("o"))
    backend = Ignoring()
    report = sf.run(g, "why?", backend=backend, virtual_clock=True)
    assert report.nodes["a"].tokens == 200 and report.output == " word" * 200
    assert backend.sent == 201  # the one past the limit is where it was cut
    (end,) = report.trace.of("request_end", "a")
    assert end.data["finish_reason"] == "length"
