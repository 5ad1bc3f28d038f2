"""What running on asyncio costs: the same graph through `sf.run` (Trio's own loop) and
through `stairflow.aio` (Trio as a guest of asyncio), interleaved, on the simulated backend
in real time (a three-proposer Mixture-of-Agents writing 200 tokens a second per stream).

    python benchmarks/aio_overhead.py [--runs 20]

Prints the median TTFT and total time of each, and of aio runs while 200 other asyncio tasks
keep the loop busy (each wakes every millisecond).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import stairflow as sf
import stairflow.aio as sfa

TIMING = {"latency_s": 0.02, "prefill_tps": 20000.0, "decode_tps": 200.0, "output_tokens": 60}


def graph() -> sf.Graph:
    g = sf.Graph("moa-bench", sim=TIMING)
    g.input("q")
    g.llm("agg", join="all", steps=[8, 16])
    for name in ("p1", "p2", "p3"):
        g.llm(name, sim={"seed": int(name[1])})
        g.connect("q", name)
        g.connect(name, "agg", sf.tokens(8))
    g.connect("agg", g.output("out"))
    return g


async def aio_run(busy: int) -> sf.Report:
    async def noise() -> None:
        while True:  # noqa: ASYNC110 - a loop kept busy on purpose
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(noise()) for _ in range(busy)]
    try:
        return await sfa.run(graph(), "Why is the sky blue?", backend="sim")
    finally:
        for t in tasks:
            t.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    figures: dict[str, list[sf.Report]] = {"trio": [], "aio": [], "aio, busy loop": []}
    for _ in range(args.runs):
        figures["trio"].append(sf.run(graph(), "Why is the sky blue?", backend="sim"))
        figures["aio"].append(asyncio.run(aio_run(0)))
        figures["aio, busy loop"].append(asyncio.run(aio_run(200)))
    print(f"[simulated backend, real time] {args.runs} runs each, medians")
    for name, reports in figures.items():
        ttft = statistics.median(r.ttft_s for r in reports) * 1000
        total = statistics.median(r.total_s for r in reports) * 1000
        print(f"  {name:15} TTFT {ttft:7.2f} ms   total {total:7.2f} ms")


if __name__ == "__main__":
    main()
