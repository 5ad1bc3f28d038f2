"""``stairflow eval GRAPH --prompts FILE --judge-base-url URL --judge-model M -o DIR``: answer
every prompt in staircase and normal mode (or with a second graph), have a judge compare each
pair in both orders, and report the win rate, its interval and the length-controlled one.
Resumable: every stage is a batch, and running the command again goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .._batch.runner import BatchSummary
from .._eval.run import BUILTIN_PROMPTS, run_eval
from .._graphfile import resolve_graph
from .common import GRAPH_HELP
from .run import add_backend_options, backend_choice

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    e = sub.add_parser(
        "eval", help="judge a graph's staircase answers against normal mode's",
        description="Answer every prompt in staircase and normal mode (or with --against "
                    "GRAPH2), have a judge on any OpenAI-compatible endpoint compare each "
                    "pair in both orders (MT-Bench's [[A]]/[[B]]/[[C]]), and write the win "
                    "rate, its 95%% bootstrap interval and the length-controlled win rate to "
                    "DIR/report.json and DIR/report.md. Running it again resumes.")
    e.add_argument("graph", help=GRAPH_HELP)
    e.add_argument("--prompts", default="builtin", metavar="FILE",
                   help="the prompts: a JSON-lines file as for 'stairflow batch' (an "
                        "optional \"category\" per prompt gives per-category figures); "
                        "default: 60 short instructions over six categories, shipped")
    e.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="the directory for answers, judgments and the report")
    e.add_argument("--judge-base-url", required=True, metavar="URL",
                   help="the judge's OpenAI-compatible endpoint")
    e.add_argument("--judge-model", required=True, metavar="M", help="the judge's model")
    e.add_argument("--judge-api-key-env", metavar="VAR",
                   help="the environment variable holding the judge's API key")
    e.add_argument("--against", default="normal", metavar="normal|GRAPH2",
                   help="what to compare with: normal mode of the same graph (default), or "
                        "another graph in staircase mode")
    e.add_argument("--concurrency", type=int, metavar="N", help="answer runs at once")
    e.add_argument("--judge-concurrency", type=int, metavar="N",
                   help="judge requests at once (default: 16)")
    e.add_argument("--judge-max-tokens", type=int, default=1024, metavar="N",
                   help="the longest judgment (default 1024)")
    e.add_argument("--retries", type=int, default=2, metavar="N",
                   help="retries after a transient backend error (default 2)")
    add_backend_options(e)
    e.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    e.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    graph = resolve_graph(args.graph)
    against = None if args.against == "normal" else resolve_graph(args.against)
    if args.max_tokens is not None:
        graph = graph.capped(args.max_tokens)
        against = against.capped(args.max_tokens) if against is not None else None
    choice, options = backend_choice(args)

    console = Console(file=err, stderr=True)
    progress = Progress(TextColumn("[bold]eval {task.description}"), BarColumn(),
                        TextColumn("{task.completed} done, {task.fields[failed]} failed"),
                        TimeElapsedColumn(), console=console,
                        disable=not console.is_terminal, transient=True)
    tasks: dict[str, Any] = {}
    failed: dict[str, int] = {}

    def each(name: str, record: Mapping[str, Any]) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=None, failed=0)
        failed[name] = failed.get(name, 0) + (record["error"] is not None)
        progress.update(tasks[name], advance=1, failed=failed[name])

    def stage(name: str, s: BatchSummary) -> None:
        if name in tasks:
            progress.remove_task(tasks.pop(name))
        print(f"eval {name}: {s.done} done, {s.failed} failed, {s.skipped} in "
              f"{s.results} already", file=err, flush=True)

    prompts = BUILTIN_PROMPTS if args.prompts == "builtin" else args.prompts
    with progress:
        report = run_eval(graph, prompts, args.output, judge_base_url=args.judge_base_url,
                          judge_model=args.judge_model,
                          judge_api_key_env=args.judge_api_key_env, against=against,
                          backend=choice, concurrency=args.concurrency,
                          judge_concurrency=args.judge_concurrency,
                          judge_max_tokens=args.judge_max_tokens, retries=args.retries,
                          virtual_clock=args.virtual_clock, on_stage=stage, on_result=each,
                          **options)
    if args.json:
        print(json.dumps(report, indent=2), file=out)
    else:
        w = report["win_rate"]
        lc = report["length_controlled_win_rate"]
        print(_line(report["ours"], report["theirs"], w, lc, report["judged"]), file=out)
        print(f"report: {args.output}/report.md", file=err)
    failed = report["judge_errors"] + report["answer_errors"]
    if failed:  # as batch: a CI job must not count a half-judged evaluation as a pass
        print(f"{report['judge_errors']} judge errors, {report['answer_errors']} answers "
              "failed: run the same command again to ask those again", file=err)
    return 1 if failed else 0


def _line(ours: str, theirs: str, w: dict[str, Any], lc: dict[str, Any], n: int) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    return (f"{ours} against {theirs}, {n} pairs judged: win rate {pct(w['value'])} "
            f"[{pct(w['low'])}, {pct(w['high'])}], length-controlled {pct(lc['value'])} "
            f"[{pct(lc['low'])}, {pct(lc['high'])}]")
