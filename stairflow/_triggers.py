"""Triggers: the rules that cut a token stream into chunks. Sans-I/O, no trio.

Theory of operation. A *trigger* is a stateless rule; a `Cutter` applies one trigger to one
edge's stream. The cutter keeps a `Buffer` of the text received since the last cut (with the
end offset and arrival time of every token in it) and, after every token, asks the trigger
where the current chunk ends (`Trigger.boundary`). A time-based trigger also names a
`deadline`: when that time comes the runtime calls `Cutter.poll` and the buffered text is cut
whatever it holds. At the end of the stream `Cutter.close` returns the remainder as the last
chunk (possibly empty). Cuts may fall inside a token's text (a sentence ends at a '.', not at
the next token's end), so chunks concatenate to exactly the stream's text.

Writing your own trigger: subclass `Trigger` and implement `boundary(buf)` returning the
length of the chunk that ends in `buf.text` (``0 < n <= len(buf.text)``) or ``None`` to wait;
`describe()` (the label in diagrams) defaults to the class name. Keep it stateless: chunk
number, text and token boundaries are all in the buffer. A cut outside the buffer is the
trigger's bug, reported as a `GraphError` naming it (and, in a run, the edge). A rule that
counts tokens rather than reading text sets ``token_based = True``: `stairflow.testing` then
checks that it cuts at token ends, instead of checking that its cuts do not depend on how the
text was split into tokens.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from ._errors import GraphError

__all__ = [
    "Buffer",
    "Cutter",
    "Piece",
    "Trigger",
    "complete",
    "interval",
    "paragraph",
    "parse_trigger",
    "regex",
    "sentence",
    "tokens",
]


@dataclass
class Buffer:
    """Text received since the last cut, as a trigger sees it."""

    index: int = 0  # number of the chunk being built (0 for the first)
    text: str = ""
    token_ends: list[int] = field(default_factory=list)  # offset just after each token
    token_times: list[float] = field(default_factory=list)  # arrival time of each token

    @property
    def started_s(self) -> float | None:
        """Arrival time of the oldest text in the buffer, None when empty."""
        return self.token_times[0] if self.text else None


class Piece(NamedTuple):
    """A chunk as cut: its text, the tokens ending in it, and when its text arrived (a named
    tuple: one is made per chunk, and a frozen dataclass took three times as long)."""

    text: str
    tokens: int
    first_token_s: float | None
    last_token_s: float | None
    last: bool = False
    ends: tuple[int, ...] = ()  # where each token ending in the chunk ends, in the chunk's text


class Trigger(ABC):
    """A rule for where chunks end. Subclass it for your own triggers (see module docs)."""

    # True when the rule counts tokens (reads ``buf.token_ends``) rather than reading text
    token_based: ClassVar[bool] = False

    @abstractmethod
    def boundary(self, buf: Buffer) -> int | None:
        """Length of the chunk that ends inside ``buf.text``, or None to wait for more."""

    def deadline(self, buf: Buffer) -> float | None:
        """A time at which the buffered text is cut whatever it holds (None: no deadline)."""
        return None

    def describe(self) -> str:
        """Short label, e.g. for edges in diagrams (default: the class name)."""
        return type(self).__name__

    def to_config(self) -> Any:
        """The trigger as a graph-file value, or None when it has no file form."""
        return None

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, eq=True)
class _Tokens(Trigger):
    sizes: tuple[int, ...]
    token_based: ClassVar[bool] = True

    def size(self, index: int) -> int:
        return self.sizes[min(index, len(self.sizes) - 1)]

    def boundary(self, buf: Buffer) -> int | None:
        n = self.size(buf.index)
        return buf.token_ends[n - 1] if len(buf.token_ends) >= n else None

    def describe(self) -> str:
        if len(self.sizes) == 1:
            return f"tokens({self.sizes[0]})"
        return "tokens(" + ",".join(map(str, self.sizes)) + ",…)"

    def to_config(self) -> Any:
        return {"tokens": self.sizes[0] if len(self.sizes) == 1 else list(self.sizes)}


@dataclass(frozen=True, eq=True)
class _Regex(Trigger):
    pattern: str
    label: str = ""

    def boundary(self, buf: Buffer) -> int | None:
        # A match is trusted only once some text follows it: with more text, a match at the
        # very end could grow ("\n" -> "\n\n") or vanish ("and" -> "android"), and chunks must
        # not depend on how the stream happened to be split into tokens.
        m = re.search(self.pattern, buf.text)
        return m.end() if m and 0 < m.end() < len(buf.text) else None

    def describe(self) -> str:
        return self.label or f"regex({self.pattern!r})"

    def to_config(self) -> Any:
        return self.label or {"regex": self.pattern}


@dataclass(frozen=True, eq=True)
class _Interval(Trigger):
    seconds: float

    def boundary(self, buf: Buffer) -> int | None:
        return None

    def deadline(self, buf: Buffer) -> float | None:
        started = buf.started_s
        return None if started is None else started + self.seconds

    def describe(self) -> str:
        return f"every {self.seconds:g}s"

    def to_config(self) -> Any:
        return {"interval_s": self.seconds}


@dataclass(frozen=True, eq=True)
class _Complete(Trigger):
    def boundary(self, buf: Buffer) -> int | None:
        return None

    def describe(self) -> str:
        return "complete"

    def to_config(self) -> Any:
        return "complete"


# A sentence ends at . ! or ? (and any closing quotes or brackets) followed by whitespace; the
# lookahead means "3.14" is not cut, and the whitespace starts the next chunk.
SENTENCE_END = r"[.!?]+[\"'”’)\]]*(?=\s)"
PARAGRAPH_END = r"\n[ \t]*\n"


def tokens(n: int | Sequence[int]) -> Trigger:
    """Chunks of ``n`` tokens, or a growing schedule such as ``[8, 16, 32, 64]`` (last repeats)."""
    sizes = (n,) if isinstance(n, int) else tuple(n)
    if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise GraphError(f"tokens({n!r}): chunk sizes must be whole numbers >= 1, e.g. tokens(8)")
    return _Tokens(sizes)


def sentence() -> Trigger:
    """A chunk per sentence."""
    return _Regex(SENTENCE_END, "sentence")


def paragraph() -> Trigger:
    """A chunk per paragraph (cut after a blank line)."""
    return _Regex(PARAGRAPH_END, "paragraph")


def regex(pattern: str) -> Trigger:
    """A chunk ends after each match of ``pattern``, cut once the next character has arrived
    (so a match at the end of the text so far can still grow or vanish)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise GraphError(f"regex({pattern!r}): not a valid regular expression ({exc})") from None
    if compiled.fullmatch(""):
        raise GraphError(
            f"regex({pattern!r}): the pattern matches the empty string; use one that needs text"
        )
    return _Regex(pattern)


