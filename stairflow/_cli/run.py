"""``stairflow run GRAPH [PROMPT]``: stream the answer, then a summary (or one JSON report).

The backend comes from the same resolution as `stairflow.open_backend`: each node's own
endpoint, else ``--base-url``/``--model``, else the local model; ``--virtual-clock``,
``--backend sim`` or ``--sim`` what-ifs run the simulator instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, TextIO

import trio
import trio.testing

from .._backends.base import Backend, describe_backend
from .._backends.local import LOCAL_MODEL, LocalModelMissing
from .._backends.meter import EndpointRates
from .._backends.redact import redact_data
from .._backends.select import CHOICES, open_backend
from .._backends.sim import SimBackend
from .._errors import ConfigError
from .._graph import CONTINUATIONS, PROMPT_FORMATS, FrozenGraph
from .._graphfile import resolve_graph
from .._metrics import Report
from .._runtime.run import Run, open_run
from .._settings import parse_sim
from .._timeline import FORMATS
from .common import GRAPH_HELP
from .trace import TRACE_FORMATS, draw_picture, write_trace

__all__ = ["add_backend_options", "add_parser", "backend_choice", "banner", "prompt_of"]

_OPTIONS = ("base_url", "model", "api_key_env", "continuation", "prompt_format", "timeout_s")


def add_backend_options(r: argparse.ArgumentParser, virtual_clock: bool = True) -> None:
    """Where the graph's models run, and the simulated backend's what-ifs (run and bench).
    Without ``virtual_clock`` the option is still parsed (for its clear error) but not
    listed in the help."""
    r.add_argument("--backend", choices=list(CHOICES), default="auto",
                   help="auto (default): each node's endpoint, else --base-url, else the local "
                        "model; local: the embedded llama.cpp model for nodes without an "
                        "endpoint; openai: --base-url for them; sim: the simulated backend")
    r.add_argument("--base-url", help="default OpenAI-compatible endpoint, e.g. "
                                      "http://host:8000/v1, for nodes that name none")
    r.add_argument("--model", help="default model, for nodes that name none")
    r.add_argument("--api-key-env", metavar="VAR",
                   help="name of the environment variable holding the default endpoint's key")
    r.add_argument("--continuation", choices=list(CONTINUATIONS),
                   help="how to continue a partial answer (see 'stairflow probe')")
    r.add_argument("--prompt-format", choices=list(PROMPT_FORMATS),
                   help="prompt rendering for --continuation completions")
    r.add_argument("--timeout", type=float, metavar="S", dest="timeout_s",
                   help="deadline of each model request in seconds, for nodes without "
                        "timeout_s")
    r.add_argument("--max-tokens", type=int, metavar="N",
                   help="cap every llm node's answer at N tokens - the final answer too")
    r.add_argument("--virtual-clock", action="store_true",
                   help="run the simulated backend in virtual time: exact, no waiting "
                        "(implies --backend sim)" if virtual_clock else argparse.SUPPRESS)
    r.add_argument("--sim", action="append", default=[], metavar="[NODE.]KEY=VALUE",
                   help="what-if for the simulated backend (implies it), e.g. --sim "
                        "p3.decode_tps=10 or --sim latency_s=0.2; repeatable")


def add_parser(sub: Any) -> None:
    r = sub.add_parser(
        "run", help="run a graph and stream its answer",
        description="Run a graph and stream its answer. Nodes that name their own endpoint "
                    "(base_url, model) in the graph use it; the others use --base-url/--model, "
                    "or the embedded local model when none is given.")
    r.add_argument("graph", help=GRAPH_HELP)
    r.add_argument("prompt", nargs="?",
                   help="the message; '-' reads it from stdin (default: the graph's example)")
    r.add_argument("--mode", choices=["staircase", "normal"], default="staircase")
    add_backend_options(r)
    r.add_argument("--trace", metavar="FILE", help="write the run's trace as JSON (also when "
                                                   "the run fails)")
    r.add_argument("--trace-format", choices=TRACE_FORMATS, default="stairflow",
                   help="the trace file's format: stairflow's events (default) or chrome "
                        "(Chrome trace events, for ui.perfetto.dev and chrome://tracing)")
    r.add_argument("--timeline", metavar="FILE",
                   help="draw the run's timeline into FILE (.png, .svg, .pdf; needs "
                        "'stairflow[plot]')")
    r.add_argument("--json", action="store_true", help="print one JSON report instead")
    r.set_defaults(handler=_run)


def prompt_of(arg: str | None, graph: FrozenGraph, spec: str, stdin: TextIO) -> str:
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
                      f"stairflow run {spec} 'your question'")


def _what_ifs(items: list[str]) -> SimBackend | None:
    """``--sim [NODE.]KEY=VALUE`` as a SimBackend (None when there are none)."""
    if not items:
        return None
    every: dict[str, str] = {}
    per_node: dict[str, dict[str, str]] = {}
    for item in items:
        target, eq, raw = item.partition("=")
        node, _, key = target.rpartition(".")
        if not eq or not key or target.startswith("."):
            raise ConfigError(f"--sim {item!r}: write [NODE.]KEY=VALUE, e.g. --sim "
                              "p3.decode_tps=10 or --sim latency_s=0.2")
        (per_node.setdefault(node, {}) if node else every)[key] = raw
    return SimBackend(sim=parse_sim(every, "--sim"),
                      nodes={n: parse_sim(v, f"--sim {n}") for n, v in per_node.items()})


def backend_choice(args: argparse.Namespace) -> tuple[str | Backend, dict[str, Any]]:
    options = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None}
    what_if = _what_ifs(args.sim)
    simulated = args.virtual_clock or what_if is not None
    if simulated and args.backend not in ("auto", "sim"):
        raise ConfigError("--virtual-clock and --sim need the simulated backend (--backend sim)")
    choice: str | Backend = what_if or ("sim" if simulated else args.backend)
    if choice == "sim" or what_if is not None:
        if options:
            flag = "--" + next(iter(options)).replace("_", "-").replace("timeout-s", "timeout")
            raise ConfigError(f"{flag} does not apply to the simulated backend")
        return choice, {}
    return choice, options


def _check_trace_path(path: str | None) -> Path | None:
    """Find a bad --trace path now, not after the whole run."""
    if path is None:
        return None
    p = Path(path)
    try:
        with p.open("w") as f:
            f.write("{}\n")
            f.flush()
    except OSError as exc:
        raise ConfigError(f"--trace {path}: cannot write there ({exc.strerror}); give a file "
                          "in an existing directory") from None
    return p


def _check_timeline_path(path: str | None) -> None:
    """Find a --timeline that cannot be drawn now, not after the run has spent its tokens."""
    if path is None:
        return
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--timeline {path}: cannot draw a timeline to "
                          f"{fmt or 'a file without a suffix'!r}; use one of "
                          f"{', '.join(FORMATS)}")
    parent = target.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"--timeline {path}: cannot write there; give a file in an existing "
                          "directory you can write to")
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--timeline needs matplotlib: pip install 'stairflow[plot]'")


def banner(name: str, simulated: bool, virtual: bool) -> str:
    if simulated:
        clock = "virtual clock" if virtual else "real time"
        return (f"[simulated backend: placeholder text, timings from the timing model, "
                f"{clock}]")
    if name.startswith("local "):
        return (f"[local model {LOCAL_MODEL} (a small base model): weak answers, real tokens "
                "and timings]")
    return f"[{name}]"


def _summary(report: Report) -> str:
    ttft = "-" if report.ttft_s is None else f"{report.ttft_s:.3f} s"
    lines = [
        f"{report.graph} ({report.mode}): TTFT {ttft} | total {report.total_s:.2f} s | "
        f"{report.output_tokens} tokens, {report.tokens_per_s:.1f} tokens/s | "
        f"{report.llm_calls} LLM calls, {report.prompt_tokens} prompt tokens"
        + (f" ({report.cached_tokens} from the cache, {report.recomputed_tokens} recomputed)"
           if report.cached_tokens else "")
    ]
    inner = set(report.trace.meta["nodes"]) - {report.trace.meta["input"],
                                               report.trace.meta["output"]}
    firsts = [f"{name} {n.ttft_s:.3f}" for name, n in report.nodes.items()
              if n.ttft_s is not None and name in inner]
    if firsts:
        lines.append("first token (s): " + ", ".join(firsts))
    partial = [f"{name} read " + ", ".join(f"{src} {r.tokens}/{r.sent}" for src, r in
                                          n.read.items())
               for name, n in report.nodes.items()
               if not n.error and any(not r.whole for r in n.read.values())]
    if partial:
        lines.append("ended before its inputs did (tokens read/sent): " + "; ".join(partial))
    lost = [f"{name} ({n.error})" for name, n in report.nodes.items() if n.error]
    if lost:
        lines.append("dropped after an error: " + "; ".join(lost))
    if report.rates:
        lines.append("measured: " + "; ".join(EndpointRates(**r).describe()
                                              for r in report.rates))
    return "\n".join(lines)


def _write_trace(run: Run, path: Path, fmt: str) -> None:
    data = redact_data(run.trace.to_json(), run.secrets)
    write_trace(data, path, fmt)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    graph = resolve_graph(args.graph).with_mode(args.mode)
    if args.max_tokens is not None:
        graph = graph.capped(args.max_tokens)
    prompt = prompt_of(args.prompt, graph, args.graph, stdin)
    choice, options = backend_choice(args)
    trace_path = _check_trace_path(args.trace)
    _check_timeline_path(args.timeline)
    stream = not args.json
    runs: list[Run] = []

    async def main() -> Report:
        async with open_backend(graph, choice, **options) as backend:  # type: ignore[arg-type]
            info = describe_backend(backend)
            if stream:
                print(banner(info.name, info.simulated, args.virtual_clock), file=err,
                      flush=True)
            async with open_run(graph, prompt, backend=backend, mode=args.mode) as run:
                runs.append(run)
                async for event in run:
                    if stream and event.kind == "output":
                        out.write(event.data["text"])
                        out.flush()
            return run.report()

    clock = trio.testing.MockClock(autojump_threshold=0) if args.virtual_clock else None
    try:
        report = trio.run(main, clock=clock)
    except LocalModelMissing as exc:
        raise ConfigError(f"{exc}; or run without it: --virtual-clock (simulated), or "
                          "--base-url URL --model M") from None
    finally:
        if trace_path is not None and runs:
            _write_trace(runs[0], trace_path, args.trace_format)
        elif trace_path is not None:  # the run never started: leave no placeholder behind
            trace_path.unlink(missing_ok=True)
    if args.timeline:
        draw_picture([redact_data(runs[0].trace.to_json(), runs[0].secrets)], args.timeline)
    if args.json:
        data = report.to_dict()
        data["virtual_clock"] = bool(args.virtual_clock)
        print(json.dumps(redact_data(data, runs[0].secrets), indent=2), file=out)
    else:
        print(file=out)
        print(_summary(report), file=err)
    return 0
