"""Which step took each chunk: the arrows of the staircase, from a trace's events. Pure.

Read from events as `Trace.to_json` writes them. A consumer's ``step_start`` names how many
chunks of each input it took (``consumed``); chunks of one edge are taken in the order they
were cut. The output node takes no steps: a chunk into it counts as taken when it arrives.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["crossings"]

Chunk = Mapping[str, Any]


def crossings(events: Sequence[Chunk], output: str | None
              ) -> tuple[list[tuple[Chunk, str, float]], dict[tuple[str, str], list[Chunk]]]:
    """Each chunk a step took, with its consumer and when, in the order they were taken;
    and per edge ``(src, dst)`` the chunks no step took (their consumer had finished)."""
    waiting: dict[tuple[str, str], deque[Chunk]] = defaultdict(deque)
    taken: list[tuple[Chunk, str, float]] = []
    for e in events:
        if e["kind"] == "chunk":
            src, dst = e["edge"][0], e["edge"][1]
            if dst == output:
                taken.append((e, dst, e["t"]))
            else:
                waiting[(src, dst)].append(e)
        elif e["kind"] == "step_start" and e.get("node") is not None:
            for src, n in (e.get("consumed") or {}).items():
                queue = waiting[(src, e["node"])]
                for _ in range(min(int(n), len(queue))):
                    taken.append((queue.popleft(), e["node"], e["t"]))
    return taken, {edge: list(queue) for edge, queue in waiting.items() if queue}
