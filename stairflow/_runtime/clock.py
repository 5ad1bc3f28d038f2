"""Time, only through Trio.

Under `trio.testing.MockClock` (virtual time) several events can share one instant; before a
node takes a step it lets everything due at that instant land (`settle`), so that a step
consumes exactly the chunks that arrived at or before its start, whatever order Trio happened
to run the producers in. In real time there are no shared instants and `settle` is free.
"""

from __future__ import annotations

import trio
import trio.testing

__all__ = ["is_virtual", "settle"]


def is_virtual() -> bool:
    return isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)


async def settle(virtual: bool) -> None:
    if virtual:
        await trio.testing.wait_all_tasks_blocked()
