"""``stairflow bench``: staircase against normal mode on one graph, interleaved, measured.

Each repetition runs every prompt in both modes, alternating which mode goes first, on one
backend opened once; then a table of medians with their spread, and the staircase/normal
ratio. Ctrl-C stops at once and still prints what was measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TextIO

import trio
import trio.testing
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._backends.base import describe_backend
from .._backends.redact import redact_data
from .._backends.select import open_backend
from .._errors import ConfigError
from .._graph import FrozenGraph, LLMNode, Mode
from .._graphfile import resolve_graph
from .._metrics import Report
from .._runtime.run import open_run
from .._triggers import Trigger, tokens
from .common import GRAPH_HELP
from .run import add_backend_options, backend_choice
from .trace import draw_picture

__all__ = ["add_parser"]

MODES: tuple[Mode, Mode] = ("staircase", "normal")
# (label, unit, how to read it from a report); None where a run has no value
METRICS: tuple[tuple[str, str, Callable[[Report], float | None]], ...] = (
    ("TTFT", "s", lambda r: r.ttft_s),
    ("TTFT bound: inputs ready + prefill", "s", lambda r: _bound(r)),
    ("TTFT beyond the bound", "ms", lambda r: _beyond_ms(r)),
    ("total time", "s", lambda r: r.total_s),
    ("final-answer tokens/s", "", lambda r: r.tokens_per_s),
    ("prompt tokens", "", lambda r: r.prompt_tokens),
    ("cached prompt tokens", "", lambda r: r.cached_tokens),
    ("prompt tokens recomputed", "", lambda r: r.recomputed_tokens),
    ("last node's prompt after its first step, cached", "%", lambda r: _later_cached(r)),
    ("LLM calls", "", lambda r: r.llm_calls),
    ("inputs read by the last node", "%", lambda r: _read_share(r)),
)


def add_parser(sub: Any) -> None:
    b = sub.add_parser(
        "bench", help="measure staircase against normal mode on a graph",
        description="Run a graph in staircase and normal mode, interleaved (A B, B A, ...), "
                    "over the prompts, --repeat times; print medians with their spread.")
    b.add_argument("graph", help=GRAPH_HELP)
    b.add_argument("prompts", nargs="*", metavar="PROMPT",
                   help="messages to run (default: the graph's example)")
    b.add_argument("--prompts", dest="prompts_file", metavar="FILE.jsonl",
                   help="more messages: one JSON string, or object with a 'prompt', per line")
    b.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="runs per prompt and mode (default 3)")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    b.add_argument("--timeline", metavar="DIR",
                   help="draw each prompt's first staircase and normal runs into DIR")
    b.add_argument("--first-chunk", metavar="N,N,...",
                   help="sweep: the first chunk's size in tokens on every edge between llm "
                        "nodes (later chunks as declared), e.g. 4,8,16,32,64")
    b.add_argument("--context", metavar="LAYOUT,...",
                   help="sweep: the prompt layout of every llm node, e.g. rebuild,append")
    b.add_argument("--steps", metavar="BUDGETS,...",
                   help="sweep: every llm node's step budgets as declared or sized from the "
                        "backend's measured rates, e.g. declared,auto")
    b.add_argument("--price", metavar="IN,CACHED_IN,OUT", type=_price,
                   help="dollars per million tokens: prompt tokens recomputed, prompt tokens "
                        "from the cache, tokens written; adds each mode's cost per 1,000 "
                        "answers, e.g. 0.15,0.075,0.60")
    add_backend_options(b)
    b.set_defaults(handler=_bench)


def _price(text: str) -> tuple[float, float, float]:
    """``IN,CACHED_IN,OUT`` in dollars per million tokens."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(0 <= v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give three prices in dollars per million tokens, prompt tokens "
            "recomputed, prompt tokens from the cache and tokens written, e.g. 0.15,0.075,0.60")
    return values[0], values[1], values[2]


def cost(report: Report, price: tuple[float, float, float]) -> float:
    """What a run cost at ``price`` (dollars per million tokens: prompt tokens recomputed,
    prompt tokens from the cache, tokens written), in dollars."""
    fresh, cached, written = price
    return (report.recomputed_tokens * fresh + report.cached_tokens * cached
            + report.completion_tokens * written) / 1e6


