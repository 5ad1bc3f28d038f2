"""stairflow.aio against a real HTTP server speaking the OpenAI protocol: a run opened from
asyncio streams real model requests, and cancelling the asyncio task closes them."""

from __future__ import annotations

import asyncio
import threading

import pytest

import stairflow as sf
import stairflow.aio as sfa

from .fake_openai import Exchange, fake_openai

pytestmark = pytest.mark.integration


def graph(url: str) -> sf.Graph:
    g = sf.Graph("aio-remote")
    g.input("q")
    g.llm("a", base_url=url, model="m", api_key_env=None, max_tokens=10_000)
    g.connect("q", "a")
    g.connect("a", g.output("out"))
    return g


def test_cancelling_the_asyncio_task_closes_the_model_request():
    gone = threading.Event()  # the server could not write: the client closed the connection
    sent = threading.Event()

    def endless(ex: Exchange) -> None:
        ex.sse()
        try:
            while not ex.stop.is_set():
                ex.token("word ")
                sent.set()
                ex.stop.wait(0.01)  # a model writing 100 tokens a second, for ever
        except OSError:  # BrokenPipe / ConnectionReset
            gone.set()

    async def main(url: str) -> sfa.Run:
        runs: list[sfa.Run] = []
        first = asyncio.Event()

        async def consume() -> None:
            async with sfa.open_run(graph(url), "hi") as run:
                runs.append(run)
                async for event in run:
                    if event.kind == "first_token" and event.node == "a":
                        first.set()  # the model has begun its answer

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the server finds the connection closed at its next write
        assert await asyncio.to_thread(gone.wait, 10), "the request outlived the task"
        return runs[0]

    with fake_openai(endless) as fake:
        run = asyncio.run(main(fake.base_url))
    assert sent.is_set()
    assert run.trace.last_kind() == "run_cancel"
    assert run.trace.of("request_cancel", "a")


def test_a_run_from_asyncio_streams_a_real_servers_answer():
    def answer(ex: Exchange) -> None:
        ex.sse()
        for word in ("Tides ", "follow ", "the ", "moon."):
            ex.token(word)
        ex.token("", finish="stop")
        ex.done()

    async def main(url: str) -> sf.Report:
        return await sfa.run(graph(url), "Explain tides.")

    with fake_openai(answer) as fake:
        report = asyncio.run(main(fake.base_url))
        assert fake.posts()[0].body["messages"][-1]["content"] == "Explain tides."
    assert report.output == "Tides follow the moon."
    assert not report.simulated
