"""stairflow.aio: runs under `asyncio.run`, on Trio in guest mode, while the loop's own tasks
go on. The simulator runs in real time here (asyncio has no virtual clock), made fast: a run
takes tens of milliseconds, and no test waits on a duration."""

from __future__ import annotations

import asyncio
import contextvars
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import stairflow as sf
import stairflow.aio as sfa
from stairflow.testing import run_virtual

FAST = {"latency_s": 0.002, "prefill_tps": 1e6, "decode_tps": 2000.0, "output_tokens": 40}
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="-")


def moa(mode_steps: list[int] | None = None) -> sf.Graph:
    g = sf.Graph("aio-moa", sim=FAST)
    g.input("q")
    for name in ("p1", "p2"):
        g.llm(name, sim={"seed": int(name[1])})
        g.connect("q", name)
    g.llm("agg", join="all", steps=mode_steps or [8, 16])
    for name in ("p1", "p2"):
        g.connect(name, "agg", sf.tokens(8))
    g.connect("agg", g.output("out"))
    return g


def test_a_graph_runs_under_asyncio_while_another_task_ticks():
    seen: list[int] = []  # the trace's length at each tick of the other task

    async def main() -> sf.Report:
        async with sfa.open_run(moa(), "Why is the sky blue?", backend="sim") as run:
            async def ticker() -> None:
                while True:
                    seen.append(len(run.trace.events))
                    await asyncio.sleep(0)

            ticking = asyncio.create_task(ticker())
            kinds = [event.kind async for event in run]
            ticking.cancel()
        assert kinds == [e.kind for e in run.trace]  # every event, once, in order
        assert run.finished and not run.cancelled
        return run.report()

    report = asyncio.run(main())
    # the loop's other task ran while the run was under way, not only before or after it
    end = len(report.trace.events)
    assert len([n for n in seen if 0 < n < end]) > 10
    assert report.trace.last_kind() == "run_end"
    # the same run as under Trio: the same answers, token for token
    virtual = run_virtual(moa(), "Why is the sky blue?")
    assert report.output == virtual.output
    assert {n: r.tokens for n, r in report.nodes.items()} == \
        {n: r.tokens for n, r in virtual.nodes.items()}


def test_events_arrive_as_they_happen_not_at_the_end():
    backend = sf.SimBackend(nodes={"agg": {"output_tokens": 400}})  # 0.2 s of answer

    async def main() -> None:
        firsts = []
        async with sfa.open_run(moa(), "hi", backend=backend) as run:
            async for event in run:
                if event.kind == "first_token" and event.node == "agg":
                    assert not run.finished  # the answer has begun; the run goes on
                    firsts.append(event)
        assert run.report().nodes["agg"].ttft_s == firsts[0].t
        assert run.output.strip()

    asyncio.run(main())


class Peak(sf.SimBackend):
    """The simulator, counting the most requests it had open at once."""

    peak = 0

    @asynccontextmanager
    async def open_stream(self, request: sf.Request) -> AsyncIterator[Any]:
        async with super().open_stream(request) as stream:
            self.peak = max(self.peak, self.active)
            yield stream


def test_sfa_run_returns_the_report_and_runs_go_on_side_by_side():
    backend = Peak()

    async def main() -> list[sf.Report]:
        return await asyncio.gather(*[sfa.run(moa(), f"question {i}", backend=backend)
                                      for i in range(6)])

    reports = asyncio.run(main())
    assert [r.trace.last_kind() for r in reports] == ["run_end"] * 6
    assert backend.peak >= 12  # every run's two proposers at once: one Trio run carries all


