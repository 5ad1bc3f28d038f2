"""``stairflow serve`` (keep the local model running) and ``stairflow probe`` (an endpoint's
ways of continuing a partial answer)."""

from __future__ import annotations

import argparse
import signal
from typing import Any, TextIO

import trio

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    sv = sub.add_parser("serve", help="keep the local model server running for later runs")
    sv.add_argument("--port", type=int, default=8088)
    sv.set_defaults(handler=_serve)

    pr = sub.add_parser("probe", help="find how an endpoint can continue a partial answer")
    pr.add_argument("base_url", help="e.g. http://127.0.0.1:8080/v1")
    pr.add_argument("--model", required=True)
    pr.add_argument("--api-key-env", metavar="VAR")
    pr.set_defaults(handler=_probe)


def _serve(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .._backends.local import open_local_server
    from .._backends.probe import forget_server, remember_server

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


def _probe(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .._backends.probe import probe

    results = trio.run(probe, args.base_url, args.model, args.api_key_env)
    for name, (ok, detail) in results.items():
        print(f"{name:14} {'works' if ok else 'no':6} {detail}", file=out)
    best = next((n for n, (ok, _) in results.items() if ok), None)
    print(f"use: --continuation {best}" if best else "no way to continue works here", file=out)
    return 0 if best else 1
