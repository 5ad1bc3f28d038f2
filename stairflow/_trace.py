"""The trace: every event of a run with its time, and nothing else to keep in sync.

Times are seconds since the run started, read from Trio's clock (virtual under MockClock).
Event kinds, with their data:

    run_start {graph, mode, backend, simulated}    run_end {}   run_error {error}  run_cancel {}
        (the end events carry ``rates`` when a real backend measured its endpoints: a list of
        {base_url, model, latency_s, prefill_tps, decode_tps, requests})
    node_start                        node_end {tokens, text}   node_error {error, dropped}
    node_cancel {reason, tokens, text} (every consumer had finished: its output was not needed)
    request_sent {step, max_tokens, position}     first_token {step}
    request_end {step, tokens, prompt_tokens, cached_tokens, finish_reason}
    request_cancel {step, tokens, prompt_tokens, cached_tokens} (prompt tokens the backend
        knew of when the request was cut off: the simulator knows them, real endpoints not)
    chunk {edge: (src, dst), index, text, tokens, token_ends, last, first_token_s,
           last_token_s} (token_ends: a tuple of where each token ending in the chunk ends
           in its text)
    step_start {step, consumed: {input: chunks}, final}        step_end {step, tokens}
    step_wait (an fn node asks for its next step)
    output {text}

Metrics (`Report`) are derived from these events only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, MutableSequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, overload

from ._chrome import to_chrome

__all__ = ["Event", "Trace"]


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run: when (seconds since its start), what, and where;
    ``data`` holds the kind's fields (see the module docs)."""

    t: float
    kind: str
    node: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "kind": self.kind, "node": self.node, **self.data}


def _event(t: float, kind: str, node: str | None, data: Mapping[str, Any]) -> Event:
    return Event(t, kind, node, MappingProxyType(data))


class _Events(MutableSequence[Event]):
    """A trace's events, kept in columns: times, kinds, nodes and data dicts, each a list.

    Python's cycle collector walks every container object it tracks on each full pass. Kept
    as `Event`s, the events of the runs in progress were most of what it walked (10
    pass-through nodes, 32-token chunks: 49,000 tokens/s, 100,000 with the collector off),
    and a process running many runs at once paid more per run the more runs it held. In
    columns, a dict of plain values (str, numbers, tuples of them) is dropped from its watch
    after one pass, and the lists are walked item by item at no cost. `Event`s are built when
    read."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.kind: list[str] = []
        self.node: list[str | None] = []
        self.data: list[Mapping[str, Any]] = []

    @overload
    def __getitem__(self, i: int) -> Event: ...
    @overload
    def __getitem__(self, i: slice) -> list[Event]: ...
    def __getitem__(self, i: int | slice) -> Event | list[Event]:
        if isinstance(i, slice):
            return list(map(_event, self.t[i], self.kind[i], self.node[i], self.data[i]))
        return _event(self.t[i], self.kind[i], self.node[i], self.data[i])

    @overload
    def __setitem__(self, i: int, value: Event) -> None: ...
    @overload
    def __setitem__(self, i: slice, value: Iterable[Event]) -> None: ...
    def __setitem__(self, i: int | slice, value: Any) -> None:
        if isinstance(i, slice):
            events = list(value)
            self.t[i] = [e.t for e in events]
            self.kind[i] = [e.kind for e in events]
            self.node[i] = [e.node for e in events]
            self.data[i] = [dict(e.data) for e in events]
        else:
            self.t[i], self.kind[i], self.node[i] = value.t, value.kind, value.node
            self.data[i] = dict(value.data)

    def __delitem__(self, i: int | slice) -> None:
        for column in (self.t, self.kind, self.node, self.data):
            del column[i]

    def __len__(self) -> int:
        return len(self.t)

    def __iter__(self) -> Iterator[Event]:
        return map(_event, self.t, self.kind, self.node, self.data)

    def insert(self, index: int, value: Event) -> None:
        self.t.insert(index, value.t)
        self.kind.insert(index, value.kind)
        self.node.insert(index, value.node)
        self.data.insert(index, dict(value.data))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Events | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> list[Event]:
        """The events as a new list (as ``list.copy``)."""
        return list(self)

    __copy__ = copy

    def __repr__(self) -> str:
        return repr(list(self))


class Trace:
    """An append-only sequence of events (``events``, a list-like of `Event`); ``listeners``
    are called with each new one, ``wakers`` without it (cheaper: no `Event` is built)."""

    def __init__(self, clock: Callable[[], float], meta: Mapping[str, Any] | None = None) -> None:
        self.clock = clock
        self.t0 = clock()
        self._events = _Events()
        self.meta: dict[str, Any] = dict(meta or {})
        self.listeners: list[Callable[[Event], None]] = []
        self.wakers: list[Callable[[], None]] = []  # called after each event, without it

    @property
    def events(self) -> MutableSequence[Event]:
        return self._events

    @events.setter
    def events(self, events: Iterable[Event]) -> None:
        self._events[:] = events

    def now(self) -> float:
        return self.clock() - self.t0

    def record(self, kind: str, node: str | None = None, **data: Any) -> None:
        """Add an event, now. Keep ``data`` to plain values: str, numbers, bool, None, and
        tuples or (rarely) dicts of them (see `_Events`)."""
        events = self._events
        events.t.append(self.clock() - self.t0)
        events.kind.append(kind)
        events.node.append(node)
        events.data.append(data)
        if self.listeners:
            event = events[-1]
            for listener in self.listeners:
                listener(event)
        for wake in self.wakers:
            wake()

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events)

    def of(self, kind: str, node: str | None = None) -> list[Event]:
        return [_event(*row) for row in self.rows((kind,)) if node is None or row[2] == node]

    def of_kinds(self, kinds: Container[str]) -> list[Event]:
        """The events of any of these kinds, in order."""
        return [_event(*row) for row in self.rows(kinds)]

    def rows(self, kinds: Container[str]) -> Iterator[tuple[float, str, str | None,
                                                           Mapping[str, Any]]]:
        """``(t, kind, node, data)`` of each event of these kinds, in order, without building
        `Event`s (for passes over long traces; treat ``data`` as read-only)."""
        ev = self._events
        return ((ev.t[i], k, ev.node[i], ev.data[i]) for i, k in enumerate(ev.kind) if k in kinds)

    def last_kind(self) -> str | None:
        """The kind of the latest event (None before the first), without building it."""
        return self._events.kind[-1] if self._events.kind else None

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "events": [e.to_dict() for e in self._events]}

    def to_chrome(self) -> dict[str, Any]:
        """The trace in the Chrome trace-event format (a JSON object) for ui.perfetto.dev and
        chrome://tracing: a thread per node with its steps and requests, and a flow per
        chunk from the producer to the step that took it (see `stairflow._chrome`)."""
        return to_chrome(self.to_json())

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")
