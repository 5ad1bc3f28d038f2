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
    __slots__ = ("alive", "at", "seq", "task")

    def __init__(self, at: float, seq: int, task: trio.lowlevel.Task) -> None:
        self.at, self.seq, self.task, self.alive = at, seq, task, True

    def __lt__(self, other: _Waiter) -> bool:
        return (self.at, self.seq) < (other.at, other.seq)


class _Alarm:
    """The system task and its queue; it ends as soon as nobody waits (a run leaves nothing
    behind) and the next wait starts a new one."""

    def __init__(self) -> None:
        self.heap: list[_Waiter] = []
        self.seq = itertools.count()
        self.scope = trio.CancelScope()
        self.live = 0  # waiters neither woken nor cancelled

    def add(self, waiter: _Waiter) -> None:
        heapq.heappush(self.heap, waiter)
        self.live += 1
        if waiter.at < self.scope.deadline:
            self.scope.deadline = waiter.at

    def drop(self, waiter: _Waiter) -> None:
        waiter.alive = False
        self.live -= 1
        if not self.live:
            self.scope.cancel()  # wake up, and end

    async def run(self) -> None:
        while self.live:
            with trio.CancelScope(deadline=self.heap[0].at) as scope:
                self.scope = scope
                await trio.sleep_forever()
            now = trio.current_time()
            while self.heap and self.heap[0].at <= now:
                waiter = heapq.heappop(self.heap)
                if waiter.alive:
                    waiter.alive = False
                    self.live -= 1
                    trio.lowlevel.reschedule(waiter.task)
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
    if deadline <= trio.current_time():
        await trio.lowlevel.checkpoint()
        return
    alarm = _alarm()
    waiter = _Waiter(deadline, next(alarm.seq), trio.lowlevel.current_task())
    alarm.add(waiter)

    def abort(_: object) -> trio.lowlevel.Abort:
        alarm.drop(waiter)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
