"""The simulated backend: deterministic placeholder text, timings from a timing model.

For exact, fast, reproducible tests and what-if studies; everything it produces is labelled
simulated. A request's timing: its first token arrives ``latency_s + (prompt_tokens -
cached_tokens) / prefill_tps`` after it is sent, and token ``k`` (from 0) ``k / decode_tps``
after the first; ``cached_tokens`` is what the server's prefix cache holds of the prompt, 0
unless the timing's ``cache`` models one (`stairflow._backends.prefix`). The
text depends only on the seed, the node and the position in the node's answer, never on the
prompt, so a node writes the same answer whatever its inputs (what the plumbing-equivalence
property relies on); the answer ends ("stop") after ``output_tokens`` tokens.
Prompt tokens are counted as whitespace-separated words plus 3 per message. A stream can also
hand over, in one wake-up, tokens that nobody can observe one by one (`_SimStream.take`: the
runtime asks for those that complete no chunk), each with the time it was due.

Under ``trio.testing.MockClock(autojump_threshold=0)`` all of this runs in virtual time:
minutes of simulated model time take milliseconds, with exact timestamps.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import trio

from .._core.policy import Rates
from .._errors import ConfigError, GraphError
from .._prompts import Message
from .._settings import SimValue, parse_sim
from .base import Request, Usage
from .prefix import CacheKind, Entry, Owner, PrefixCache, sequence
from .timer import wait_until

if TYPE_CHECKING:
    from .._graph import FrozenGraph

__all__ = ["SimBackend", "SimTiming", "count_tokens", "sim_tokens"]

MESSAGE_OVERHEAD = 3

_WORDS = (
    "the", "light", "of", "a", "clear", "sky", "is", "scattered", "by", "air", "so", "that",
    "blue", "waves", "reach", "us", "from", "every", "direction", "while", "red", "ones",
    "pass", "straight", "through", "which", "is", "why", "sunsets", "glow", "and", "noon",
    "looks", "pale", "this", "answer", "is", "simulated", "text", "from", "a", "timing",
    "model", "not", "a", "real", "model", "so", "its", "words", "carry", "no", "meaning",
    "but", "its", "tokens", "and", "timings", "follow", "the", "graph", "exactly", "each",
    "agent", "writes", "at", "its", "own", "pace", "and", "the", "staircase", "lets", "the",
    "next", "one", "start", "early",
)


@dataclass(frozen=True)
class SimTiming:
    """Timing model of one simulated model endpoint."""

    latency_s: float = 0.05  # request overhead before prefill
    prefill_tps: float = 5000.0  # prompt tokens per second
    decode_tps: float = 60.0  # output tokens per second, one stream
    output_tokens: int = 256  # length of the answer the model wants to write
    seed: int = 0
    cache: CacheKind = "none"  # the server's prefix cache (`stairflow._backends.prefix`)

    def merged(self, overrides: Mapping[str, SimValue]) -> SimTiming:
        known = {f.name for f in fields(self)}
        values: dict[str, Any] = {k: v for k, v in overrides.items() if k in known}
        for key in ("output_tokens", "seed"):
            if key in values:
                values[key] = int(values[key])
        return replace(self, **values)

    def first_token_s(self, prompt_tokens: int) -> float:
        return self.latency_s + prompt_tokens / self.prefill_tps


def count_tokens(messages: Iterable[Message], prefix: str = "") -> int:
    """The simulated tokenizer: words plus a fixed overhead per message."""
    msgs = list(messages)
    words = sum(len(re.findall(r"\S+", m.content)) for m in msgs)
    return words + len(re.findall(r"\S+", prefix)) + MESSAGE_OVERHEAD * len(msgs)


def _answer(seed: int, node: str) -> Iterator[str]:
    """A node's endless answer, one token (a word with the space, newlines or list marker
    before it) at a time: paragraphs of a few sentences, with commas, and after some of them a
    "- " list, so that sentence, paragraph, comma and list-item triggers all find cuts."""
    rng = random.Random(f"{seed}/{node}")
    first = True
    paragraph = 0
    while True:
        with_list = paragraph == 0 or rng.random() < 0.5  # answers often open with a list
        sentences = rng.randint(1, 2) if paragraph == 0 else rng.randint(1, 4)
        for s in range(sentences):
            n = rng.randint(6, 14)
            for i in range(n):
                word = rng.choice(_WORDS)
                if i == 0:
                    word = word.capitalize()
                if i == n - 1:
                    word += ":" if with_list and s == sentences - 1 else "."
                elif rng.random() < 0.1:
                    word += ","
                yield ("" if first else "\n\n" if i == 0 and s == 0 else " ") + word
                first = False
        for item in range(rng.randint(2, 5) if with_list else 0):
            n = rng.randint(2, 7)
            for i in range(n):
                word = rng.choice(_WORDS)
                word = f"- {word.capitalize()}" if i == 0 else word
                yield ("\n\n" if item == 0 else "\n") + word if i == 0 else (
                    " " + word + ("." if i == n - 1 else ""))
        paragraph += 1


class _Answer:
    """The tokens of one node's answer generated so far; more are generated only when asked
    for, so an answer of a billion tokens costs only what is streamed."""

    def __init__(self, seed: int, node: str) -> None:
        self._rest = _answer(seed, node)
        self.tokens: list[str] = []

    def upto(self, n: int) -> list[str]:
        while len(self.tokens) < n:
            self.tokens.append(next(self._rest))
        return self.tokens


@lru_cache(maxsize=4096)
def _answer_of(seed: int, node: str) -> _Answer:
    return _Answer(seed, node)


def _token(seed: int, node: str, total: int, k: int) -> str:
    word = _answer_of(seed, node).upto(k + 1)[k]
    if k == total - 1 and not word.endswith("."):  # the answer's last word ends it
        word = word.rstrip(",:") + "."
    return word


def sim_tokens(seed: int, node: str, n: int, start: int = 0, stop: int | None = None) -> list[str]:
    """Tokens ``start`` to ``stop`` (default: to the end) of the answer a simulated node writes
    when it writes ``n`` tokens in all."""
    end = n if stop is None else min(stop, n)
    return [_token(seed, node, n, k) for k in range(start, end)]


class _SimStream:
    def __init__(self, timing: SimTiming, request: Request, cache: PrefixCache) -> None:
        self._start = now = trio.current_time()
        owner = Owner(request.run_id, request.node, request.model)
        prompt: tuple[str, ...] = ()
        if timing.cache == "none":  # only the count (no sequence to build, per request)
            size, cached = count_tokens(request.messages, request.prefix), 0
        else:
            prompt = sequence(request.messages, request.prefix)
            size, cached = len(prompt), cache.cached(timing.cache, owner, prompt, now)
        self.usage = Usage(prompt_tokens=size, cached_tokens=cached)
        self.finish_reason: str | None = None
        self._first = now + timing.first_token_s(size - cached)
        self._decode = timing.decode_tps
        left = max(0, timing.output_tokens - request.position)
        self._n = min(request.max_tokens, left)
        self._finish = "stop" if self._n == left else "length"
        self._seed, self._node = timing.seed, request.node
        self._total, self._position = timing.output_tokens, request.position
        self._k = 0
        self._entry: Entry | None = None
        if timing.cache != "none":  # what this request processes enters the cache
            self._entry = Entry(prompt, self._first, self._decode, timing.prefill_tps,
                                now + timing.latency_s, cached, self._words)
            cache.add(timing.cache, owner, self._entry)

    def _words(self, k: int) -> list[str]:
        """The words of this request's output tokens 0 .. k-1 (at most as many as it writes)."""
        end = self._position + min(k, self._n)
        return "".join(sim_tokens(self._seed, self._node, self._total, self._position,
                                  end)).split()

    def close(self) -> None:
        if self._entry is not None:
            self._entry.end(trio.current_time(), self._k)

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._k >= self._n:
            if self._n == 0:
                await wait_until(self._first)
            self.finish_reason = self._finish
            raise StopAsyncIteration
        await wait_until(self._first + self._k / self._decode)
        return self._next()

    def _next(self) -> str:
        word = _token(self._seed, self._node, self._total, self._position + self._k)
        self._k += 1
        self.usage.completion_tokens = self._k
        return word

    async def take(self, n: int, write: Callable[[str, float], None]) -> None:
        """The next ``n`` tokens (fewer if the answer ends first) in one wake-up, when the
        last of them is due: each goes to ``write`` with the time it was due, or the time of
        this call if that has passed (as one `__anext__` at a time would have had it).
        Cancelled meanwhile, it hands over those due by then and lets the cancellation on.

        Why: one task switch per token was most of what a simulated token cost, in the
        scheduler and in the cycle collector (docs/performance.md). The runtime asks for
        a batch only of tokens nothing can observe one by one: none completes a chunk."""
        n = min(n, self._n - self._k)
        if n <= 0:
            return
        now = trio.current_time()
        due = [max(now, self._first + (self._k + i) / self._decode) for i in range(n)]
        try:
            await wait_until(due[-1])
        except trio.Cancelled:
            now = trio.current_time()
            for at in due:
                if at > now:
                    break
                write(self._next(), at)
            raise
        for at in due:
            write(self._next(), at)


