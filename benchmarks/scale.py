"""How the scheduler's cost grows with the graph: random layered DAGs of simulated llm nodes
run in virtual time, each size in a fresh process (so its peak memory is its own).

    python benchmarks/scale.py                 # 100, 1,000 and 10,000 nodes
    python benchmarks/scale.py --sizes 500 2000

Prints wall time, time per node and peak memory (max RSS) per size, the time Python's cycle
collector took, and the growth between sizes (linear growth keeps microseconds per node
flat). Everything here is simulated.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import subprocess
import sys
import time

from overhead import gc_time  # the same measure of the cycle collector

import stairflow as sf

LAYERS = 20


def layered(nodes: int, seed: int = 0) -> sf.FrozenGraph:
    """About ``nodes`` llm nodes in LAYERS layers; node j reads node j and one random node of
    the layer before (so every node has a consumer); the last layer, one aggregator, reads
    the whole layer before it."""
    rng = random.Random(seed)
    width = max(1, (nodes - 1) // (LAYERS - 1))
    g = sf.Graph("layered", sim={"output_tokens": 20, "decode_tps": 50})
    prev = [g.input("q")]
    for li in range(LAYERS):
        last = li == LAYERS - 1
        layer = [g.llm(f"n{li}_{j}", steps=[8]) for j in range(1 if last else width)]
        for j, name in enumerate(layer):
            srcs = prev if last else sorted({prev[j % len(prev)], rng.choice(prev)})
            g.connect(srcs, name, trigger=sf.tokens(4))
        prev = layer
    g.connect(prev[0], g.output("out"))
    return g.build()


def one(nodes: int) -> dict[str, float]:
    graph = layered(nodes)
    start = time.perf_counter()
    with gc_time() as collector:
        report = sf.run(graph, "go", virtual_clock=True)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"nodes": len(graph.llm_nodes()), "wall_s": wall, "peak_mb": peak_kb / 1024,
            "events": len(report.trace.events), "llm_calls": report.llm_calls,
            "gc_s": collector["s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process's size
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    print("[simulated backend, virtual clock] layered random DAGs, "
          f"{LAYERS} layers, 20 tokens per node, chunks of 4 tokens")
    print(f"{'llm nodes':>10} {'events':>9} {'wall s':>8} {'us/node':>8} {'peak MB':>8} "
          f"{'gc s':>6} {'us/node less gc':>16}")
    rows = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(size)], check=True,
                             capture_output=True, text=True).stdout
        row = json.loads(out)
        rows.append(row)
        print(f"{row['nodes']:>10} {row['events']:>9} {row['wall_s']:>8.2f} "
              f"{row['wall_s'] / row['nodes'] * 1e6:>8.0f} {row['peak_mb']:>8.0f} "
              f"{row['gc_s']:>6.2f} {(row['wall_s'] - row['gc_s']) / row['nodes'] * 1e6:>16.0f}",
              flush=True)
    for a, b in itertools.pairwise(rows):
        print(f"{a['nodes']} -> {b['nodes']} nodes: {b['nodes'] / a['nodes']:.1f}x the nodes, "
              f"{b['wall_s'] / a['wall_s']:.1f}x the time")


if __name__ == "__main__":
    main()
