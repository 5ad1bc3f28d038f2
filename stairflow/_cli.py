"""The ``stairflow`` command: run, check, render, list.

Bad input ends with a one-line ``stairflow: error: ...`` on stderr and exit status 2; a run
that fails ends with exit status 1; a bug in stairflow, with one line and exit status 70.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import trio
import trio.testing

from ._backends.base import Backend
from ._backends.local import LOCAL_MODEL, LOCAL_SETTINGS, open_local_server
from ._errors import ConfigError, RunError, StairflowError
from ._graph import CONTINUATIONS, PROMPT_FORMATS, FrozenGraph
from ._graphfile import bundled_graphs, resolve_graph
from ._metrics import Report
from ._render import FORMATS, render
from ._runtime.run import open_run, resolve_backend

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stairflow", description="Low-latency multi-agent LLM graphs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    graph_help = "a graph file, a bundled graph name (see 'stairflow list') or module:attribute"

    r = sub.add_parser("run", help="run a graph and stream its answer")
    r.add_argument("graph", help=graph_help)
    r.add_argument("prompt", nargs="?",
                   help="the message; '-' reads it from stdin (default: the graph's example)")
    r.add_argument("--mode", choices=["staircase", "normal"], default="staircase")
    r.add_argument("--backend", choices=["local", "openai", "sim"],
                   help="local: the embedded llama.cpp model (default); openai: any "
                        "OpenAI-compatible server (--base-url); sim: the simulated backend")
    r.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://host:8000/v1 "
                                      "(implies --backend openai; overrides the graph)")
    r.add_argument("--model", help="model name at the endpoint (overrides the graph)")
    r.add_argument("--api-key-env", metavar="VAR",
                   help="name of the environment variable holding the API key")
    r.add_argument("--continuation", choices=list(CONTINUATIONS),
                   help="how to continue a partial answer (see 'stairflow probe')")
    r.add_argument("--prompt-format", choices=list(PROMPT_FORMATS),
                   help="prompt rendering for --continuation completions")
    r.add_argument("--max-tokens", type=int, metavar="N", help="cap every node's answer")
    r.add_argument("--virtual-clock", action="store_true",
                   help="run the simulated backend in virtual time: exact, no waiting "
                        "(implies --backend sim)")
    r.add_argument("--trace", metavar="FILE", help="write the run's trace as JSON")
    r.add_argument("--json", action="store_true", help="print one JSON report instead")

    c = sub.add_parser("check", help="validate a graph and print its layers")
    c.add_argument("graph", help=graph_help)

    d = sub.add_parser("render", help="draw a graph with graphviz")
    d.add_argument("graph", help=graph_help)
    d.add_argument("-o", "--output", required=True, help="output file (.svg, .png, .pdf, .dot)")
    d.add_argument("--format", choices=FORMATS, help="format (default: from the file suffix)")

    sub.add_parser("list", help="list the bundled graphs")

    sv = sub.add_parser("serve", help="keep the local model server running for later runs")
    sv.add_argument("--port", type=int, default=8088)

    pr = sub.add_parser("probe", help="find how an endpoint can continue a partial answer")
    pr.add_argument("base_url", help="e.g. http://127.0.0.1:8080/v1")
    pr.add_argument("--model", required=True)
    pr.add_argument("--api-key-env", metavar="VAR")
    return p


def _prompt(arg: str | None, graph: FrozenGraph, stdin: TextIO) -> str:
    if arg == "-":
        text = stdin.read().strip()
        if not text:
            raise ConfigError("the message read from stdin is empty")
        return text
    if arg is not None:
        return arg
    if graph.default_input:
        return graph.default_input
    raise ConfigError(f"graph '{graph.name}' has no example message; give one: "
                      f"stairflow run {graph.name} 'your question'")


def _summary(report: Report, virtual: bool) -> str:
    lines = []
    if report.simulated:
        clock = "virtual clock" if virtual else "real time"
        lines.append(f"[simulated backend: placeholder text, timings from the timing model, "
                     f"{clock}]")
    ttft = "-" if report.ttft_s is None else f"{report.ttft_s:.3f} s"
    lines.append(
        f"{report.graph} ({report.mode}): TTFT {ttft} | total {report.total_s:.2f} s | "
        f"{report.output_tokens} tokens, {report.tokens_per_s:.1f} tokens/s | "
        f"{report.llm_calls} LLM calls, {report.prompt_tokens} prompt tokens"
    )
    firsts = [f"{name} {n.ttft_s:.3f}" for name, n in report.nodes.items()
              if n.ttft_s is not None and n.calls]
    if firsts:
        lines.append("first token (s): " + ", ".join(firsts))
    return "\n".join(lines)


def _backend_kind(args: argparse.Namespace) -> str:
    kind: str = args.backend or ("sim" if args.virtual_clock else
                                 "openai" if args.base_url else "local")
    if args.virtual_clock and kind != "sim":
        raise ConfigError("--virtual-clock needs the simulated backend (--backend sim)")
    if kind == "openai" and not args.base_url:
        raise ConfigError("--backend openai needs --base-url (and usually --model)")
    return kind


def _openai(args: argparse.Namespace, graph: FrozenGraph, url: str | None,
            model: str | None, **defaults: Any) -> Backend:
    from ._backends.openai import OpenAIBackend  # the openai package takes a while to import

    return OpenAIBackend.for_graph(
        graph, base_url=url, model=model, api_key_env=args.api_key_env,
        continuation=args.continuation or defaults.get("continuation"),
        prompt_format=args.prompt_format or defaults.get("prompt_format"),
        extra_body=defaults.get("extra_body"))


def _run(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    graph = resolve_graph(args.graph).with_mode(args.mode)
    if args.max_tokens is not None:
        graph = graph.capped(args.max_tokens)
    prompt = _prompt(args.prompt, graph, stdin)
    kind = _backend_kind(args)
    stream = not args.json
    banner = {
        "sim": "[simulated backend: the text below is placeholder words]",
        "local": f"[local model {LOCAL_MODEL} (a small base model): weak answers, real tokens "
                 "and timings]",
    }.get(kind)

    async def run_with(backend: Backend) -> Report:
        if stream and banner:
            print(banner, file=err, flush=True)
        try:
            async with open_run(graph, prompt, backend=backend, mode=args.mode) as run:
                async for event in run:
                    if stream and event.kind == "output":
                        out.write(event.data["text"])
                        out.flush()
        finally:
            aclose = getattr(backend, "aclose", None)
            if aclose is not None:
                await aclose()
        return run.report()

    async def main() -> Report:
        if kind == "sim":
            return await run_with(resolve_backend("sim", graph))
        if kind == "openai":
            return await run_with(_openai(args, graph, args.base_url, args.model))
        local = LOCAL_SETTINGS
        from ._backends.probe import running_server_url

        url = await running_server_url()
        if url is not None:
            return await run_with(_openai(args, graph, url, LOCAL_MODEL, **local))
        async with open_local_server() as server:
            return await run_with(_openai(args, graph, server.base_url, LOCAL_MODEL, **local))

    clock = trio.testing.MockClock(autojump_threshold=0) if args.virtual_clock else None
    report = trio.run(main, clock=clock)
    if args.trace:
        report.trace.write(args.trace)
    if args.json:
        data = report.to_dict()
        data["virtual_clock"] = bool(args.virtual_clock)
        print(json.dumps(data, indent=2), file=out)
    else:
        print(file=out)
        print(_summary(report, args.virtual_clock), file=err)
    return 0


def _check(args: argparse.Namespace, out: TextIO) -> int:
    g = resolve_graph(args.graph)
    print(f"graph '{g.name}' is valid: {len(g.nodes)} nodes, {len(g.edges)} edges", file=out)
    for i, layer in enumerate(g.layers):
        print(f"  layer {i}: {', '.join(layer)}", file=out)
    return 0


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    from ._backends.probe import forget_server, remember_server

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_local_server(port=args.port) as server:
                remember_server(server)
                try:
                    print(f"serving {server.model} at {server.base_url} (Ctrl-C to stop); "
                          f"'stairflow run' reuses it", file=out, flush=True)
                    async for _ in signals:
                        break
                finally:
                    forget_server()

    trio.run(main)
    return 0


def _probe(args: argparse.Namespace, out: TextIO) -> int:
    from ._backends.probe import probe

    results = trio.run(probe, args.base_url, args.model, args.api_key_env)
    for name, (ok, detail) in results.items():
        print(f"{name:14} {'works' if ok else 'no':6} {detail}", file=out)
    best = next((n for n, (ok, _) in results.items() if ok), None)
    print(f"use: --continuation {best}" if best else "no way to continue works here", file=out)
    return 0 if best else 1


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None, stdin: TextIO | None = None) -> int:
    out, err, stdin = out or sys.stdout, err or sys.stderr, stdin or sys.stdin
    try:
        args = _parser().parse_args(argv)
        if args.command == "run":
            return _run(args, out, err, stdin)
        if args.command == "check":
            return _check(args, out)
        if args.command == "serve":
            return _serve(args, out)
        if args.command == "probe":
            return _probe(args, out)
        if args.command == "render":
            path = render(resolve_graph(args.graph), args.output, args.format)
            print(f"wrote {path}", file=out)
            return 0
        for name, path in bundled_graphs().items():
            print(f"{name:12} {resolve_graph(str(path)).description}", file=out)
        return 0
    except RunError as exc:
        print(f"stairflow: run failed: {exc}", file=err)
        return 1
    except StairflowError as exc:
        print(f"stairflow: error: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        print("stairflow: interrupted", file=err)
        return 130
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("STAIRFLOW_DEBUG"):
            raise
        print(f"stairflow: internal error: {type(exc).__name__}: {exc} (please report it; "
              "STAIRFLOW_DEBUG=1 shows the traceback)", file=err)
        return 70