def interval(seconds: float) -> Trigger:
    """A chunk every ``seconds`` after its first token arrived."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not seconds > 0:
        raise GraphError(f"interval({seconds!r}): the interval must be a number of seconds > 0")
    return _Interval(float(seconds))


def complete() -> Trigger:
    """One chunk, when the stream ends: normal (non-staircase) streaming."""
    return _Complete()


_HINT = (
    'use { tokens = 8 }, { tokens = [8, 16, 32, 64] }, "sentence", "paragraph", '
    '{ regex = "\\n\\n" }, { interval_s = 0.5 } or "complete"'
)


def parse_trigger(value: Any) -> Trigger:
    """A trigger from its graph-file form; raises GraphError with the accepted forms."""
    if isinstance(value, Trigger):
        return value
    named = {"sentence": sentence, "paragraph": paragraph, "complete": complete}
    if isinstance(value, str) and value in named:
        return named[value]()
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "tokens" and isinstance(arg, int | list):
            return tokens(arg)
        if key == "regex" and isinstance(arg, str):
            return regex(arg)
        if key == "interval_s":
            return interval(arg)
    raise GraphError(f"unknown trigger {value!r}; {_HINT}")


class Cutter:
    """Applies one trigger to one stream: tokens in, chunks out."""

    def __init__(self, trigger: Trigger) -> None:
        self.trigger = trigger
        self.buf = Buffer()
        self.closed = False
        # tokens(n) cuts at the n-th token: no need to ask it before then
        self._size = trigger.size if type(trigger) is _Tokens else None
        self._need = self._size(0) if self._size is not None else 0

    def feed(self, text: str, now: float) -> Sequence[Piece]:
        """Take one token; return the chunks it completes."""
        buf = self.buf
        buf.text += text
        buf.token_ends.append(len(buf.text))
        buf.token_times.append(now)
        if len(buf.token_ends) < self._need:
            return ()
        pieces = []
        while self.buf.text and (cut := self.trigger.boundary(self.buf)) is not None:
            pieces.append(self._cut(cut))
        if self._size is not None:
            self._need = self._size(self.buf.index)
        return pieces

    def deadline(self) -> float | None:
        return self.trigger.deadline(self.buf) if self.buf.text else None

    def poll(self, now: float) -> list[Piece]:
        """Cut the buffer if its deadline has come."""
        due = self.deadline()
        return [self._cut(len(self.buf.text))] if due is not None and now >= due else []

    def close(self) -> Piece:
        """The rest of the stream, as the last chunk."""
        piece = self._cut(len(self.buf.text), allow_empty=True)
        self.closed = True
        return Piece(piece.text, piece.tokens, piece.first_token_s, piece.last_token_s, True,
                     piece.ends)

    def _cut(self, n: int, allow_empty: bool = False) -> Piece:
        buf = self.buf
        valid = isinstance(n, int) and not isinstance(n, bool)
        if not valid or not (0 < n <= len(buf.text) or (allow_empty and n == 0)):
            raise GraphError(
                f"trigger {self.trigger.describe()!r} cut at {n!r}, outside its buffer of "
                f"{len(buf.text)} characters; boundary(buf) must return None or a length "
                f"0 < n <= len(buf.text)"
            )
        if n == len(buf.text) and n:  # the whole buffer (a token count's cut): no search
            times = buf.token_times
            self.buf = Buffer(index=buf.index + 1)
            return Piece(buf.text, len(times), times[0], times[-1], False,
                         tuple(buf.token_ends))
        ends = tuple(end for end in buf.token_ends if end <= n)
        whole = len(ends)
        split = whole < len(buf.token_ends) and (whole == 0 or buf.token_ends[whole - 1] < n)
        touched = whole + (1 if split else 0)
        times = buf.token_times[:touched]
        piece = Piece(buf.text[:n], whole, times[0] if times else None,
                      times[-1] if times else None, False, ends)
        keep_from = whole  # a token split by the cut stays in the buffer for its remainder
        self.buf = Buffer(
            index=buf.index + 1,
            text=buf.text[n:],
            token_ends=[end - n for end in buf.token_ends[keep_from:]],
            token_times=buf.token_times[keep_from:],
        )
        return piece
