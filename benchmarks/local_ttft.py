"""TTFT of Mixture-of-Agents on the real local model (llama-server + Gemma 3 270M): stairflow
against the same MoA written by hand on plain openai + Trio (`handwritten_moa.py`), staircase
and normal, interleaved, on the shape of ../shared/LOCAL_MODEL.md's reference measurement:
3 proposers writing exactly N tokens (128 by default; ignore_eos keeps timings stable), chunks
of 8, 16, 32, 64 tokens, an aggregator writing 192 tokens in steps of 32 then 64 tokens,
llama-server -np 4. Both continuation modes by default.

    python benchmarks/local_ttft.py [--proposal-tokens 128] [--runs 5]
        [--continuation completions|chat-prefix|both] [--context rebuild|append]

Needs `pip install 'stairflow[local]'`. Each repetition runs the four variants in an order that
alternates between repetitions; one warm-up round is not counted. Prints every run, then per
variant the medians of: the last proposer request sent, every proposer's first chunk complete
(normal mode: every proposal complete), the aggregator's first request sent, its first token
and the answer's first token (TTFT) - and stairflow's own time in between (first chunks to
aggregator request, aggregator token to answer token) - and stairflow's TTFT against the
hand-written one's.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import openai
import trio
from handwritten_moa import HandwrittenMoA, Timings

import stairflow as sf

QUESTION = "Why is the sky blue?"
STEADY = {"ignore_eos": True, "repeat_penalty": 1.0}  # exactly N tokens, no penalty
FIELDS = ("proposers_sent", "first_chunks", "agg_sent", "agg_first_token", "ttft")


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


def decompose(report: sf.Report) -> dict[str, float]:
    """The hand-written script's timings, read from stairflow's trace."""
    tr = report.trace
    sent = tr.of("request_sent")
    firsts = [e.t for e in tr.of("chunk") if e.data["edge"][1] == "agg"
              and e.data["index"] == 0]
    return {
        "proposers_sent": max(e.t for e in sent if e.node != "agg"),
        "first_chunks": max(firsts),
        "agg_sent": next(e.t for e in sent if e.node == "agg"),
        "agg_first_token": tr.of("first_token", "agg")[0].t,
        "ttft": report.ttft_s or float("nan"),
        "total": report.total_s,
        "agg_prompt": next((e.data["prompt_tokens"] for e in tr.of("request_end", "agg")),
                           float("nan")),
        "prompt_tokens": report.prompt_tokens, "cached_tokens": report.cached_tokens,
        "llm_calls": report.llm_calls,
    }


def handwritten(t: Timings) -> dict[str, float]:
    return {"proposers_sent": t.proposers_sent, "first_chunks": t.first_chunks,
            "agg_sent": t.agg_sent, "agg_first_token": t.agg_first_token,
            "ttft": t.agg_first_token, "total": t.total,
            "agg_prompt": t.agg_prompt_tokens[0] if t.agg_prompt_tokens else float("nan")}


async def measure(continuation: str, proposal_tokens: int, runs: int, context: str) -> None:
    graph = moa(proposal_tokens, context)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    async with sf.open_backend(graph, "local", continuation=continuation,  # type: ignore[arg-type]
                               extra_body=STEADY) as backend:
        assert isinstance(backend, sf.OpenAIBackend)
        # the client's defaults (two retries: a pooled connection the server has just
        # closed fails the request once; stairflow retries such requests too)
        client = openai.AsyncOpenAI(base_url=backend.default.base_url, api_key="not-needed")
        hand = HandwrittenMoA(client, backend.default.model, continuation=continuation,
                              extra_body=STEADY, proposal_tokens=proposal_tokens)

        async def stairflow_run(mode: str) -> dict[str, float]:
            async with sf.open_run(graph, QUESTION, backend=backend, mode=mode) as run:  # type: ignore[arg-type]
                pass
            return decompose(run.report())

        async def hand_run(mode: str) -> dict[str, float]:
            return handwritten(await hand.run(QUESTION, staircase=mode == "staircase"))

        variants: list[tuple[str, str, Callable[[str], object]]] = [
            ("hand-written", "staircase", hand_run), ("stairflow", "staircase", stairflow_run),
            ("hand-written", "normal", hand_run), ("stairflow", "normal", stairflow_run),
        ]
        for rep in range(runs + 1):  # round 0 warms both up and is not counted
            order = variants if rep % 2 else [variants[i] for i in (1, 0, 3, 2)]
            for impl, mode, fn in order:
                d = await fn(mode)  # type: ignore[misc]
                if rep:
                    results.setdefault((impl, mode), []).append(d)
                print(f"{'warm-up' if not rep else f'run {rep}'} {impl:12} {mode:9}: "
                      f"TTFT {d['ttft']:.3f} s, total {d['total']:.2f} s, aggregator's first "
                      f"prompt {d['agg_prompt']:.0f} tokens", flush=True)
        await client.close()
    print(f"\n[{backend.name}, real timings, continuation {continuation}, {context} context, "
          f"proposals of {proposal_tokens} tokens] medians of {runs} runs, seconds from start:")
    print(f"{'':26}" + "".join(f"{f:>16}" for f in FIELDS) + f"{'overhead':>10}")
    med: dict[tuple[str, str], dict[str, float]] = {}
    for key, rows in results.items():
        med[key] = {f: statistics.median(r[f] for r in rows) for f in (*FIELDS, "total")}
        over = statistics.median((r["agg_sent"] - r["first_chunks"]) + (r["ttft"]
                                 - r["agg_first_token"]) for r in rows)
        print(f"{key[0]:13}{key[1]:13}" + "".join(f"{med[key][f]:16.3f}" for f in FIELDS)
              + f"{over * 1000:8.1f}ms")
    for mode in ("staircase", "normal"):
        s, h = med[("stairflow", mode)]["ttft"], med[("hand-written", mode)]["ttft"]
        print(f"{mode:9}: stairflow TTFT {s:.3f} s vs hand-written {h:.3f} s "
              f"({s / h - 1:+.1%})")
    for mode in ("staircase", "normal"):
        rows = results[("stairflow", mode)]
        print(f"stairflow {mode:9}: " + ", ".join(
            f"{statistics.median(r[k] for r in rows):.0f} {k.replace('_', ' ')}"
            for k in ("llm_calls", "prompt_tokens", "cached_tokens")))
    s, n = med[("stairflow", "staircase")]["ttft"], med[("stairflow", "normal")]["ttft"]
    print(f"stairflow staircase vs normal: TTFT {s:.2f} s vs {n:.2f} s ({1 - s / n:.0%} lower)")


async def main(args: argparse.Namespace) -> None:
    modes = ["completions", "chat-prefix"] if args.continuation == "both" else [args.continuation]
    for continuation in modes:
        await measure(continuation, args.proposal_tokens, args.runs, args.context)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--proposal-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--continuation", choices=["completions", "chat-prefix", "both"],
                    default="both")
    ap.add_argument("--context", choices=["rebuild", "append"], default="rebuild",
                    help="append: the paper's prefix-cache-friendly aggregator context")
    trio.run(main, ap.parse_args())
