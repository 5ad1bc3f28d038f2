"""Chunk schedules and straggler joins on the bundled graphs, simulated, in virtual time.

    python benchmarks/schedules.py                        # print the tables
    python benchmarks/schedules.py --write docs/schedules.md

1. Every schedule of chunk sizes on the edges between llm nodes of `moa`, `moa-3layer` and
   `debate`: first chunks of 4 to 64 tokens, fixed and growing.
2. Step budgets: the graphs' declared ones, a larger fixed schedule, and ``steps = "auto"``
   (sized from the server's rates), under four server timings.
3. `moa` with one proposer 10x slower than the others, under the joins a user can pick.

Reports TTFT, total time, final-answer tokens/s (output tokens / total time) and lag (how far
behind its inputs the answer is written). Everything here is simulated (the paper-calibrated
timing of the bundled graphs, and what-ifs on it).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from typing import Any

import trio
import trio.testing
from latency_rates import table_from_record  # benchmarks/, beside this script

import stairflow as sf
from stairflow.testing import open_virtual_run, run_virtual

SCHEDULES = ([4], [8], [16], [32], [64], [8, 16, 32, 64], [4, 8, 16, 32, 64], [8, 64],
             [8, 32, 128])
JOINS = {"`all` (the default)": sf.join_all(), "`all`, `max_wait_s = 0.25`": sf.join_all(0.25),
         "`all`, `max_wait_s = 1`": sf.join_all(1.0), "`quorum = 2`": sf.quorum(2),
         "`all`, `straggler = 1`": sf.join_all(straggler=1.0),
         "`all`, `straggler = 2`": sf.join_all(straggler=2.0)}


def with_chunks(graph: sf.FrozenGraph, sizes: list[int]) -> sf.FrozenGraph:
    llm = {n.name for n in graph.llm_nodes()}
    edges = tuple(replace(e, trigger=sf.tokens(sizes)) if e.src in llm and e.dst in llm else e
                  for e in graph.edges)
    return replace(graph, edges=edges, declared_edges=edges)


BEST_CHUNKS = [4, 8, 16, 32, 64]
BUDGETS: dict[str, tuple[int, ...] | str | None] = {
    "declared": None, "64, 128, 256": (64, 128, 256), "`auto`": "auto"}
TIMINGS = {  # label: what-if timing for every node
    "paper (50 ms latency, prefill 4,000 tokens/s)": {},
    "remote API (500 ms latency)": {"latency_s": 0.5},
    "slow prefill (500 tokens/s)": {"prefill_tps": 500.0},
    "fast server (20 ms, prefill 20,000 tokens/s)": {"latency_s": 0.02, "prefill_tps": 20000.0},
}


def with_steps(graph: sf.FrozenGraph, steps: tuple[int, ...] | str | None) -> sf.FrozenGraph:
    """``steps`` on every llm node that reads only llm nodes (aggregators, later rounds)."""
    if steps is None:
        return graph
    llm = {n.name for n in graph.llm_nodes()}
    nodes = {n: replace(node, steps=steps)
             if n in llm and all(e.src in llm for e in graph.inputs_of(n)) else node
             for n, node in graph.nodes.items()}
    return replace(graph, nodes=nodes)


def run_with_lag(graph: sf.FrozenGraph, timing: dict[str, float]) -> tuple[sf.Report, float]:
    """The run's report, and the mean over final-answer tokens of how long after the start of
    the step that wrote it each came (the input it had not read yet, in seconds)."""
    runs: list[Any] = []

    async def main() -> None:
        base = sf.SimBackend.for_graph(graph)
        backend = sf.SimBackend(base.timing, base.nodes, sim=timing)
        async with open_virtual_run(graph, None, backend=backend) as run:
            pass
        runs.append(run)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    run = runs[0]
    last = graph.inputs_of(graph.output)[0].src
    lags: list[float] = []
    start = 0.0
    for e in run.trace.events:
        if e.node == last and e.kind == "step_start":
            start = e.t
        elif e.node == last and e.kind == "chunk":
            lags += [e.t - start] * e.data["tokens"]
    return run.report(), statistics.mean(lags)


def budget_table() -> list[str]:
    names = ("moa", "moa-3layer", "debate")
    lines = ["| server | step budgets | " + " | ".join(f"`{n}` tokens/s, lag" for n in names)
             + " |", "|---|---|" + "---|" * len(names)]
    for label, timing in TIMINGS.items():
        for budgets, steps in BUDGETS.items():
            cells = []
            for name in names:
                g = with_steps(with_chunks(sf.resolve_graph(name), BEST_CHUNKS), steps)
                r, lag = run_with_lag(g, timing)
                cells.append(f"{r.tokens_per_s:.1f}, {lag:.2f} s")
            lines.append(f"| {label} | {budgets} | " + " | ".join(cells) + " |")
    return lines


def schedule_table() -> list[str]:
    names = ("moa", "moa-3layer", "debate")
    lines = ["| chunks (tokens) | " + " | ".join(f"`{n}` TTFT, tokens/s" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for sizes in SCHEDULES:
        cells = []
        for name in names:
            r = run_virtual(with_chunks(sf.resolve_graph(name), sizes), None)
            cells.append(f"{r.ttft_s:.3f} s, {r.tokens_per_s:.1f}")
        label = ", ".join(map(str, sizes)) + (" (default)" if sizes == [8, 16, 32, 64] else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def straggler_table() -> list[str]:
    moa = sf.resolve_graph("moa")
    lines = ["| join of `agg` | TTFT | total | tokens/s | LLM calls |", "|---|---|---|---|---|"]
    for label, join in JOINS.items():
        nodes = {n: replace(node, join=join) if n == "agg" else node
                 for n, node in moa.nodes.items()}
        g = replace(moa, nodes=nodes)
        slow = sf.SimBackend.for_graph(g, nodes={"p3": {"decode_tps": 6.0}})
        r = run_virtual(g, None, backend=slow)
        lines.append(f"| {label} | {r.ttft_s:.3f} s | {r.total_s:.2f} s | "
                     f"{r.tokens_per_s:.1f} | {r.llm_calls} |")
    fast = run_virtual(moa, None)
    lines.append(f"| (no straggler: `all`, every proposer at 60 tokens/s) | {fast.ttft_s:.3f} s | "
                 f"{fast.total_s:.2f} s | {fast.tokens_per_s:.1f} | {fast.llm_calls} |")
    return lines


def document() -> str:
    return "\n".join([
        "# Chunk schedules and straggler joins",
        "",
        "Generated by `python benchmarks/schedules.py --write docs/schedules.md` (simulated "
        "backend, the bundled graphs' paper-calibrated timing, virtual time: the figures are "
        "exact and the same on every machine). Tokens/s is the final answer's output tokens "
        "over the run's total time.",
        "",
        "## Chunk sizes between llm nodes",
        "",
        *schedule_table(),
        "",
        "The first chunk sets TTFT. Later chunks matter only when one is larger than what a "
        "producer writes while its consumer takes a step: the consumer then waits for it "
        "(a busy node takes everything that arrived in one step, so smaller chunks cost "
        "nothing). Tokens/s is then bounded by the consumer's own steps (its `steps` budgets), "
        "each paying a request's latency and a re-read of its context.",
        "",
        "## Step budgets sized from the server's rates",
        "",
        "Chunks of 4, 8, 16, 32, 64 tokens (the best fixed schedule above) on every edge "
        "between llm nodes; the step budgets of every llm node that reads only llm nodes "
        "(aggregators, second rounds, the judge) are the graph's declared ones, a larger "
        "fixed schedule, or `steps = \"auto\"` (its default `step_scale_s = 16`). The server "
        "timings are what-ifs (`SimBackend(sim={...})`). TTFT is the same in every row of a "
        "server (the first chunk sets it). Lag is how long after the start of its step each "
        "final-answer token came, on average: how far behind its inputs the answer is "
        "written.",
        "",
        *budget_table(),
        "",
        "A step costs a request's latency and a re-read of the node's whole prompt, so how "
        "long a node should write before it reads its inputs again depends on the server. "
        "A fixed schedule is tuned for one: the declared budgets lose up to half their "
        "tokens/s on a slow prefill, and the larger ones write far behind the inputs on a "
        "fast server. `auto` sizes each step from the backend's rates (`auto_budget` in "
        "`stairflow/_core/policy.py`: a step writes for `sqrt(2 c step_scale_s)` seconds, "
        "`c` its fixed cost), and stays close to the best of them on every server.",
        "",
        "## One proposer 10x slower",
        "",
        "`moa` with `p3` writing 6 tokens/s instead of 60 (`SimBackend(nodes={'p3': "
        "{'decode_tps': 6}})`), under each join of the aggregator:",
        "",
        *straggler_table(),
        "",
        "With `all` the aggregator waits for the straggler's first chunk at every step. "
        "`straggler = f` goes on without it once it has waited `f` times as long as the "
        "first new chunk took to come (in proportion to the run's pace, unlike a fixed "
        "`max_wait_s`); the straggler's text joins at a later step. Joins that step on part "
        "of the inputs can make a node slower than normal mode (see "
        "[the step policy](concepts.md#the-step-policy-staircase-never-costs-a-node-time)).",
        "",
        *real_servers(),
    ])


def real_servers() -> list[str]:
    """The section measured on the local model behind a latency proxy (from its record)."""
    rows = table_from_record()
    if not rows:
        return []
    return [
        "## On real servers: rates measured, latency added",
        "",
        "Not simulated: the local model (llama.cpp, Gemma 3 270M) behind a proxy that adds "
        "0, 0.2 or 1.0 s to every request, as a remote endpoint would "
        "(`benchmarks/latency_proxy.py`). stairflow measures each endpoint's latency, "
        "prefill and decode rates as it runs (the first runs of each bench go without them); "
        "the step rule (only steps that pay) and `steps = \"auto\"` use them. Cut: how much "
        "lower the staircase TTFT is than normal mode's. Latest node: the node whose "
        "median end is latest in staircase mode relative to normal mode, by how much, and "
        "normal mode's run-to-run spread (max - min) of that node's end. Tokens/s and LLM "
        "calls are the staircase runs' with the graphs' declared step budgets and with "
        "`steps = \"auto\"` on every llm node.",
        "",
        *rows,
        "",
        "Two limits show here. Latency is paid on every level of the graph in both modes, so "
        "a staircase TTFT is at least twice the latency on a two-level graph: the cut "
        "shrinks as latency grows, unless the proposals take far longer than it. And the "
        "never-slower proof assumes each node's rates are its own: on one shared server "
        "(here 4 slots on 2 cores) the aggregator's early steps take compute from the "
        "proposers it reads, so a proposer can end later than in normal mode. A server with "
        "room for every streaming node, or proposers on their own endpoints, removes that.",
        "",
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", metavar="FILE", help="write the Markdown document there")
    args = ap.parse_args()
    text = document()
    if args.write:
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
