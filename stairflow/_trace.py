"""The trace: every event of a run with its time, and nothing else to keep in sync.

Times are seconds since the run started, read from Trio's clock (virtual under MockClock).
Event kinds, with their data:

    run_start {graph, mode, backend, simulated}    run_end {}   run_error {error}  run_cancel {}
    node_start                        node_end {tokens, text}   node_error {error, dropped}
    node_cancel {reason, tokens, text} (every consumer had finished: its output was not needed)
    request_sent {step, max_tokens, position}     first_token {step}
    request_end {step, tokens, prompt_tokens, cached_tokens, finish_reason}
    request_cancel {step, tokens, prompt_tokens, cached_tokens} (prompt tokens the backend
        knew of when the request was cut off: the simulator knows them, real endpoints not)
    chunk {edge: [src, dst], index, text, tokens, token_ends, last, first_token_s,
           last_token_s} (token_ends: where each token ending in the chunk ends in its text)
    step_start {step, consumed: {input: chunks}, final}        step_end {step, tokens}
    step_wait (an fn node asks for its next step)
    output {text}

Metrics (`Report`) are derived from these events only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["Event", "Trace"]


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    node: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "kind": self.kind, "node": self.node, **dict(self.data)}


class Trace:
    """An append-only list of events; ``listeners`` are called on each new one."""

    def __init__(self, clock: Callable[[], float], meta: Mapping[str, Any] | None = None) -> None:
        self._clock = clock
        self.t0 = clock()
        self.events: list[Event] = []
        self.meta: dict[str, Any] = dict(meta or {})
        self.listeners: list[Callable[[Event], None]] = []

    def now(self) -> float:
        return self._clock() - self.t0

    def record(self, kind: str, node: str | None = None, **data: Any) -> Event:
        event = Event(self.now(), kind, node, MappingProxyType(data))
        self.events.append(event)
        for listener in self.listeners:
            listener(event)
        return event

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def of(self, kind: str, node: str | None = None) -> list[Event]:
        return [e for e in self.events if e.kind == kind and (node is None or e.node == node)]

    def to_json(self) -> dict[str, Any]:
        return {"meta": self.meta, "events": [e.to_dict() for e in self.events]}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")