def _prompts(args: argparse.Namespace, graph: FrozenGraph) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--prompts {args.prompts_file}: cannot read it ({exc})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                item = None
            text = item.get("prompt") if isinstance(item, dict) else item
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"{args.prompts_file}, line {n}: write a JSON string or an "
                                  "object with a 'prompt' string")
            prompts.append(text)
    if not prompts:
        if not graph.default_input:
            raise ConfigError(f"graph '{graph.name}' has no example message; give prompts")
        prompts = [graph.default_input]
    if args.repeat < 1:
        raise ConfigError(f"--repeat {args.repeat}: use a whole number >= 1")
    return prompts


def _sweep(args: argparse.Namespace, graph: FrozenGraph) -> list[tuple[str, FrozenGraph]]:
    """The graph as declared, or each variant the sweep options ask for, with its label."""
    firsts: list[int | None] = [None]
    layouts: list[Literal["rebuild", "append"] | None] = [None]
    budgets: list[Literal["declared", "auto"] | None] = [None]
    if args.steps:
        kinds = args.steps.split(",")
        if any(v not in ("declared", "auto") for v in kinds):
            raise ConfigError(f"--steps {args.steps}: give declared, auto or both")
        budgets = ["auto" if v == "auto" else "declared" for v in kinds]
    if args.first_chunk:
        try:
            sizes = [int(v) for v in args.first_chunk.split(",")]
        except ValueError:
            sizes = [0]
        if any(v < 1 for v in sizes):
            raise ConfigError(f"--first-chunk {args.first_chunk}: give token counts >= 1, "
                              "e.g. 4,8,16")
        firsts = list(sizes)
    if args.context:
        names = args.context.split(",")
        if any(v not in ("rebuild", "append") for v in names):
            raise ConfigError(f"--context {args.context}: give rebuild, append or both")
        layouts = ["append" if v == "append" else "rebuild" for v in names]
    llm = {n.name for n in graph.llm_nodes()}
    variants = []
    for first, layout, steps in itertools.product(firsts, layouts, budgets):
        g, label = graph, []
        if first is not None:
            edges = tuple(replace(e, trigger=tokens([first, *_later(e.trigger)]))
                          if e.src in llm and e.dst in llm else e for e in g.edges)
            g = replace(g, edges=edges, declared_edges=edges)
            label.append(f"first chunk {first}")
        if layout is not None:
            nodes = {n: replace(v, context=layout) if isinstance(v, LLMNode) else v
                     for n, v in g.nodes.items()}
            g = replace(g, nodes=nodes)
            label.append(f"context {layout}")
        if steps is not None:
            if steps == "auto":
                g = replace(g, nodes={n: replace(v, steps="auto")
                                      if isinstance(v, LLMNode) else v
                                      for n, v in g.nodes.items()})
            label.append(f"steps {steps}")
        variants.append((", ".join(label) or "as declared", g))
    return variants


def _later(trigger: Trigger) -> tuple[int, ...]:
    """The sizes after the first of a token-count trigger (16, 32, 64 for any other)."""
    config = trigger.to_config()
    sizes = config.get("tokens") if isinstance(config, dict) else None
    if isinstance(sizes, list) and len(sizes) > 1:
        return tuple(sizes[1:])
    return (16, 32, 64)


