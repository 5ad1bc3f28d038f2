"""stairflow from asyncio: the same runs, on the application's own event loop.

    import stairflow.aio as sfa

    async with sfa.open_run(graph, "Explain tides.") as run:   # inside any asyncio task
        async for event in run:                                # events as they happen
            ...
    report = run.report()                                      # the same `Report`

    report = await sfa.run(graph, "Explain tides.")            # or in one call

Theory of operation. stairflow's scheduler is Trio. Here Trio runs as a *guest* of the
running asyncio loop (`trio.lowlevel.start_guest_run`): its tasks run in the loop's thread,
between the loop's own callbacks, so the application's tasks keep running while a run's
nodes and model requests do what they do under `trio.run`. Each thread can hold one Trio
run, so one guest run per loop (a `_Host`) carries every stairflow run open on that loop: it
starts with the first and ends when the last one ends, so the loop is never left with Trio
inside it.

The two sides share a thread but not a scheduler. asyncio -> Trio goes through
`TrioToken.run_sync_soon`, which also wakes Trio out of its I/O wait; Trio -> asyncio
resolves futures directly (same thread). A run's Trio task is started in the context of the
asyncio task that opened it, so context variables (an OpenTelemetry span, a request id) carry
over. Cancelling the asyncio task cancels the run and every model request it made before the
task's cancellation goes on: no run outlives its ``async with`` block.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Unpack

import outcome
import trio

from ._backends.base import Backend
from ._backends.select import BackendChoice, EndpointOptions
from ._errors import ConfigError, InternalError
from ._graph import FrozenGraph, Graph, Mode
from ._metrics import Report
from ._runtime import run as _trio
from ._trace import Event, Trace

__all__ = ["Run", "open_run", "run"]


class Run:
    """A run in progress, seen from asyncio: what `stairflow.Run` offers, with an asyncio
    iterator over its events and a `cancel` that may be called from any asyncio task."""

    def __init__(self, drive: _Drive, inner: _trio.Run) -> None:
        self._drive = drive
        self._inner = inner
        self._waiters: list[asyncio.Future[None]] = []
        inner.trace.wakers.append(self._wake)
        drive.on_finish = self._finished

    def _finished(self) -> None:
        self._wake()
        # a Report the application keeps must not keep the loop (through this waker)
        self._inner.trace.wakers.remove(self._wake)

    # what stairflow.Run has

    @property
    def id(self) -> int:
        return self._inner.id

    @property
    def graph(self) -> FrozenGraph:
        return self._inner.graph

    @property
    def query(self) -> str:
        return self._inner.query

    @property
    def backend_name(self) -> str:
        return self._inner.backend_name

    @property
    def simulated(self) -> bool:
        return self._inner.simulated

    @property
    def trace(self) -> Trace:
        return self._inner.trace

    @property
    def output(self) -> str:
        """The output text received so far."""
        return self._inner.output

    @property
    def finished(self) -> bool:
        return self._inner.finished

    @property
    def cancelled(self) -> bool:
        return self._inner.cancelled

    def report(self) -> Report:
        return self._inner.report()

    def cancel(self) -> None:
        """Stop the run now: every node task and model request is cancelled."""
        self._drive.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    # the asyncio side of the trace

    def _wake(self) -> None:
        # called by the trace on every event (in the loop's thread, in a Trio tick): cheap
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _events(self) -> AsyncIterator[Event]:
        events, i = self._inner.trace.events, 0
        while True:
            while i >= len(events):
                if self._drive.finished.done():  # ended without an end event: don't hang
                    return
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
            event = events[i]
            i += 1
            yield event
            if event.kind in _trio._END_KINDS:
                return


@asynccontextmanager
async def open_run(
    graph: Graph | FrozenGraph,
    message: str | None = None,
    *,
    backend: BackendChoice | Backend | None = None,
    mode: Mode = "staircase",
    **options: Unpack[EndpointOptions],
) -> AsyncIterator[Run]:
    """Start a run from asyncio; leaving the block waits for it to end (or `Run.cancel` it).

    The arguments are `stairflow.open_run`'s. Raises the failing node's `NodeError` on exit
    if the run failed; an exception in the block, or the task's cancellation, cancels the run
    and waits for its model requests to be cancelled before it goes on.
    """
    loop = _running_loop()
    frozen = _trio.prepare(graph, mode)  # a bad graph or message is the caller's error, here
    query = _trio._message(message, frozen)
    if _SLOW_IMPORT not in sys.modules and not (isinstance(backend, str) and backend in (
            "sim", "simulated")) and (backend is None or isinstance(backend, str)):
        # the first real run imports openai (a quarter of a second): not on the loop
        await asyncio.to_thread(importlib.import_module, _SLOW_IMPORT)

    drive = _Drive(await _host(loop), lambda: _trio.open_run(frozen, query, backend=backend,
                                                        mode=mode, **options))
    try:
        inner = await asyncio.shield(drive.opened)
    except BaseException:
        drive.cancel()
        await drive.settle()
        raise
    if inner is None:  # the run could not start: the backend, a warm-up, a bad option
        assert drive.error is not None
        raise drive.error
    the_run = Run(drive, inner)
    try:
        yield the_run
    except BaseException:
        drive.cancel()
        await drive.settle()
        raise
    drive.leave()
    await drive.settle()
    if drive.error is not None:
        raise drive.error


_SLOW_IMPORT = "stairflow._backends.openai"


async def run(
    graph: Graph | FrozenGraph,
    message: str | None = None,
    *,
    backend: BackendChoice | Backend | None = None,
    mode: Mode = "staircase",
    **options: Unpack[EndpointOptions],
) -> Report:
    """Run a graph from asyncio and return its `Report` (`open_run`'s arguments)."""
    async with open_run(graph, message, backend=backend, mode=mode, **options) as the_run:
        pass
    return the_run.report()


# the Trio guest run of a loop


class _Host:
    """The Trio guest run on one asyncio loop, carrying every stairflow run open on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.active = 0  # runs handed to this host and not yet finished
        self.closing = False  # the last run ended: no new one may come
        self.ended: asyncio.Future[None] = loop.create_future()
        self._idle = trio.Event()
        self._drives: set[_Drive] = set()
        try:
            trio.lowlevel.start_guest_run(
                self._main,
                run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                run_sync_soon_not_threadsafe=loop.call_soon,
                done_callback=self._done,
                host_uses_signal_set_wakeup_fd=True,  # asyncio owns the wakeup fd
            )
        except RuntimeError as exc:  # "Attempted to call run() from inside a run()"
            raise ConfigError("stairflow.aio cannot run where Trio already runs in this "
                              "thread (trio-asyncio, another guest run); inside Trio use "
                              "`async with sf.open_run(...)`") from exc
        self.token = trio.lowlevel.current_trio_token()

    def add(self, drive: _Drive) -> None:
        self.active += 1
        self._drives.add(drive)
        context = contextvars.copy_context()  # the opening task's context variables
        self.token.run_sync_soon(
            lambda: trio.lowlevel.spawn_system_task(drive.main, name="stairflow.aio run",
                                                    context=context))

    def remove(self, drive: _Drive) -> None:  # in a Trio task
        self._drives.discard(drive)
        self.active -= 1
        if self.active == 0:
            self.closing = True
            self._idle.set()

    async def _main(self) -> None:
        await self._idle.wait()

    def _done(self, result: outcome.Outcome[None]) -> None:
        self.closing = True
        if _HOSTS.get(self.loop) is self:
            del _HOSTS[self.loop]
        error = result.error if isinstance(result, outcome.Error) else None
        for drive in list(self._drives):  # only if Trio itself failed
            drive.finish(InternalError(f"the Trio guest run ended under a stairflow run: "
                                       f"{error!r}"))
        if not self.ended.done():
            self.ended.set_result(None)
        if isinstance(error, KeyboardInterrupt):
            # Trio took Ctrl-C (its handler is installed where the loop left Python's own,
            # as loop.run_until_complete does): the program gets it, as without stairflow
            # (asyncio lets a KeyboardInterrupt out of a callback, and out of the loop)
            self.loop.call_soon(_reraise, error)


_HOSTS: dict[asyncio.AbstractEventLoop, _Host] = {}


def _cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is Trio's cancellation alone (perhaps in nested groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def _reraise(error: BaseException) -> None:
    raise error


def _running_loop() -> asyncio.AbstractEventLoop:
    if _trio._inside_trio():  # a Trio task: perhaps an fn node of a run under stairflow.aio
        raise ConfigError("stairflow.aio called from Trio code (an fn node is Trio code, "
                          "even under stairflow.aio); there, use sf.open_run")
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError("stairflow.aio needs a running asyncio loop; from Trio use "
                          "sf.open_run, from plain code sf.run") from None
    return loop


async def _host(loop: asyncio.AbstractEventLoop) -> _Host:
    """The host of ``loop``: a new one if it has none, or if its last run has just left (its
    Trio run ends soon, and owns the thread until it has)."""
    while (host := _HOSTS.get(loop)) is not None and host.closing:
        await asyncio.shield(host.ended)
    if host is None:
        host = _HOSTS[loop] = _Host(loop)
    return host  # the caller adds its run before its next await: the host cannot close


class _Drive:
    """One stairflow run on a host: its Trio task, and the futures asyncio waits on."""

    def __init__(self, host: _Host,
                 trio_side: Callable[[], AbstractAsyncContextManager[_trio.Run]]) -> None:
        self._trio_side = trio_side
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[_trio.Run | None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.error: BaseException | None = None
        self.on_finish: Callable[[], None] = lambda: None
        self._scope = trio.CancelScope()
        self._leave = trio.Event()
        self._inner: _trio.Run | None = None
        self._cancelling = False
        self._host = host
        host.add(self)

    async def main(self) -> None:
        try:
            with self._scope:
                async with self._trio_side() as inner:
                    self._inner = inner
                    if not self.opened.done():
                        self.opened.set_result(inner)
                    await self._leave.wait()
        except BaseException as exc:  # the run's error (a NodeError), or a setup error
            if not _cancelled(exc):
                self.finish(exc)
                return
            # the host's Trio run is going down under it (Ctrl-C): no Trio exception for
            # asyncio code (the KeyboardInterrupt goes to the loop), and Trio's own goes on
            self.finish(asyncio.CancelledError("stairflow.aio: the run was stopped with its "
                                               "Trio host (Ctrl-C)"))
            raise
        else:
            self.finish(None)
        finally:
            self._host.remove(self)

    def finish(self, error: BaseException | None) -> None:
        if self.finished.done():
            return
        self.error = error
        if not self.opened.done():
            self.opened.set_result(None)
        self.finished.set_result(None)
        self.on_finish()

    # called from asyncio

    def _soon(self, fn: Callable[[], object]) -> None:
        if not self.finished.done():  # then its host's Trio run is still going
            self._host.token.run_sync_soon(fn)

    def cancel(self) -> None:
        if self._cancelling:  # once: anyio cancels a waiting task again at every loop pass
            return
        self._cancelling = True

        def cancel() -> None:
            if self._inner is not None:
                self._inner.cancel()  # the run records its cancellation
            self._scope.cancel()

        self._soon(cancel)

    def leave(self) -> None:
        self._soon(self._leave.set)

    async def settle(self) -> None:
        """Wait for the Trio side to end, however often this task is cancelled meanwhile
        (the run's requests must not outlive the block), and if it was the loop's last run,
        for the host's Trio run to leave the thread (the loop may be closed next). A
        cancellation that came meanwhile cancels the run, once, and is raised again after,
        as it came: anyio's cancel scopes know their own by its message."""
        caught: asyncio.CancelledError | None = None
        for future in (self.finished, self._host.ended):
            if future is self._host.ended and not self._host.closing:
                break
            while not future.done():
                try:
                    await asyncio.shield(future)
                except asyncio.CancelledError as exc:
                    if caught is None:
                        caught = exc
                        self.cancel()
        if caught is not None:
            raise caught
