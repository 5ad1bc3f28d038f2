"""A model server's prefix cache, as the simulated backend models it. Sans-I/O.

Three kinds (the ``cache`` setting of the simulated timing, e.g. ``--sim cache=slot``):

- ``"none"`` (default): nothing is reused; every prompt token is read.
- ``"slot"``: llama.cpp's slots, one per llm node of a run - what stairflow's slot pinning
  gives on llama.cpp while the server has a slot for every node streaming at once
  (docs/backends.md). A slot holds what its node's last request processed: the prompt read
  (all of it, or as much as was read before the request was cut) and the tokens written
  after it. A request reuses the longest common prefix with it.
- ``"shared"``: one cache per model for every request of a run, as vLLM's automatic prefix
  caching and SGLang's radix cache have it, of unbounded size: a request reuses the longest
  prefix that any request before it has processed.

A request reuses at most all but one of its prompt tokens (servers compute the last one again
to start decoding), and reads the rest at the prefill rate. Tokens enter the cache as they are
processed: a prompt when its first token is written, each output token when it is written; a
request sees only what was processed strictly before it was sent (so requests sent at the
same instant never depend on the order they happen to be opened in), and everything a
request processed once it has ended. The cache belongs to one run (`Request.run_id`), so
runs of a benchmark never read each other's prompts and staircase and normal mode are
compared on the same footing.

Token sequences come from the simulated tokenizer (`sequence`): each message's words, then
three tokens that close it (the three per message `count_tokens` counts), then the prefix's
words; what a request writes follows as words. So the answer a node wrote in one step and
reads back in the next, in the append layout, is a prefix hit, as on a real server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from .._prompts import Message

__all__ = ["CACHE_KINDS", "CacheKind", "Entry", "Owner", "PrefixCache", "common_prefix",
           "sequence"]

CacheKind = Literal["none", "slot", "shared"]
CACHE_KINDS: tuple[CacheKind, ...] = ("none", "slot", "shared")

_WORD = re.compile(r"\S+")


def sequence(messages: Iterable[Message], prefix: str = "") -> tuple[str, ...]:
    """The simulated tokens of a prompt; as many as `count_tokens` counts."""
    out: list[str] = []
    for m in messages:
        out += _WORD.findall(m.content)
        out += (f"</{m.role}>", "\n", "\n")
    out += _WORD.findall(prefix)
    return tuple(out)


def common_prefix(a: Sequence[str], b: Sequence[str], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Entry:
    """What one request processes: its prompt, read by ``first_at``, then the words of its
    output tokens, token ``k`` written at ``first_at + k / decode_tps``; once it ends, only
    what it had processed by then (``ended``)."""

    prompt: tuple[str, ...]
    first_at: float
    decode_tps: float
    read_tps: float  # its prefill rate
    start_read: float  # when it starts reading its uncached prompt tokens (after latency)
    cached: int
    words: Callable[[int], list[str]]  # the words of output tokens 0 .. k-1
    ended: tuple[str, ...] | None = None

    def visible(self, now: float) -> Sequence[str]:
        """The tokens a request sent at ``now`` can reuse."""
        if self.ended is not None:
            return self.ended
        if self.first_at >= now:
            return ()
        written = math.ceil((now - self.first_at) * self.decode_tps)  # k / d < now - first
        return self.prompt + tuple(self.words(written))

    def end(self, now: float, written: int) -> None:
        """The request ended at ``now`` with ``written`` output tokens: keep what it processed
        (a prompt cut while being read, up to where the reading got)."""
        if now >= self.first_at:
            self.ended = self.prompt + tuple(self.words(written))
            return
        read = self.cached + max(0, math.floor((now - self.start_read) * self.read_tps))
        self.ended = self.prompt[:min(read, len(self.prompt))]


class Owner(NamedTuple):
    """Whose request it is: its run (`Request.run_id`), node and model."""

    run: int
    node: str
    model: str | None


@dataclass
class _RunCache:
    slots: dict[str, Entry]  # by node
    shared: dict[str | None, list[Entry]]  # by model


class PrefixCache:
    """The prefix cache of the simulated servers of one backend (see the module docs)."""

    def __init__(self) -> None:
        self._runs: dict[int, _RunCache] = {}  # oldest first: the latest runs' are kept

    def cached(self, kind: CacheKind, owner: Owner, prompt: Sequence[str], now: float) -> int:
        """How many of ``prompt``'s tokens a request sent at ``now`` reuses."""
        held = self._runs.get(owner.run)
        if kind == "none" or not prompt or held is None:
            return 0
        limit = len(prompt) - 1  # the last prompt token is always computed again
        if kind == "slot":
            entry = held.slots.get(owner.node)
            return 0 if entry is None else common_prefix(prompt, entry.visible(now), limit)
        return max((common_prefix(prompt, e.visible(now), limit)
                    for e in held.shared.get(owner.model, ())), default=0)

    def add(self, kind: CacheKind, owner: Owner, entry: Entry) -> None:
        """Record a request just sent (its tokens become visible as they are processed)."""
        if kind == "none":
            return
        held = self._runs.get(owner.run)
        if held is None:
            held = self._runs[owner.run] = _RunCache({}, {})
            if len(self._runs) > _KEEP_RUNS:  # many runs at once; finished ones idle
                del self._runs[next(iter(self._runs))]
        if kind == "slot":
            held.slots[owner.node] = entry
        else:
            held.shared.setdefault(owner.model, []).append(entry)


# runs whose caches are kept: far more than run at once in any test or benchmark
_KEEP_RUNS = 4096