def _bench(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    graph = resolve_graph(args.graph)
    if args.max_tokens is not None:
        graph = graph.capped(args.max_tokens)
    prompts = _prompts(args, graph)
    variants = _sweep(args, graph)
    choice, options = backend_choice(args)
    timeline = Path(args.timeline) if args.timeline else None
    if timeline is not None and not timeline.is_dir():
        raise ConfigError(f"--timeline {args.timeline}: not a directory; create it first")
    results: list[dict[str, list[Report]]] = [{m: [] for m in MODES} for _ in variants]
    firsts: dict[tuple[int, str], dict[str, Any]] = {}
    info: dict[str, Any] = {"rates": []}
    total = len(variants) * args.repeat * len(prompts) * len(MODES)
    console = Console(file=err, stderr=True)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        disable=args.virtual_clock or not console.is_terminal, transient=True)

    async def main() -> None:
        async with open_backend(graph, choice, **options) as backend:  # type: ignore[arg-type]
            described = describe_backend(backend)
            info.update(backend=described.name, simulated=described.simulated)
            task = progress.add_task(f"bench {graph.name}", total=total)
            for v, (label, variant) in enumerate(variants):
                for rep in range(args.repeat):
                    for i, prompt in enumerate(prompts):
                        order = MODES if (rep + i) % 2 == 0 else MODES[::-1]
                        for mode in order:
                            frozen = variant.with_mode(mode)
                            async with open_run(frozen, prompt, backend=backend,
                                                mode=mode) as run:
                                pass
                            results[v][mode].append(run.report())
                            if v == 0 and (i, mode) not in firsts:
                                firsts[(i, mode)] = redact_data(run.trace.to_json(),
                                                                run.secrets)
                            progress.update(task, advance=1,
                                            description=f"bench {graph.name} ({label}): {mode}, "
                                                        f"prompt {i + 1}/{len(prompts)}")
                            info["rates"] = [dict(r) for r in run.report().rates]

    clock = trio.testing.MockClock(autojump_threshold=0) if args.virtual_clock else None
    interrupted = False
    with progress:
        try:
            trio.run(main, clock=clock)
        except KeyboardInterrupt:
            interrupted = True
    done = [(label, r) for (label, _), r in zip(variants, results, strict=True)
            if all(r.values())]
    if not done:
        print("stairflow: interrupted before a run in each mode finished", file=err)
        return 130
    summaries = [_summary(graph, info, r, args, interrupted) | {"variant": label}
                 for label, r in done]
    if args.json:
        print(json.dumps(summaries[0] if len(variants) == 1 else summaries, indent=2),
              file=out)
    else:
        tables = [(f"{s['variant']}:\n" if len(variants) > 1 else "")
                  + _table(s, markdown=args.markdown) for s in summaries]
        print("\n\n".join(tables), file=out)
    if timeline is not None:
        for i in range(len(prompts)):
            pair = [firsts[(i, m)] for m in MODES if (i, m) in firsts]
            if pair:
                path = draw_picture(pair, str(timeline / f"{graph.name}-{i + 1}.png"))
                print(f"wrote {path}", file=err)
    if interrupted:
        print("stairflow: interrupted; the table holds the runs that finished", file=err)
        return 130
    return 0


def _last_node(report: Report) -> str | None:
    """The node whose answer the output streams."""
    meta = report.trace.meta
    feeding = [src for src, dst, *_ in meta.get("edges", ()) if dst == meta.get("output")]
    return feeding[0] if feeding else None


def _bound(report: Report) -> float | None:
    """The paper's bound on TTFT, ``max_i T(R_i1) + T_prefill``, from the run's own timings:
    when the chunks the last node's first step read were all complete, plus the time from
    sending the request that wrote its first token to that token (None if that node sends
    no requests)."""
    node, trace = _last_node(report), report.trace
    firsts = [(t, data["step"]) for t, _, n, data in trace.rows(("first_token",)) if n == node]
    if not firsts:
        return None
    first, step = firsts[0]
    sent = next((t for t, _, n, data in trace.rows(("request_sent",))
                 if n == node and data["step"] == step), None)
    if sent is None:  # an fn node: it writes without asking a model
        return None
    taken = next(data["consumed"] for _, _, n, data in trace.rows(("step_start",)) if n == node)
    done: dict[str, list[float]] = {}
    for t, _, _, data in trace.rows(("chunk",)):
        if data["edge"][1] == node:
            done.setdefault(data["edge"][0], []).append(t)
    ready = max((done[src][count - 1] for src, count in taken.items() if count), default=0.0)
    return ready + (first - sent)


def _beyond_ms(report: Report) -> float | None:
    """TTFT less its bound (in ms): stairflow's own time, and what the graph adds on purpose
    (a first step cut to start the final one, a join's wait, a trigger on the edge into the
    output that waits for more than a token)."""
    bound = _bound(report)
    return None if bound is None or report.ttft_s is None else 1000 * (report.ttft_s - bound)


def _later_cached(report: Report) -> float | None:
    """Of the prompt tokens of the last node's steps after its first, the share its server's
    prefix cache served (in %; None if it took one step only)."""
    node = _last_node(report)
    if node is None:
        return None
    closed = report.trace.of("request_end", node) + report.trace.of("request_cancel", node)
    later = [e.data for e in closed if int(e.data.get("step", 0)) > 0]
    prompt = sum(int(d.get("prompt_tokens", 0)) for d in later)
    return 100.0 * sum(int(d.get("cached_tokens", 0)) for d in later) / prompt if prompt else None


