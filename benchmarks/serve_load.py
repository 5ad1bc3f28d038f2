"""Load on `stairflow serve`: concurrent streaming clients, the official `openai` client.

    python benchmarks/serve_load.py                          # print the table
    python benchmarks/serve_load.py --write docs/serving.md  # and put it in the docs

Starts ``stairflow serve moa --backend sim`` (the simulated backend in real time: the graph's
timing model, no GPU needed) on loopback, then for 1, 10, 100 and 500 concurrent clients
streams requests for ``--seconds`` each (every client starts requests until the time is up;
those in flight then finish, within a timeout), and reports requests/s, TTFT p50/p99 and
errors. Answers are capped at 64 tokens (``max_tokens``), so each run ends about a second
after its first token. It also runs the same graph in process, without HTTP, for the TTFT the
server adds. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
import trio

import stairflow as sf

LEVELS = (1, 10, 100, 500)
MAX_TOKENS = 64
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


@dataclass
class Level:
    clients: int
    ttfts: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def row(self) -> str:
        done = len(self.ttfts)
        if done:
            ordered = sorted(self.ttfts)
            p50 = statistics.median(ordered)
            p99 = ordered[min(done - 1, int(0.99 * done))]
            times = f"{p50:.3f} s | {p99:.3f} s"
        else:
            times = "- | -"
        errors = ", ".join(f"{n} {kind}" for kind, n in self.errors.items()) or "0"
        return (f"| {self.clients} | {done} | {done / self.seconds:.1f} | {times} "
                f"| {errors} |")


async def one_level(url: str, clients: int, seconds: float) -> Level:
    level = Level(clients)
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    deadline = trio.current_time() + seconds

    async def user() -> None:
        while trio.current_time() < deadline:
            start = time.perf_counter()
            first = None
            try:
                stream = await client.chat.completions.create(
                    model="moa", messages=ASK, stream=True,  # type: ignore[arg-type]
                    max_tokens=MAX_TOKENS)
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - start
            except openai.APIStatusError as exc:
                level.errors[f"HTTP {exc.status_code}"] += 1
                continue
            except openai.APIError as exc:
                kind = type(exc).__name__
                if not level.errors[kind]:
                    print(f"  first {kind}: {exc!r} (cause: {exc.__cause__!r})",
                          file=sys.stderr)
                level.errors[kind] += 1
                continue
            if first is None:
                level.errors["no text"] += 1
            else:
                level.ttfts.append(first)

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(user)
    level.seconds = time.perf_counter() - began
    await client.close()
    return level


async def in_process(runs: int = 5) -> float:
    """The graph's TTFT run in this process on the same backend, in real time, median."""
    graph = sf.resolve_graph("moa")
    ttfts = []
    async with sf.open_backend(graph, "sim") as backend:
        for _ in range(runs):
            async with sf.open_run(graph, ASK[0]["content"], backend=backend) as run:
                async for event in run:
                    if event.kind == "output":
                        run.cancel()  # only the first token matters here
                        break
            ttft = run.report().ttft_s
            assert ttft is not None
            ttfts.append(ttft)
    return statistics.median(ttfts)


def measure(seconds: float, levels_asked: tuple[int, ...] = LEVELS) -> list[str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "stairflow", "serve", "moa", "--backend", "sim", "--port", "0",
         "--max-concurrent", "1000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r" at (\S+/v1)", line)
        if not match:
            raise RuntimeError(f"stairflow serve did not start: {line!r}")
        url = match.group(1)
        alone = trio.run(in_process)
        levels = []
        for clients in levels_asked:
            print(f"{clients} concurrent clients for {seconds:g} s ...", file=sys.stderr,
                  flush=True)
            levels.append(trio.run(one_level, url, clients, seconds))
    finally:
        server.terminate()
        server.wait(30)
    one = statistics.median(levels[0].ttfts)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return [
        f"Measured {date} with `python benchmarks/serve_load.py --write docs/serving.md` on "
        f"{os.cpu_count()} CPU cores ({platform.system()}, Python "
        f"{platform.python_version()}), the clients and the server on the same machine: "
        f"`stairflow serve moa --backend sim --max-concurrent 1000` (the simulated backend "
        f"in real time: the paper-calibrated timing, staircase TTFT 0.244 s), the official "
        f"`openai` client (`AsyncOpenAI`, one process), every request streamed with "
        f"`max_tokens = {MAX_TOKENS}`, {seconds:g} s per row.",
        "",
        "| concurrent clients | requests | requests/s | TTFT p50 | TTFT p99 | errors |",
        "|---|---|---|---|---|---|",
        *(level.row() for level in levels),
        "",
        f"In process, without HTTP, the same graph on the same backend answers at "
        f"{alone:.3f} s (median of 5); through the server with one client, {one:.3f} s: "
        f"the server and the client add {1000 * (one - alone):.1f} ms. With more clients at "
        f"once the process runs out of CPU (a run's scheduler, its HTTP stream and the "
        f"simulated models all share one Python thread), and TTFT grows with the load: "
        f"more replicas, not a bigger process, is the way past it (below).",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="per row (default 20)")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), metavar="N,N,...",
                    help="concurrent clients per row (default 1,10,100,500)")
    ap.add_argument("--write", metavar="FILE", help="replace the load block in this file")
    args = ap.parse_args()
    block = "\n".join(measure(args.seconds, tuple(int(n) for n in args.levels.split(","))))
    print(block)
    if args.write:
        path = Path(args.write)
        text = path.read_text()
        new = re.sub(r"(<!-- load:begin -->\n).*?(<!-- load:end -->)",
                     lambda m: m.group(1) + block + "\n" + m.group(2), text, flags=re.S)
        if new == text and block not in text:
            raise SystemExit(f"{args.write}: no <!-- load:begin --> ... <!-- load:end --> block")
        path.write_text(new)


if __name__ == "__main__":
    main()
