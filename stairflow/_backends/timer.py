"""One alarm clock for every simulated stream of a Trio run.

Why: ``trio.sleep_until`` ends every sleep by raising `trio.Cancelled` inside a cancel scope
and catching it. The simulated backend sleeps once per token, so a large run made one
exception, with its traceback and the frames it holds, per token; the cyclic garbage
collector then ran again and again over everything alive, and the cost of each token grew
with the size of the run (10,000 nodes, or 1,000 concurrent runs; cProfile put most of the
time in ``gc`` and trio's cancellation path). Here the streams park on `wait_until` without
a cancel scope of their own; one system task per Trio run sleeps until the earliest wake-up
and reschedules every stream due by then. Streams due at the same instant (common in virtual
time) share that one wake-up.
"""

from __future__ import annotations

import heapq
import itertools

import trio

__all__ = ["wait_until"]


class _Waiter:
    """One parked stream; it is also its own abort function (no closure per token)."""

    __slots__ = ("alarm", "alive", "at", "task")

    def __init__(self, at: float, task: trio.lowlevel.Task, alarm: _Alarm) -> None:
        self.at, self.task, self.alive = at, task, True
        self.alarm: _Alarm | None = alarm  # until woken or dropped

    def __call__(self, _: object) -> trio.lowlevel.Abort:
        if self.alarm is not None:
            self.alarm.drop(self)
        return trio.lowlevel.Abort.SUCCEEDED


class _Alarm:
    """The system task and its queue; it ends as soon as nobody waits (a run leaves nothing
    behind) and the next wait starts a new one."""

    def __init__(self) -> None:
        # (when, order of arrival, waiter): compared in C, not by a Python method
        self.heap: list[tuple[float, int, _Waiter]] = []
        self.seq = itertools.count()
        self.scope = trio.CancelScope()
        self.live = 0  # waiters neither woken nor cancelled
        self.now = trio.lowlevel.current_clock().current_time

    def add(self, waiter: _Waiter) -> None:
        heapq.heappush(self.heap, (waiter.at, next(self.seq), waiter))
        self.live += 1
        if waiter.at < self.scope.deadline:
            self.scope.deadline = waiter.at

    def drop(self, waiter: _Waiter) -> None:
        waiter.alive = False
        waiter.alarm = None  # no cycle alarm -> heap -> waiter -> alarm left behind
        self.live -= 1
        if not self.live:
            self.scope.cancel()  # wake up, and end

    async def run(self) -> None:
        while self.live:
            with trio.CancelScope(deadline=self.heap[0][0]) as scope:
                self.scope = scope
                await trio.sleep_forever()
            now = trio.current_time()
            while self.heap and self.heap[0][0] <= now:
                waiter = heapq.heappop(self.heap)[2]
                if waiter.alive:
                    waiter.alive = False
                    waiter.alarm = None
                    self.live -= 1
                    trio.lowlevel.reschedule(waiter.task)
        self.heap.clear()  # cancelled waiters not due yet
        _ALARM.set(None)


_ALARM: trio.lowlevel.RunVar[_Alarm | None] = trio.lowlevel.RunVar("stairflow_sim_alarm",
                                                                   default=None)


def _alarm() -> _Alarm:
    alarm = _ALARM.get()
    if alarm is None:
        alarm = _Alarm()
        _ALARM.set(alarm)
        trio.lowlevel.spawn_system_task(alarm.run, name="stairflow simulated-time alarm")
    return alarm


async def wait_until(deadline: float) -> None:
    """Like ``trio.sleep_until``, without an exception per sleep (see the module docs)."""
    alarm = _ALARM.get()
    if deadline <= (alarm.now() if alarm is not None else trio.current_time()):
        await trio.lowlevel.checkpoint()
        return
    if alarm is None:
        alarm = _alarm()
    waiter = _Waiter(deadline, trio.lowlevel.current_task(), alarm)
    alarm.add(waiter)
    await trio.lowlevel.wait_task_rescheduled(waiter)
