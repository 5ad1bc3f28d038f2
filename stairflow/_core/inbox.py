"""A node's inbox: what has arrived on each input, and whether the node may step. Sans-I/O.

Theory of operation. Upstream producers `put` chunks into the consumer's inbox as they are cut.
Chunks that arrive between two steps are *coalesced*: a step consumes everything that arrived
since the previous one (an llm step re-prompts with all text received so far, so nothing is
gained by stepping once per chunk, and coalescing means a node waiting on a slow input never
forces a fast one to stall - no artificial deadlock in reconvergent graphs). The join policy
decides when a step may start (`ready`); `consume` takes the step. A failed input whose node
declared ``on_error = "drop"`` is *dropped*: its text leaves the inbox and the node goes on
with the others. Each input's end is timed, so that until its first step a node can tell when
normal mode's join would have let it step (`normal_due`, for the step policy).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .._errors import InternalError
from .._joins import Join

__all__ = ["Inbox", "Step"]


@dataclass(frozen=True)
class Step:
    """One step's view of a node's inputs (what `fn` nodes receive, one per step)."""

    index: int
    new: Mapping[str, str]  # text that arrived since the previous step, per input
    text: Mapping[str, str]  # all text received so far, per input (dropped inputs excluded)
    chunks: Mapping[str, int]  # how many chunks each input delivered for this step
    finished: frozenset[str]  # inputs whose stream has ended
    dropped: frozenset[str]  # inputs that failed and were dropped
    final: bool  # every input has ended: this is the last step
    query: str = ""  # the user's message


class _Texts(Mapping[str, str]):
    """Each input's text as of one step, joined only when asked for: a node that reads only
    what is new (a pass-through fn node) never pays for the whole stream at every step."""

    def __init__(self, parts: dict[str, tuple[list[str], int, str]]) -> None:
        self._parts = parts  # name -> (received pieces, how many count, pending text)
        self._joined: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        if name not in self._joined:
            pieces, n, pending = self._parts[name]
            self._joined[name] = "".join(pieces[:n]) + pending
        return self._joined[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return repr(dict(self))


@dataclass
class _Port:
    name: str
    received: list[str] = field(default_factory=list)  # consumed by earlier steps, in pieces
    pending: str = ""
    pending_chunks: int = 0
    ended: bool = False  # last chunk arrived (or dropped)
    ended_pending: bool = False  # the end has not been seen by a step yet
    dropped: bool = False
    since: float | None = None  # arrival of the oldest pending chunk
    ended_at: float | None = None  # arrival of the last chunk (or the drop)


@dataclass
class Inbox:
    """Per-input state of one node and its join rule."""

    inputs: Sequence[str]
    join: Join
    query: str = ""
    steps_taken: int = 0
    stepped_at: float = 0.0  # when the last step was taken (the start, before the first)
    _ports: dict[str, _Port] = field(init=False)

    def __post_init__(self) -> None:
        self._ports = {name: _Port(name) for name in self.inputs}
        self._ended = 0  # inputs whose last chunk has arrived

    def put(self, name: str, text: str, last: bool, now: float) -> None:
        port = self._ports[name]
        if port.ended:
            raise InternalError(f"chunk on input '{name}' after its last chunk")
        port.pending += text
        port.pending_chunks += 1
        port.since = now if port.since is None else port.since
        if last:
            port.ended = port.ended_pending = True
            port.ended_at = now
            self._ended += 1

    def drop(self, name: str, now: float) -> None:
        """Input ``name`` failed and is dropped: forget its text, let the node go on."""
        port = self._ports[name]
        self._ended += not port.ended
        port.dropped = port.ended = port.ended_pending = True
        port.ended_at = now if port.ended_at is None else port.ended_at
        port.received, port.pending = [], ""  # a new list: earlier steps keep their text
        port.since = now if port.since is None else port.since

    def pending_chunks(self, name: str) -> int:
        return self._ports[name].pending_chunks

    def _is_pending(self, p: _Port) -> bool:
        return p.pending_chunks > 0 or p.ended_pending

    def _candidates(self) -> list[_Port]:
        return [p for p in self._ports.values() if not p.ended or self._is_pending(p)]

    def ready(self) -> bool:
        """The join holds, or nothing more will ever arrive."""
        candidates = pending = 0  # one pass, no list: this runs at every arrival
        for p in self._ports.values():
            if p.pending_chunks > 0 or p.ended_pending:
                candidates += 1
                pending += 1
            elif not p.ended:
                candidates += 1
        return not candidates or self.join.satisfied(pending, candidates)

    def wait_deadline(self, ready_since: float) -> float | None:
        """When a straggler timeout lets the node proceed anyway (None: never)."""
        if not self.join.waits:
            return None
        ports = self._ports.values()
        times = [p.since for p in ports if self._is_pending(p) and p.since is not None]
        return self.join.deadline(ready_since, min(times), self.stepped_at) if times else None

    def normal_due(self) -> float | None:
        """Before the first step: when normal mode's join would let the node step, judged on
        the inputs that have ended (normal mode receives each whole, at its end: see
        `Join.first_due`). None once a step is taken, or while no end tells yet."""
        if self.steps_taken:
            return None
        ends = [p.ended_at for p in self._ports.values() if p.ended_at is not None]
        return self.join.first_due(ends, len(self._ports), self.stepped_at)

    @property
    def all_dropped(self) -> bool:
        return all(p.dropped for p in self._ports.values())

    @property
    def exhausted(self) -> bool:
        """Every input has ended and every end has been consumed."""
        return not self._candidates()

    @property
    def all_ended(self) -> bool:
        """Every input's last chunk has arrived (the next step is the final one)."""
        return self._ended == len(self._ports)

    def peek(self) -> Step:
        """The step `consume` would take now, without taking it."""
        new: dict[str, str] = {}
        chunks: dict[str, int] = {}
        texts: dict[str, tuple[list[str], int, str]] = {}
        finished: list[str] = []
        dropped: list[str] = []
        for p in self._ports.values():  # one pass: this runs at every step of every node
            if p.pending_chunks or p.ended_pending:
                new[p.name], chunks[p.name] = p.pending, p.pending_chunks
            if p.dropped:
                dropped.append(p.name)
            else:
                texts[p.name] = (p.received, len(p.received), p.pending)
            if p.ended:
                finished.append(p.name)
        return Step(self.steps_taken, MappingProxyType(new), _Texts(texts),
                    MappingProxyType(chunks), frozenset(finished), frozenset(dropped),
                    self._ended == len(self._ports), self.query)

    def consume(self, now: float | None = None) -> Step:
        step = self.peek()
        if now is not None:
            self.stepped_at = now
        for p in self._ports.values():
            if p.pending:
                p.received.append(p.pending)
            p.pending, p.pending_chunks, p.ended_pending, p.since = "", 0, False, None
        self.steps_taken += 1
        return step
