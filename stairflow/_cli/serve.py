"""``stairflow serve GRAPH...``: graphs as OpenAI-compatible chat models over HTTP.

Hypercorn serves the ASGI app of `stairflow._serve.app` with its Trio worker, in the same
Trio run as the graphs' backends: one backend per graph, opened once (the local model
started once for all of them). ``serve`` without a graph is the old spelling of
``stairflow local start --foreground``: it still works, with a warning, for one release.

SIGTERM or SIGINT stops it: Hypercorn takes no more connections and gives the answers in
progress ``--shutdown-grace`` seconds; a second signal ends them at once. Either way each
answer still running gets its shutdown error, and the process exits with status 0 (a signal
that came meanwhile is not raised again once the receiver closes), at the latest
`EXIT_MARGIN_S` after the grace period or the second signal, even while a client that
stopped reading holds its connection.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import os
import signal
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from typing import Any, TextIO

import trio

from .._backends.base import describe_backend
from .._backends.local import LocalModelMissing
from .._backends.select import needs_local_model, open_backend, sharing_local_model
from .._errors import ConfigError
from .._graphfile import resolve_graph
from .._serve.app import App, Limits, Served
from .common import GRAPH_HELP
from .local import serve_local
from .run import add_backend_options, backend_choice

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "serve", help="serve graphs as OpenAI-compatible chat models over HTTP",
        description="Serve each graph as a model named as the graph: POST /v1/chat/completions "
                    "(streamed or not), GET /v1/models, GET /health, and GET /metrics "
                    "(Prometheus; loopback clients only unless --metrics-key-env). The llm "
                    "nodes' models are found as for 'stairflow run'.")
    s.add_argument("graphs", nargs="*", metavar="GRAPH", help=GRAPH_HELP)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, help="port to listen on (default 8000; 0: any free one)")
    s.add_argument("--mode", choices=["staircase", "normal"], default="staircase")
    s.add_argument("--server-key-env", metavar="VAR",
                   help="require 'Authorization: Bearer KEY' on /v1, KEY read from this "
                        "environment variable")
    s.add_argument("--metrics-key-env", metavar="VAR",
                   help="let any client that sends 'Authorization: Bearer KEY' read /metrics, "
                        "KEY read from this environment variable (it may be the same as "
                        "--server-key-env's); without it, /metrics answers loopback clients "
                        "only")
    s.add_argument("--max-concurrent", type=int, default=Limits.max_concurrent, metavar="N",
                   help=f"runs at once; more requests get 429 (default {Limits.max_concurrent})")
    s.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes, metavar="N",
                   help=f"largest request body (default {Limits.max_body_bytes})")
    s.add_argument("--max-messages", type=int, default=Limits.max_messages, metavar="N",
                   help=f"most messages in a request (default {Limits.max_messages})")
    s.add_argument("--max-answer-tokens", type=int, default=Limits.max_answer_tokens,
                   metavar="N", help="largest max_tokens a request may ask for (default "
                                     f"{Limits.max_answer_tokens})")
    s.add_argument("--body-timeout", type=float, default=Limits.body_timeout_s, metavar="S",
                   help="a request's body must arrive within S seconds, or 408 (default "
                        f"{Limits.body_timeout_s:g})")
    s.add_argument("--send-timeout", type=float, default=Limits.send_timeout_s, metavar="S",
                   help="a client that takes nothing of its answer for S seconds (it stopped "
                        "reading) is cut off and its run cancelled (default "
                        f"{Limits.send_timeout_s:g})")
    s.add_argument("--max-unsent-bytes", type=int, default=Limits.max_unsent_bytes,
                   metavar="N", help="a stream's client that falls N bytes of answer behind "
                                     "is cut off and its run cancelled (default "
                                     f"{Limits.max_unsent_bytes})")
    s.add_argument("--shutdown-grace", type=float, default=10.0, metavar="S",
                   help="on SIGTERM or Ctrl-C, let answers in progress finish for S seconds, "
                        "then end them with an error event; a second signal ends them at once "
                        "(default 10)")
    s.add_argument("--log-prompts", action="store_true",
                   help="log each request's conversation and answer (off: never logged)")
    add_backend_options(s, virtual_clock=False)  # clients wait in real time
    s.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    if not args.graphs:  # the old spelling: keep the local model running
        print("stairflow: warning: 'stairflow serve' without a graph is deprecated and will "
              "be removed in the next release; use 'stairflow local start' (in the "
              "background) or 'stairflow local start --foreground'", file=err, flush=True)
        return serve_local(8088 if args.port is None else args.port, out)
    if args.virtual_clock:
        raise ConfigError("--virtual-clock does not apply to serve (clients wait in real "
                          "time); use --backend sim for the simulated backend in real time")
    for flag, value in (("--max-concurrent", args.max_concurrent),
                        ("--max-body-bytes", args.max_body_bytes),
                        ("--max-messages", args.max_messages),
                        ("--max-answer-tokens", args.max_answer_tokens),
                        ("--max-unsent-bytes", args.max_unsent_bytes)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: use a whole number >= 1")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: use a port from 0 (any free one) to 65535")
    if not 0 <= args.shutdown_grace <= 3600:
        raise ConfigError(f"--shutdown-grace {args.shutdown_grace:g}: give seconds from 0 to "
                          "3600")
    for flag, seconds in (("--body-timeout", args.body_timeout),
                          ("--send-timeout", args.send_timeout)):
        # under a tenth of a second, a client reading normally is cut off (a scheduling hiccup)
        if not MIN_TIMEOUT_S <= seconds <= 3600:  # also false for nan
            raise ConfigError(f"{flag} {seconds:g}: give seconds from {MIN_TIMEOUT_S:g} to "
                              "3600")
    limits = Limits(args.max_body_bytes, args.max_messages, args.max_answer_tokens,
                    args.max_concurrent, args.body_timeout, args.send_timeout,
                    args.max_unsent_bytes)
    key = _server_key(args.server_key_env, err)
    metrics_key = _server_key(args.metrics_key_env, err, "--metrics-key-env")
    graphs = {}
    for spec in args.graphs:
        graph = resolve_graph(spec).with_mode(args.mode)
        if args.max_tokens is not None:
            graph = graph.capped(args.max_tokens)
        if graph.name in graphs:
            raise ConfigError(f"{spec}: a graph named '{graph.name}' is served already; "
                              "each model needs its own name")
        graphs[graph.name] = graph
    choice, options = backend_choice(args)
    port = 8000 if args.port is None else args.port
    if not _loopback(args.host) and key is None:
        print(f"stairflow: warning: serving on {args.host} without --server-key-env: anyone "
              "who can reach this port can run the graphs (and spend their models' tokens)",
              file=err, flush=True)

    def log(line: str) -> None:
        print(f"stairflow serve: {line}", file=err, flush=True)

    async def main() -> None:
        from hypercorn.config import Config

        async with AsyncExitStack() as stack:
            if any(needs_local_model(g, choice, options) for g in graphs.values()):  # type: ignore[arg-type]
                await stack.enter_async_context(sharing_local_model())
            served = {}
            for name, graph in graphs.items():
                own = copy.deepcopy(choice) if not isinstance(choice, str) else choice
                backend = await stack.enter_async_context(
                    open_backend(graph, own, **options))  # type: ignore[arg-type]
                served[name] = Served(graph, backend)
            app = App(served, api_key=key, limits=limits, log=log,
                      log_prompts=args.log_prompts, metrics_key=metrics_key)
            config = Config()
            config.bind = [f"[{args.host}]:{port}" if ":" in args.host else
                           f"{args.host}:{port}"]
            config.accesslog = None  # the app logs each request, without its text
            config.graceful_timeout = args.shutdown_grace
            # connections waiting to be accepted: Hypercorn's 100 refused some of 500 clients
            # connecting at once (benchmarks/serve_load.py); the kernel caps it (somaxconn)
            config.backlog = 4096
            stopping = trio.Event()

            async def shutdown() -> None:  # Hypercorn stops taking connections, gives grace
                await stopping.wait()

            # signals the receiver holds when it closes are raised again, to these handlers
            # (a second SIGTERM during the grace period killed the process, status -15)
            quiet = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async with trio.open_nursery() as nursery:

                        async def listen() -> None:
                            async for sig in signals:
                                if stopping.is_set():  # the second: end the answers now
                                    log(f"{signal.Signals(sig).name} again: ending the answers "
                                        "in progress now")
                                    nursery.cancel_scope.cancel()
                                    _exit_after(EXIT_MARGIN_S, log, out, err)
                                    return
                                log(f"{signal.Signals(sig).name}: stopping; answers in progress "
                                    f"have {args.shutdown_grace:g} s to finish (send the signal "
                                    "again to end them now)")
                                stopping.set()
                                _exit_after(args.shutdown_grace + EXIT_MARGIN_S, log, out, err)

                        nursery.start_soon(listen)
                        await _serve_until_stopped(nursery, app, config, shutdown, args, graphs,
                                                   served, out, err)
                        nursery.cancel_scope.cancel()  # the listener
            finally:
                for sig, handler in quiet.items():
                    signal.signal(sig, handler)
    try:
        trio.run(main)
    except LocalModelMissing as exc:
        raise ConfigError(f"{exc}; or serve the simulated backend: --backend sim, or "
                          "--base-url URL --model M") from None
    except (OSError, BaseExceptionGroup) as exc:  # the address is taken, or not ours
        error = _leaf(exc, OSError)
        if error is None:
            raise
        raise ConfigError(f"cannot listen on {args.host}:{port} ({error.strerror or error}); "
                          "pick another --port or --host") from None
    return 0


async def _serve_until_stopped(nursery: trio.Nursery, app: App, config: Any, shutdown: Any,
                               args: argparse.Namespace, graphs: dict[str, Any],
                               served: dict[str, Served], out: TextIO, err: TextIO) -> None:
    """Serve ``app`` with Hypercorn until ``shutdown`` returns and the grace period ends."""
    from hypercorn.trio import serve

    done = trio.Event()

    async def serving(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(app, config, shutdown_trigger=shutdown,  # type: ignore[arg-type]
                        task_status=task_status)
        finally:
            done.set()

    bound = await nursery.start(serving)
    names = ", ".join(graphs)
    where = {describe_backend(s.backend).name for s in served.values()}
    port_line = (f"serving {names} ({args.mode}; {', '.join(sorted(where))}) as "
                 f"OpenAI-compatible models at {bound[0]}/v1 (Ctrl-C to stop)")
    print(port_line, file=out, flush=True)
    if any(describe_backend(s.backend).simulated for s in served.values()):
        print("[simulated backend: placeholder text, timings from the timing "
              "model, real time; answers say system_fingerprint "
              "'stairflow-simulated']", file=err, flush=True)
    await done.wait()


MIN_TIMEOUT_S = 0.1
EXIT_MARGIN_S = 2.0  # past the grace period (or the second signal), the process exits anyway


def _exit_after(seconds: float, log: Callable[[str], None], out: TextIO, err: TextIO) -> None:
    """Exit (status 0) ``seconds`` from now if the server has not stopped by then. The runs
    are all cancelled by that time; what can remain is Hypercorn writing to a client that
    stopped reading (an HTTP/1.1 socket write it shields from cancellation), which would keep
    the process up until that client goes away. A system task: the server's own cancel
    scopes do not reach it, and it ends with the process's Trio run if all goes well."""

    async def watchdog() -> None:
        await trio.sleep(seconds)
        log(f"still stopping {seconds:g} s on: connections to clients that stopped reading "
            "are still open; exiting without them")
        for stream in (out, err, sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        os._exit(0)

    trio.lowlevel.spawn_system_task(watchdog)


def _ignore(signum: int, frame: Any) -> None:
    """A signal raised again after the server stopped: it has been acted on already."""


def _leaf(exc: BaseException, kind: type[OSError]) -> OSError | None:
    """``exc`` if it is a ``kind``, or the one ``kind`` a group of exceptions holds."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_leaf(e, kind) for e in exc.exceptions]
        found = [e for e in leaves if e is not None]
        return found[0] if len(found) == 1 and len(exc.exceptions) == 1 else None
    return None


def _server_key(var: str | None, err: TextIO, flag: str = "--server-key-env") -> str | None:
    """The key clients must send, from the variable ``var``. Whitespace around it (a secrets
    file's trailing newline) is stripped, with a warning: no client could send it, so every
    request would get 401."""
    if var is None:
        return None
    given = os.environ.get(var, "")
    key = given.strip()
    if not given:
        raise ConfigError(f"{flag} {var}: the environment variable {var} is not set "
                          "or empty; export the key there")
    if not key:
        raise ConfigError(f"{flag} {var}: the environment variable {var} holds only "
                          "whitespace; export the key there")
    if not key.isprintable() or not key.isascii():
        raise ConfigError(f"{flag} {var}: the key in {var} holds characters that "
                          "cannot go in an HTTP header (a line break?); check its value")
    if key != given:
        print(f"stairflow: warning: the key in {var} had whitespace around it (a trailing "
              "newline from a file?); stripped it: clients send the key without it",
              file=err, flush=True)
    return key


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
