"""TTFT of Mixture-of-Agents on the real local model (llama-server + Gemma 3 270M), staircase
against normal, interleaved, on the shape of ../shared/LOCAL_MODEL.md's reference measurement:
3 proposers writing exactly N tokens (128 by default; ignore_eos keeps timings stable), chunks
of 8, 16, 32, 64 tokens, an aggregator writing 192 tokens in steps of 32 then 64 tokens,
llama-server -np 4.

    python benchmarks/local_ttft.py [--proposal-tokens 128] [--runs 3]

Needs `pip install 'stairflow[local]'`. Prints the median TTFT per mode and the reduction.
"""

from __future__ import annotations

import argparse
import statistics

import trio

import stairflow as sf


def moa(proposal_tokens: int, context: str) -> sf.FrozenGraph:
    g = sf.Graph("moa-local")
    g.input("question")
    props = [g.llm(f"p{i}", max_tokens=proposal_tokens, temperature=0.7) for i in (1, 2, 3)]
    g.llm("agg", prompt="moa-aggregate", max_tokens=192, steps=[32, 64], temperature=0.0,
          context=context)
    g.connect("question", props)
    g.connect(props, "agg", sf.tokens([8, 16, 32, 64]))
    g.connect("agg", g.output("answer"))
    return g.build()


async def main(proposal_tokens: int, runs: int, context: str) -> None:
    graph = moa(proposal_tokens, context)
    ttft: dict[str, list[float]] = {"staircase": [], "normal": []}
    # the local model (started for this script, or the one `stairflow serve` keeps), every
    # proposal exactly N tokens long (ignore_eos) so that the timings are comparable, and no
    # repetition penalty: the reference measurement's shape
    steady = {"ignore_eos": True, "repeat_penalty": 1.0}
    async with sf.open_backend(graph, "local", extra_body=steady) as backend:
        for i in range(runs):
            for mode in ("staircase", "normal"):
                async with sf.open_run(graph, "Why is the sky blue?", backend=backend,
                                       mode=mode) as run:
                    pass
                r = run.report()
                ttft[mode].append(r.ttft_s or float("nan"))
                print(f"run {i + 1} {mode:9}: TTFT {r.ttft_s:.3f} s, total {r.total_s:.2f} s, "
                      f"{r.llm_calls} calls, {r.prompt_tokens} prompt tokens "
                      f"({r.cached_tokens} cached)", flush=True)
    s, n = statistics.median(ttft["staircase"]), statistics.median(ttft["normal"])
    print(f"\n[{backend.name}, real timings, {context} context] proposals of "
          f"{proposal_tokens} tokens: "
          f"median TTFT staircase {s:.2f} s vs normal {n:.2f} s ({1 - s / n:.0%} lower)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--proposal-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--context", choices=["rebuild", "append"], default="rebuild",
                    help="append: the paper's prefix-cache-friendly aggregator context")
    args = ap.parse_args()
    trio.run(main, args.proposal_tokens, args.runs, args.context)
