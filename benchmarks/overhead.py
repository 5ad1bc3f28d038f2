"""Scheduler overhead: tokens through a chain of pass-through fn nodes, against a bare Trio
memory-channel pipeline doing the same hops; and the scale of graphs and concurrent runs.

Real time (wall clock), no model: this measures stairflow itself.

    python benchmarks/overhead.py
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import AsyncIterator

import trio
import trio.testing

import stairflow as sf

TOKENS = 5000
DEPTH = 8


async def source(inputs: sf.Inputs) -> AsyncIterator[str]:
    await inputs.collect()
    for i in range(TOKENS):
        yield f" t{i}"


async def passthrough(inputs: sf.Inputs) -> AsyncIterator[str]:
    async for step in inputs:
        for text in step.new.values():
            if text:
                yield text


def chain(depth: int) -> sf.Graph:
    g = sf.Graph("hops")
    g.input("q")
    g.fn("src", source)
    g.connect("q", "src")
    prev = "src"
    for i in range(depth):
        g.fn(f"h{i}", passthrough)
        g.connect(prev, f"h{i}", sf.tokens(1))
        prev = f"h{i}"
    g.connect(prev, g.output("out"), sf.tokens(1))
    return g


async def bare_pipeline(depth: int) -> None:
    async def hop(recv: trio.MemoryReceiveChannel[str], send: trio.MemorySendChannel[str]) -> None:
        async with recv, send:
            async for item in recv:
                await send.send(item)

    async def drain(recv: trio.MemoryReceiveChannel[str]) -> None:
        async with recv:
            async for _ in recv:
                pass

    async with trio.open_nursery() as nursery:
        first_send, recv = trio.open_memory_channel[str](16)
        for _ in range(depth + 1):
            send, nxt = trio.open_memory_channel[str](16)
            nursery.start_soon(hop, recv, send)
            recv = nxt
        nursery.start_soon(drain, recv)
        async with first_send:
            for i in range(TOKENS):
                await first_send.send(f" t{i}")


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    g = chain(DEPTH).build()
    sf_s = timed(lambda: sf.run(g, "go"))
    bare_s = timed(lambda: trio.run(bare_pipeline, DEPTH))
    hops = TOKENS * (DEPTH + 1)
    print(f"{TOKENS} tokens through {DEPTH} pass-through nodes ({hops} hops):")
    print(f"  stairflow  {sf_s:6.3f} s  {hops / sf_s:9.0f} hops/s  {sf_s / hops * 1e6:6.1f} us/hop")
    print(f"  bare trio  {bare_s:6.3f} s  {hops / bare_s:9.0f} hops/s  {bare_s / hops * 1e6:6.1f} us/hop")
    print(f"  ratio      {sf_s / bare_s:6.1f}x")

    # scale: a wide, deep graph of simulated llm nodes in virtual time
    big = sf.Graph("big", sim={"output_tokens": 20, "decode_tps": 50})
    big.input("q")
    prev = ["q"]
    width, layers = 50, 20
    for li in range(layers):
        layer = [f"n{li}_{j}" for j in range(width if li < layers - 1 else 1)]
        for j, name in enumerate(layer):
            big.llm(name, steps=[8])
            last = li == layers - 1
            srcs = prev if last else {prev[j % len(prev)], prev[(j + 1) % len(prev)]}
            for src in srcs:
                big.connect(src, name, sf.tokens(4))
        prev = layer
    big.connect(prev[0], big.output("out"))
    bg = big.build()
    start = time.perf_counter()
    r = sf.run(bg, "go", virtual_clock=True)
    print(f"\n[simulated] {len(bg.nodes)} nodes, {len(bg.edges)} edges in virtual time: "
          f"{time.perf_counter() - start:.2f} s wall, {r.llm_calls} LLM calls, "
          f"{r.total_s:.1f} s of model time")

    # many concurrent runs in one process, and memory per run
    moa = sf.resolve_graph("moa")
    runs = 50

    async def many() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(runs):
                nursery.start_soon(one)

    async def one() -> None:
        async with sf.open_run(moa, None, backend="sim"):
            pass

    start = time.perf_counter()
    trio.run(many, clock=trio.testing.MockClock(autojump_threshold=0))
    wall = time.perf_counter() - start
    tokens = runs * sum(sf.SimBackend.for_graph(moa).timing_for(n.name).output_tokens
                        for n in moa.llm_nodes())
    print(f"[simulated] {runs} concurrent moa runs in virtual time: {wall:.2f} s wall, "
          f"{wall / tokens * 1e6:.0f} us per generated token")
    tracemalloc.start()
    sf.run(moa, None, virtual_clock=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"[simulated] memory of one moa run, trace included: {peak / 1024:.0f} KiB peak")


if __name__ == "__main__":
    main()