def test_loops_in_two_threads_each_carry_their_own_runs():
    results: dict[str, str] = {}

    def thread(name: str) -> None:
        report = asyncio.run(sfa.run(moa(), name, backend="sim"))
        results[name] = report.trace.last_kind()

    threads = [threading.Thread(target=thread, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"a": "run_end", "b": "run_end"}


def test_cancelling_the_asyncio_task_cancels_the_run_and_its_requests():
    backend = sf.SimBackend(sim={"output_tokens": 100_000})  # it would write for a minute
    opened: list[sfa.Run] = []

    async def consumer(started: asyncio.Event) -> None:
        async with sfa.open_run(moa(), "hi", backend=backend) as run:
            opened.append(run)
            async for event in run:
                if event.kind == "first_token" and event.node == "agg":
                    started.set()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(consumer(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # by the time the task has ended, so has every request of its run
        assert backend.active == 0
        run = opened[0]
        assert run.trace.last_kind() == "run_cancel"
        sent = len(run.trace.of("request_sent"))
        closed = len(run.trace.of("request_end")) + len(run.trace.of("request_cancel"))
        assert sent == closed > 0
        # cancelled before its run has even opened: nothing is left running either
        task = asyncio.create_task(sfa.run(moa(), "hi", backend=backend))
        await asyncio.sleep(0)  # it has handed its run to Trio and waits for it to open
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.active == 0
        # and the loop goes on: another run starts and ends
        assert (await sfa.run(moa(), "again", backend="sim")).trace.last_kind() == "run_end"

    asyncio.run(main())


def test_run_cancel_and_an_error_in_the_block_cancel_the_run():
    backend = sf.SimBackend(sim={"output_tokens": 100_000})

    async def main() -> None:
        async with sfa.open_run(moa(), "hi", backend=backend) as run:
            async for event in run:
                if event.kind == "first_token":
                    run.cancel()
        assert run.trace.last_kind() == "run_cancel" and run.cancelled
        assert backend.active == 0

        opened = []

        async def fail_midway() -> None:
            async with sfa.open_run(moa(), "hi", backend=backend) as run:
                opened.append(run)
                async for event in run:
                    if event.kind == "first_token":
                        raise KeyError("the caller's own")

        with pytest.raises(KeyError, match="the caller's own"):
            await fail_midway()
        assert opened[0].trace.last_kind() == "run_cancel"
        assert backend.active == 0

    asyncio.run(main())


async def broken(inputs: sf.Inputs):
    async for _ in inputs:
        raise ValueError("no good")
        yield ""  # pragma: no cover


async def tagged(inputs: sf.Inputs):
    async for _ in inputs:
        pass
    yield f"request {REQUEST_ID.get()}"


def fn_graph(fn: object) -> sf.Graph:
    g = sf.Graph("aio-fn", sim=FAST)
    g.input("q")
    g.fn("f", fn)  # type: ignore[arg-type]
    g.connect("q", "f")
    g.connect("f", g.output("out"))
    return g


def test_a_failed_node_raises_its_error_when_the_block_exits():
    async def main() -> None:
        with pytest.raises(sf.NodeError, match=r"node 'f' failed: ValueError: no good"):
            async with sfa.open_run(fn_graph(broken), "hi", backend="sim") as run:
                pass
        assert run.trace.last_kind() == "run_error"

    asyncio.run(main())


def test_the_opening_tasks_context_variables_reach_the_nodes():
    async def handler(request_id: str) -> str:
        REQUEST_ID.set(request_id)
        return (await sfa.run(fn_graph(tagged), "hi", backend="sim")).output

    async def main() -> list[str]:
        return await asyncio.gather(handler("r1"), handler("r2"))

    assert asyncio.run(main()) == ["request r1", "request r2"]


async def nested(inputs: sf.Inputs):
    async for _ in inputs:
        pass
    yield (await sfa.run(fn_graph(tagged), "hi", backend="sim")).output


def test_misuse_gets_one_line_errors():
    with pytest.raises(sf.ConfigError, match=r"stairflow.aio called from Trio code \(an fn "
                                             r"node is Trio code, even under stairflow.aio\); "
                                             r"there, use sf.open_run"):
        trio.run(sfa.run, moa(), "hi")
    with pytest.raises(sf.NodeError, match=r"node 'f' failed: ConfigError: stairflow.aio called "
                                           r"from Trio code"):
        asyncio.run(sfa.run(fn_graph(nested), "hi", backend="sim"))
    with pytest.raises(sf.ConfigError, match="is a name, not a graph"):
        asyncio.run(sfa.run("moa", "hi"))  # type: ignore[arg-type]
    with pytest.raises(sf.ConfigError, match="unknown backend"):
        asyncio.run(sfa.run(moa(), "hi", backend="nope"))  # type: ignore[arg-type]


def test_a_cancellation_comes_out_as_it_went_in():
    # anyio's cancel scopes (FastAPI's timeouts) know their own cancellation by its message
    answering: asyncio.Event
    class Answering(sf.SimBackend):
        @asynccontextmanager
        async def open_stream(self, request: sf.Request) -> AsyncIterator[Any]:
            async with super().open_stream(request) as stream:
                answering.set()  # same thread: the loop's own Event, set from a Trio task
                yield stream

    backend = Answering(sim={"output_tokens": 100_000})

    async def main() -> None:
        nonlocal answering
        answering = asyncio.Event()
        task = asyncio.create_task(sfa.run(moa(), "hi", backend=backend))
        await answering.wait()  # its models are answering
        task.cancel("client went away")
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
        assert caught.value.args == ("client went away",)
        assert backend.active == 0

    asyncio.run(main())


def test_run_until_complete_leaves_no_trio_behind_in_the_thread():
    # the sync-wrapper pattern: a loop of its own per call, closed at once
    before = signal.getsignal(signal.SIGINT)
    for _ in range(3):
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(sfa.run(moa(), "hi", backend="sim")).output
        finally:
            loop.close()
        assert signal.getsignal(signal.SIGINT) is before  # Trio's handler is gone with it
    assert asyncio.run(sfa.run(moa(), "hi", backend="sim")).output  # and another loop runs


def test_ctrl_c_under_run_until_complete_reaches_the_program_not_trio_errors():
    # a loop not started by asyncio.run leaves Python's SIGINT handler, so Trio takes Ctrl-C
    backend = sf.SimBackend(sim={"output_tokens": 20_000})  # ten seconds of answer

    async def main() -> None:
        async with sfa.open_run(moa(), "hi", backend=backend) as run:
            async for event in run:
                if event.kind == "first_token":
                    signal.raise_signal(signal.SIGINT)

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(main())
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
        with pytest.raises(asyncio.CancelledError, match="stopped with its Trio host"):
            loop.run_until_complete(task)  # the run's task: asyncio's error, not Trio's
        assert backend.active == 0
    finally:
        loop.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