def _what_if(values: Any, where: str) -> dict[str, SimValue]:
    try:
        return parse_sim(values, where)
    except GraphError as exc:  # an argument, not a graph: a ConfigError, same message
        raise ConfigError(str(exc)) from None


class SimBackend:
    """Simulated model endpoint (see module docs); its output is labelled simulated.

    A node's timing, each layer overriding the one before: ``timing`` (default `SimTiming()`),
    the graph's ``[sim]`` table, the node's own ``sim``, then the what-ifs given here: ``sim``
    for every node and ``nodes`` per node. So ``SimBackend(nodes={"p3": {"decode_tps": 10}})``
    keeps everything the graph says and slows down ``p3`` only. A run attaches the backend to
    its graph (`attach`); use one instance per graph.
    """

    name = "simulated"
    simulated = True

    def __init__(
        self,
        timing: SimTiming | None = None,
        nodes: Mapping[str, Mapping[str, SimValue]] | None = None,
        *,
        sim: Mapping[str, SimValue] | None = None,
    ) -> None:
        if timing is not None and not isinstance(timing, SimTiming):
            raise ConfigError(f"SimBackend(timing={timing!r}): use a SimTiming")
        self.timing = timing or SimTiming()
        self.sim = _what_if(sim or {}, "SimBackend(sim=...)")
        if not isinstance(nodes or {}, Mapping):
            raise ConfigError(f"SimBackend(nodes={nodes!r}): use a mapping of node names to "
                              "timing settings, e.g. {'p3': {'decode_tps': 10}}")
        self.nodes = {k: _what_if(v, f"SimBackend(nodes={{{k!r}: ...}})")
                      for k, v in (nodes or {}).items()}
        self._graph_sim: Mapping[str, SimValue] = {}
        self._graph_nodes: dict[str, Mapping[str, SimValue]] = {}
        self.active = 0  # requests open right now
        self.opened = 0  # requests ever opened
        self.cache = PrefixCache()  # what the cache setting keeps, per run

    @classmethod
    def for_graph(
        cls, graph: FrozenGraph, timing: SimTiming | None = None, *,
        sim: Mapping[str, SimValue] | None = None,
        nodes: Mapping[str, Mapping[str, SimValue]] | None = None,
    ) -> SimBackend:
        """A backend with ``graph``'s timing settings and the given what-ifs."""
        return cls(timing, nodes, sim=sim).attach(graph)

    def attach(self, graph: FrozenGraph) -> SimBackend:
        """Take the timing settings of ``graph`` (its ``[sim]`` table and each node's)."""
        unknown = sorted(set(self.nodes) - {n.name for n in graph.llm_nodes()})
        if unknown:
            raise ConfigError(f"simulated timing for node '{unknown[0]}', which graph "
                              f"'{graph.name}' has no llm node of; check the name")
        self._graph_sim = graph.sim
        self._graph_nodes = {n.name: n.sim for n in graph.llm_nodes()}
        return self

    def timing_for(self, node: str) -> SimTiming:
        return (self.timing.merged(self._graph_sim).merged(self._graph_nodes.get(node, {}))
                .merged(self.sim).merged(self.nodes.get(node, {})))

    def rates(self, node: str) -> Rates:
        """The node's exact rates, for the no-regret step policy (`stairflow._core.policy`):
        a simulated token is at most two words, so it reads back as at most two prompt
        tokens."""
        t = self.timing_for(node)
        return Rates(t.prefill_tps, t.decode_tps, count_tokens, prompt_tokens_per_token=2.0,
                     latency_s=t.latency_s)

    @asynccontextmanager
    async def open_stream(self, request: Request) -> AsyncIterator[_SimStream]:
        if not math.isfinite(request.max_tokens) or request.max_tokens < 0:
            raise ValueError(f"max_tokens={request.max_tokens!r}")
        self.active += 1
        self.opened += 1
        stream = _SimStream(self.timing_for(request.node), request, self.cache)
        try:
            yield stream
        finally:
            stream.close()
            self.active -= 1