def _read_share(report: Report) -> float | None:
    """Of what its inputs sent, the share the node before the output had read (in %)."""
    last = _last_node(report)
    node = report.nodes.get(last) if last else None
    if node is None or not node.read:
        return None
    sent = sum(r.sent for r in node.read.values())
    return 100.0 * sum(r.tokens for r in node.read.values()) / sent if sent else None


def _spread(values: Sequence[float]) -> dict[str, float]:
    """Median, p10 and p90 (min and max with fewer than 10 values)."""
    ordered = sorted(values)
    if len(ordered) >= 10:
        deciles = statistics.quantiles(ordered, n=10, method="inclusive")
        low, high = deciles[0], deciles[-1]
    else:
        low, high = ordered[0], ordered[-1]
    return {"median": statistics.median(ordered), "low": low, "high": high,
            "min": ordered[0], "max": ordered[-1], "n": len(ordered)}


def _metrics(args: argparse.Namespace) -> list[tuple[str, str, Callable[[Report], float | None]]]:
    price: tuple[float, float, float] | None = args.price
    if price is None:
        return list(METRICS)
    return [*METRICS, ("cost per 1,000 answers", "$", lambda r: 1000 * cost(r, price))]


def _summary(graph: FrozenGraph, info: dict[str, Any], results: dict[str, list[Report]],
             args: argparse.Namespace, interrupted: bool) -> dict[str, Any]:
    metrics = {}
    for label, unit, read in _metrics(args):
        row: dict[str, Any] = {"unit": unit}
        for mode in MODES:
            values = [v for r in results[mode] if (v := read(r)) is not None]
            row[mode] = _spread(values) if values else None
        stair, normal = row["staircase"], row["normal"]
        row["ratio"] = (stair["median"] / normal["median"]
                        if stair and normal and normal["median"] else None)
        metrics[label] = row
    n = min(len(v) for v in results.values())
    return {"graph": graph.name, "backend": info.get("backend"),
            "simulated": info.get("simulated"), "virtual_clock": bool(args.virtual_clock),
            "runs_per_mode": {m: len(results[m]) for m in MODES},
            "spread": "p10-p90" if n >= 10 else "min-max", "interrupted": interrupted,
            "metrics": metrics, "nodes": _node_times(graph, results),
            "rates": info.get("rates", []),
            "price": None if args.price is None else dict(zip(
                ("recomputed", "cached", "output"), args.price, strict=True))}


def _node_times(graph: FrozenGraph, results: dict[str, list[Report]]) -> dict[str, Any]:
    """Each node's first token and end (``ttft_s``, ``done_s``): median and spread per mode,
    to see that no node is later in staircase mode beyond the run-to-run spread."""
    out: dict[str, Any] = {}
    for name in graph.order:
        if name in (graph.input, graph.output):
            continue
        out[name] = {}
        for key in ("ttft_s", "done_s"):
            row: dict[str, Any] = {}
            for mode in MODES:
                values = [v for r in results[mode]
                          if (v := getattr(r.nodes[name], key)) is not None]
                row[mode] = _spread(values) if values else None
            out[name][key] = row
    return out


def _cell(stats: dict[str, float] | None, unit: str) -> str:
    if stats is None:
        return "-"
    digits = 3 if unit in ("s", "$") else 1

    def f(v: float) -> str:
        return f"{v:.{digits}f}" if digits != 1 or v % 1 else f"{v:.0f}"

    return f"{f(stats['median'])} [{f(stats['low'])}-{f(stats['high'])}]"


def _table(summary: dict[str, Any], *, markdown: bool) -> str:
    head = ["metric", "staircase", "normal", "staircase / normal"]
    rows = []
    for label, row in summary["metrics"].items():
        name = f"{label} ({row['unit']})" if row["unit"] else label
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        rows.append([name, _cell(row["staircase"], row["unit"]),
                     _cell(row["normal"], row["unit"]), ratio])
    runs = summary["runs_per_mode"]
    label = "[simulated] " if summary["simulated"] else ""
    title = (f"{label}{summary['graph']} on {summary['backend']}: medians of "
             f"{runs['staircase']} staircase and {runs['normal']} normal runs, "
             f"[{summary['spread']}] in brackets")
    if markdown:
        lines = [f"{title}", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)
