"""The two prompt layouts side by side on the local model: the answers, and what they cost.

    python benchmarks/layouts.py [--graph moa] [--max-tokens 128] [--prompts 3] [--json]

Runs the graph in staircase mode with every llm node's ``context`` set to ``rebuild`` and to
``append`` (the order alternating per prompt), on the embedded local model, and prints each
prompt's two final answers one after the other with their TTFT, prompt tokens, cached and
recomputed tokens; then the medians. For judging by eye whether the append layout (the
paper's prefix-caching variant) keeps answer quality; `stairflow bench --context
rebuild,append` measures the timings over more runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from typing import Any

import trio

import stairflow as sf

PROMPTS = (
    "Why is the sky blue?",
    "What causes the seasons on Earth?",
    "How does a refrigerator keep food cold?",
    "Why do we have leap years?",
    "What makes bread rise?",
)


def with_layout(graph: sf.FrozenGraph, layout: str) -> sf.FrozenGraph:
    return replace(graph, nodes={n: replace(v, context=layout) if isinstance(v, sf.LLMNode)
                                 else v for n, v in graph.nodes.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", default="moa")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=3, help=f"how many (at most {len(PROMPTS)})")
    ap.add_argument("--json", action="store_true", help="print the runs as JSON")
    args = ap.parse_args()
    graph = sf.resolve_graph(args.graph).capped(args.max_tokens)
    rows: list[dict[str, Any]] = []

    async def run_all() -> None:
        async with sf.open_backend(graph, "local") as backend:
            for i, prompt in enumerate(PROMPTS[:args.prompts]):
                layouts = ("rebuild", "append") if i % 2 == 0 else ("append", "rebuild")
                for layout in layouts:
                    g = with_layout(graph, layout)
                    async with sf.open_run(g, prompt, backend=backend) as run:
                        pass
                    r = run.report()
                    rows.append({"prompt": prompt, "layout": layout, "ttft_s": r.ttft_s,
                                 "prompt_tokens": r.prompt_tokens,
                                 "cached_tokens": r.cached_tokens,
                                 "recomputed_tokens": r.recomputed_tokens,
                                 "answer": r.output})

    trio.run(run_all)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for prompt in dict.fromkeys(r["prompt"] for r in rows):
        print(f"## {prompt}\n")
        for r in sorted((r for r in rows if r["prompt"] == prompt), key=lambda r: r["layout"]):
            print(f"### {r['layout']}: TTFT {r['ttft_s']:.3f} s, {r['prompt_tokens']} prompt "
                  f"tokens ({r['cached_tokens']} cached, {r['recomputed_tokens']} "
                  f"recomputed)\n\n{r['answer'].strip()}\n")
    for layout in ("rebuild", "append"):
        mine = [r for r in rows if r["layout"] == layout]
        print(f"{layout}: median TTFT {statistics.median(r['ttft_s'] for r in mine):.3f} s, "
              f"recomputed {statistics.median(r['recomputed_tokens'] for r in mine):.0f} "
              f"prompt tokens [local model: weak answers, real tokens and timings]")


if __name__ == "__main__":
    main()
