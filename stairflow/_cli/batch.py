"""``stairflow batch GRAPH PROMPTS.jsonl -o RESULTS.jsonl``: one graph over many prompts.

Results are appended as each prompt finishes; running the same command again skips what the
results file holds, so an interrupted batch (Ctrl-C, a crash, even SIGKILL) resumes. In a
terminal a progress bar shows done, failed, rate, ETA and TTFT p50; a summary follows.
``--ray ADDRESS`` spreads the prompts over a Ray cluster's workers.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any, TextIO

import trio
import trio.testing
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .._backends.local import LocalModelMissing
from .._batch.runner import Batch, BatchSummary, open_batch
from .._errors import ConfigError
from .._graphfile import resolve_graph
from .common import GRAPH_HELP
from .run import add_backend_options, backend_choice, banner

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    b = sub.add_parser(
        "batch", help="run a graph over a file of prompts, resumably",
        description="Run a graph over every prompt of a JSON-lines file (a JSON string, or an "
                    "object with \"prompt\" or \"messages\" and an optional \"id\", per line) "
                    "and append one JSON result per prompt to RESULTS as it finishes. The "
                    "same command again skips the prompts RESULTS holds: an interrupted batch "
                    "resumes.")
    b.add_argument("graph", help=GRAPH_HELP)
    b.add_argument("prompts", help="the prompts: a JSON-lines file")
    b.add_argument("-o", "--output", required=True, metavar="RESULTS",
                   help="the JSON-lines file results are appended to (created if missing)")
    b.add_argument("--mode", choices=["staircase", "normal", "both"], default="staircase",
                   help="run each prompt in this mode; both: once in each")
    b.add_argument("--concurrency", type=int, metavar="N",
                   help="runs in flight (default: 256 on the simulator; on llama.cpp, as "
                        "many as the server's slots hold; 16 on other endpoints)")
    b.add_argument("--retries", type=int, default=2, metavar="N",
                   help="run a prompt again up to N times after a transient backend error "
                        "(unreachable, overloaded, timed out, cut off); default 2")
    b.add_argument("--retry-failed", action="store_true",
                   help="run again the prompts RESULTS records with an error")
    add_backend_options(b)
    b.add_argument("--ray", metavar="ADDRESS",
                   help="run the prompts on a Ray cluster: its address (ray://host:10001 or "
                        "host:6379), or 'local' to start one in this process; needs "
                        "'stairflow[ray]'")
    b.add_argument("--workers", type=int, metavar="N",
                   help="with --ray: worker processes (default: the cluster's CPUs)")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.set_defaults(handler=_batch)


class _Bar:
    """The terminal's progress bar (nothing when stderr is not a terminal)."""

    def __init__(self, console: Console, title: str, total: int, done: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed | {task.fields[rate]} | TTFT p50 "
                       "{task.fields[p50]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=not console.is_terminal, transient=True)
        self.task = self.progress.add_task(title, total=total, completed=done, failed=0,
                                           rate="-", p50="-")
        self.skipped = done
        self.start = time.monotonic()

    def update(self, batch: Batch) -> None:
        wall = time.monotonic() - self.start
        p50 = batch.ttft_p50()
        self.progress.update(
            self.task, completed=self.skipped + batch.done, failed=batch.failed,
            rate=f"{batch.done / wall:.1f}/s" if wall > 0 else "-",
            p50="-" if p50 is None else f"{p50:.3f} s")


def _batch(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    # Python's collector keeps its default settings here: with the fewer passes that speed up
    # one burst of runs (docs/performance.md), the finished runs' cycles pile up and a long
    # batch's memory grows (30,000 simulated prompts: 455 MB peak, against 97 MB)
    return _batch_on(args, out, err)


def _batch_on(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    graph = resolve_graph(args.graph)
    if args.max_tokens is not None:
        graph = graph.capped(args.max_tokens)
    choice, options = backend_choice(args)
    if args.workers is not None and args.ray is None:
        raise ConfigError("--workers applies to --ray; drop it, or add --ray local")
    console = Console(file=err, stderr=True)
    held: list[Batch] = []
    bar: list[_Bar] = []

    def started(batch: Batch) -> None:
        held.append(batch)
        print(banner(batch.backend, batch.simulated, args.virtual_clock), file=err, flush=True)
        count = batch.total // len(batch.modes)
        each = f" in {len(batch.modes)} modes" if len(batch.modes) > 1 else ""
        print(f"batch {batch.graph} ({'+'.join(batch.modes)}): {count} prompts{each}, "
              f"{batch.skipped} results in {args.output} already; up to "
              f"{batch.concurrency} runs at once", file=err, flush=True)
        bar.append(_Bar(console, f"batch {batch.graph}", batch.total, batch.skipped))
        bar[0].progress.start()

    def each(_: Any) -> None:
        if bar:
            bar[0].update(held[0])

    kw: dict[str, Any] = dict(backend=choice, mode=args.mode, concurrency=args.concurrency,
                              retries=args.retries, retry_failed=args.retry_failed,
                              on_result=each, **options)
    if args.ray is not None:
        from .._batch.cluster import run_on_ray

        summary = _interruptible(lambda: run_on_ray(
            graph, args.prompts, args.output, address=args.ray, workers=args.workers,
            virtual_clock=args.virtual_clock, on_start=started,
            log=lambda line: print(line, file=err, flush=True), **kw), held, bar)
    else:
        async def main() -> BatchSummary:
            async with open_batch(graph, args.prompts, args.output, **kw) as batch:
                started(batch)
            return batch.summary()

        clock = trio.testing.MockClock(autojump_threshold=0) if args.virtual_clock else None
        summary = _interruptible(lambda: trio.run(main, clock=clock), held, bar)
    if args.json:
        print(json.dumps(asdict(summary), indent=2), file=out)
    else:
        print(summary.describe(), file=err)
    if summary.interrupted:
        return 130
    return 1 if summary.failed or summary.stopped else 0


def _interruptible(go: Any, held: list[Batch], bar: list[_Bar]) -> BatchSummary:
    """The batch's summary; after Ctrl-C, what it had done (marked interrupted)."""
    try:
        try:
            summary: BatchSummary = go()
        except LocalModelMissing as exc:
            raise ConfigError(f"{exc}; or run without it: --virtual-clock (simulated), or "
                              "--base-url URL --model M") from None
        finally:
            if bar:
                bar[0].progress.stop()
    except KeyboardInterrupt:
        if not held:
            raise
        held[0].interrupted = True
        return held[0].summary()
    return summary
