"""Scheduler overhead: what stairflow itself costs, without a model.

    python benchmarks/overhead.py [--runs 1000] [--real-runs 1000] [--skip-hops]
    python benchmarks/overhead.py --skip-hops --real-runs 0   # the virtual-time runs only

1. Hops: tokens through a chain of pass-through fn nodes against a bare Trio memory-channel
   pipeline doing the same hops (wall clock): one token per chunk, and chunks of 32 tokens
   through 10 nodes (tokens per second).
2. Concurrent runs: ``--runs`` simulated `moa` runs in one process, in virtual time (wall
   time and time per run), and ``--real-runs`` of them in real time against the simulated
   backend (TTFT p50/p99 against the one-run TTFT, memory per run). The virtual-time runs
   go twice: with Python's default cycle-collector settings, and with the threshold
   docs/performance.md suggests for a process holding many runs; the time the collector
   took is printed with each.

Graph scale (10 to 10,000 nodes) is `benchmarks/scale.py`. Everything here is simulated.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import trio
import trio.testing

import stairflow as sf

TOKENS = 5000
# what docs/performance.md suggests for a process running many runs at once
GC_THRESHOLD = (50_000, 20, 20)


def source(tokens: int) -> object:
    async def src(inputs: sf.Inputs) -> AsyncIterator[str]:
        await inputs.collect()
        for i in range(tokens):
            yield f" t{i}"
    return src


async def passthrough(inputs: sf.Inputs) -> AsyncIterator[str]:
    async for step in inputs:
        for text in step.new.values():
            if text:
                yield text


def chain(depth: int, tokens: int = TOKENS, chunk: int = 1) -> sf.Graph:
    """A source of ``tokens`` one-token pieces, then ``depth`` pass-through nodes; the first
    edge cuts ``chunk``-token chunks, which the later ones pass on whole."""
    g = sf.Graph("hops")
    g.input("q")
    g.fn("src", source(tokens))  # type: ignore[arg-type]
    g.connect("q", "src")
    prev = "src"
    for i in range(depth):
        g.fn(f"h{i}", passthrough)
        g.connect(prev, f"h{i}", sf.tokens(chunk if i == 0 else 1))
        prev = f"h{i}"
    g.connect(prev, g.output("out"), sf.tokens(1))
    return g


async def bare_pipeline(depth: int, tokens: int = TOKENS) -> None:
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
            for i in range(tokens):
                await first_send.send(f" t{i}")


@contextmanager
def gc_time() -> Iterator[dict[str, float]]:
    """Seconds spent in Python's cycle collector while the block runs, and its full passes."""
    spent = {"s": 0.0, "full": 0}
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent["s"] += time.perf_counter() - started[0]
            spent["full"] += info["generation"] == 2

    gc.callbacks.append(watch)
    try:
        yield spent
    finally:
        gc.callbacks.remove(watch)


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def hops() -> None:
    depth = 8
    g = chain(depth).build()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        report = sf.run(g, "go")
        runs.append((time.perf_counter() - start, len(report.trace.of("chunk"))))
    sf_s, chunks = min(runs)
    bare_s = min(timed(lambda: trio.run(bare_pipeline, depth)) for _ in range(5))
    n = TOKENS * (depth + 1)
    print(f"{TOKENS} tokens, one per chunk, through {depth} pass-through nodes, best of 5:")
    print(f"  bare trio  {bare_s:6.3f} s  {n} hops       {bare_s / n * 1e6:6.1f} us per hop")
    print(f"  stairflow  {sf_s:6.3f} s  {chunks} chunk hops {sf_s / chunks * 1e6:6.1f} us per chunk "
          f"hop ({sf_s / chunks / (bare_s / n):.1f}x); a busy node takes what has arrived in one "
          "step, so fewer hops carry the same tokens")
    tokens = 32 * 2000
    for chunk in (32, 1):
        g = chain(10, tokens, chunk).build()
        best = min((timed(lambda g=g: sf.run(g, "go")), i) for i in range(5))[0]
        with gc_time() as collector:
            sf.run(g, "go")
        print(f"{tokens} tokens through 10 pass-through nodes in {chunk}-token chunks, best of "
              f"5: {best:.2f} s, {tokens / best:,.0f} tokens/s (the cycle collector: "
              f"{collector['s']:.2f} s of one run)")


async def _moa_run(graph: sf.FrozenGraph, ttfts: list[float]) -> None:
    async with sf.open_run(graph, None, backend="sim") as run:
        pass
    ttfts.append(run.report().ttft_s or float("nan"))


async def _many(graph: sf.FrozenGraph, runs: int, ttfts: list[float]) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(runs):
            nursery.start_soon(_moa_run, graph, ttfts)


def _rss_kib() -> int:
    """The process's resident memory now, in KiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


async def _many_sampled(graph: sf.FrozenGraph, runs: int, ttfts: list[float],
                        peak: list[int]) -> None:
    """`_many`, sampling resident memory every 50 ms into ``peak[0]`` (its highest)."""
    async with trio.open_nursery() as nursery:
        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], _rss_kib())
                await trio.sleep(0.05)

        nursery.start_soon(sample)
        await _many(graph, runs, ttfts)
        nursery.cancel_scope.cancel()


def real_time(moa: sf.FrozenGraph, runs: int, one: float) -> None:
    rss0 = _rss_kib()
    ttfts: list[float] = []
    peak = [rss0]
    start = time.perf_counter()
    trio.run(_many_sampled, moa, runs, ttfts, peak)
    wall = time.perf_counter() - start
    q = statistics.quantiles(ttfts, n=100)
    print(f"[simulated] {runs} concurrent moa runs in real time: {wall:.1f} s wall; TTFT "
          f"p50 {q[49]:.3f} s, p99 {q[98]:.3f} s (one run alone: {one:.3f} s; above it, the "
          f"process is short of CPU); resident memory grew {(peak[0] - rss0) / runs:.0f} "
          "KiB per run at most")


def concurrent(runs: int, real_runs: int) -> None:
    moa = sf.resolve_graph("moa")
    one = sf.run(moa, None, virtual_clock=True).ttft_s or 0.0
    tracemalloc.start()
    sf.run(moa, None, virtual_clock=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\n[simulated] memory of one moa run, trace included: {peak / 1024:.0f} KiB peak")
    if real_runs:
        real_time(moa, real_runs, one)
    for label, threshold in (("Python's default collector settings", None),
                             (f"gc.set_threshold({GC_THRESHOLD[0]:_})", GC_THRESHOLD)):
        ttfts = []
        default = gc.get_threshold()
        if threshold is not None:
            gc.set_threshold(*threshold)
        start = time.perf_counter()
        try:
            with gc_time() as collector:
                trio.run(_many, moa, runs, ttfts,
                         clock=trio.testing.MockClock(autojump_threshold=0))
        finally:
            gc.set_threshold(*default)
        wall = time.perf_counter() - start
        print(f"[simulated] {runs} concurrent moa runs in one process, virtual time, {label}: "
              f"{wall:.1f} s wall, {wall / runs * 1000:.0f} ms per run (TTFT "
              f"{statistics.median(ttfts):.3f} s each); of which the cycle collector "
              f"{collector['s']:.1f} s ({collector['full']:.0f} full passes)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000, help="concurrent runs in virtual time")
    ap.add_argument("--real-runs", type=int, default=1000,
                    help="concurrent runs in real time (0: none)")
    ap.add_argument("--skip-hops", action="store_true", help="only the concurrent runs")
    args = ap.parse_args()
    if not args.skip_hops:
        hops()
    concurrent(args.runs, args.real_runs)
