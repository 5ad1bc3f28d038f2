"""Slot pinning for llama.cpp servers: each llm node keeps the slot that holds its prefix.
Sans-I/O.

A llama.cpp server (llama-server) decodes in ``n`` slots; each keeps the last prompt it read
and what it wrote after, and a request that starts with that reuses it (``cache_prompt``).
Unpinned, a request goes to whichever idle slot looks most like its prompt, or the least
recently used one: with as many streams as slots, an aggregator's next step often lands on
a slot a proposer has just overwritten, and reads its whole prompt again. A request that
names its slot (``id_slot``) waits for that slot if it is busy.

So `Slots` pins a node's requests (per run: ``(run_id, node)``) to one slot while that is
free: its own slot again if it is idle, else an idle slot nobody holds, else the idle slot
used longest ago. When every slot is busy, or a request it did not pin is still in flight
(the server gave it some slot, nobody knows which), a request goes unpinned and the server
queues it as usual: pinning never makes a request wait for a slot that another request
could have taken. Other clients of the same server are not seen; a pinned request may wait
behind one of theirs.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["Slots"]


@dataclass
class Slots:
    """The slots of one server, as this client uses them."""

    n: int
    owner: list[Hashable | None] = field(default_factory=list)
    busy: list[bool] = field(default_factory=list)
    used: list[int] = field(default_factory=list)  # when each was last released (a tick)
    unpinned: int = 0  # requests in flight on a slot the server chose
    _tick: int = 0

    def __post_init__(self) -> None:
        self.owner = [None] * self.n
        self.busy = [False] * self.n
        self.used = [0] * self.n

    def take(self, key: Hashable) -> int | None:
        """The slot for a request of ``key`` (a run and node), now busy; None: send it
        unpinned (then `give` it back with None too)."""
        if self.unpinned == 0:
            idle = [s for s in range(self.n) if not self.busy[s]]
            own = [s for s in idle if self.owner[s] == key]
            free = [s for s in idle if self.owner[s] is None]
            pick = (own or free or sorted(idle, key=lambda s: self.used[s]))[:1]
            if pick:
                slot = pick[0]
                self.owner[slot], self.busy[slot] = key, True
                return slot
        self.unpinned += 1
        return None

    def give(self, slot: int | None) -> None:
        """The request on ``slot`` (None: unpinned) has ended."""
        if slot is None:
            self.unpinned -= 1
            return
        self._tick += 1
        self.busy[slot], self.used[slot] = False, self._tick
