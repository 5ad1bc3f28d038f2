"""The live side of an inbox: producers deliver into it, the node waits on it.

Delivery is a direct call from the producer's task (no queue between them): the core `Inbox`
coalesces what arrives between steps. Eager consumers (llm and output nodes) take every chunk
as it comes, so producers never wait for them - the paper's proposers never wait for the
aggregator. Lazy consumers (`fn` nodes, user code) apply backpressure: while the function is
busy between steps, at most ``edge_buffer`` chunks queue per input and then the producer
blocks, which in turn stops it pulling tokens from its model stream. While a lazy consumer
waits for its next step it takes everything, so a join can never deadlock on a full buffer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import trio

from .._core.inbox import Inbox, Step
from .._joins import Join
from .._triggers import Piece
from .clock import settle

__all__ = ["Inputs", "LiveInbox"]


class LiveInbox:
    def __init__(
        self, inputs: Sequence[str], join: Join, query: str, *, eager: bool, cap: int,
        virtual: bool, clock: Callable[[], float],
    ) -> None:
        self.core = Inbox(inputs, join, query, stepped_at=clock())
        self.eager = eager
        self.cap = cap
        self.waiting = False  # a lazy consumer is waiting for its next step
        self.discarding = False  # the node has finished; arrivals are dropped
        self._virtual = virtual
        self._clock = clock
        self._changed = trio.lowlevel.ParkingLot()  # arrivals, for the node
        self.ended = trio.Event()  # every input has ended
        self._space = trio.lowlevel.ParkingLot()  # consumption, for blocked producers

    def _notify(self) -> None:
        if self._changed:
            self._changed.unpark_all()
        if self.core.all_ended:
            self.ended.set()

    def _has_room(self, name: str) -> bool:
        return self.eager or self.waiting or self.core.pending_chunks(name) < self.cap

    async def put(self, name: str, piece: Piece) -> None:
        while not self.discarding and not self._has_room(name):
            await self._space.park()
        if self.discarding:
            return
        self.core.put(name, piece.text, piece.last, self._clock())
        self._notify()

    def drop(self, name: str) -> None:
        if not self.discarding:
            self.core.drop(name, self._clock())
            self._notify()

    async def next_step(self, pays: Callable[[Step], bool] | None = None,
                        settled: bool = True) -> Step:
        """Wait until the join holds (or a straggler timeout passes), then take the step.
        With ``pays``, a step before every input has ended is taken only if ``pays`` says so
        about it (see `stairflow._core.policy`), or if it is the first and normal mode's join
        would have let the node step by now (`Inbox.normal_due`); otherwise the node waits
        for more input.
        ``settled=False``: in virtual time, do not wait for everything due at this instant
        first (the output node: it passes text on, and chunks of one instant may as well
        come in two steps as in one)."""
        self.waiting = True
        if self._space:
            self._space.unpark_all()
        try:
            ready_since = self._clock()
            while True:
                while not self.core.ready():
                    deadline = self.core.wait_deadline(ready_since)
                    if deadline is None:
                        await self._changed.park()
                        continue
                    if self._clock() >= deadline:
                        break
                    with trio.move_on_at(deadline):
                        await self._changed.park()
                if self._virtual and settled:  # `settle`, without a coroutine in real time
                    await settle(True)
                # normal mode's first step is owed, whether it pays or not
                due = None if pays is None else self.core.normal_due()
                owed = due is not None and self._clock() >= due
                if pays is None or owed or self.core.all_ended or pays(self.core.peek()):
                    return self.core.consume(self._clock())
                if due is None:
                    await self._changed.park()
                    continue
                with trio.move_on_at(due):
                    await self._changed.park()
        finally:
            self.waiting = False
            if self._space:
                self._space.unpark_all()

    def finish(self) -> None:
        """The node is done: drop whatever else arrives and release blocked producers."""
        self.discarding = True
        self._space.unpark_all()


class Inputs:
    """What an `fn` node's function receives: iterate it to get one `Step` at a time.

    Each step holds the text that arrived on each input since the previous step (``new``),
    everything so far (``text``) and whether every input has ended (``final``: the last step).
    """

    def __init__(
        self, inbox: LiveInbox, names: Sequence[str], query: str,
        on_step: Callable[[Step], None] = lambda step: None,
        on_wait: Callable[[], None] = lambda: None,
    ) -> None:
        self._inbox = inbox
        self.names = tuple(names)
        self.query = query
        self._on_step = on_step
        self._on_wait = on_wait
        self._done = False

    def __aiter__(self) -> AsyncIterator[Step]:
        return self

    async def __anext__(self) -> Step:
        if self._done:
            raise StopAsyncIteration
        self._on_wait()
        step = await self._inbox.next_step()
        self._done = step.final
        self._on_step(step)
        return step

    async def collect(self) -> Step:
        """Wait for every input to end; the final step (``.text`` holds everything)."""
        if self._done:
            raise RuntimeError("collect() was already called, or every step was already "
                               "taken; keep the Step it returned")
        last = None
        async for step in self:
            last = step
        if last is None:  # unreachable: the final step always comes
            raise RuntimeError("no step was taken")
        return last
