"""``stairflow local start|stop|status`` (the local model server that later runs reuse) and
``stairflow probe`` (an endpoint's ways of continuing a partial answer)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import trio

from .._errors import ConfigError

__all__ = ["add_parsers", "serve_local"]

START_TIMEOUT_S = 300.0  # a first start writes the model's weights out of its package


def add_parsers(sub: Any) -> None:
    lo = sub.add_parser("local", help="start, stop or look at the local model server",
                        description="Keep the embedded local model (llama.cpp serving Gemma 3 "
                                    "270M) running on loopback; 'stairflow run', 'bench' and "
                                    "'serve' reuse it instead of starting their own.")
    actions = lo.add_subparsers(dest="action", required=True, parser_class=type(lo))
    start = actions.add_parser("start", help="start it in the background (or --foreground)")
    start.add_argument("--port", type=int, default=8088)
    start.add_argument("--foreground", action="store_true",
                       help="stay in the foreground until Ctrl-C (or SIGTERM)")
    start.set_defaults(handler=_start)
    stop = actions.add_parser("stop", help="stop the server 'local start' started")
    stop.set_defaults(handler=_stop)
    status = actions.add_parser("status", help="is it running, and where (exit 1 if not)")
    status.set_defaults(handler=_status)

    pr = sub.add_parser("probe", help="find how an endpoint can continue a partial answer")
    pr.add_argument("base_url", help="e.g. http://127.0.0.1:8080/v1")
    pr.add_argument("--model", required=True)
    pr.add_argument("--api-key-env", metavar="VAR")
    pr.set_defaults(handler=_probe)


def serve_local(port: int, out: TextIO) -> int:
    """Run the local model server in the foreground until Ctrl-C or SIGTERM."""
    from .._backends.local import open_local_server
    from .._backends.probe import forget_server, remember_server, state_dir

    state_dir()  # where its note goes: a clear error before the server starts, not after

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_local_server(port=port) as server:
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


def _running() -> tuple[dict[str, Any] | None, bool]:
    """The note of a healthy local server of ours, if one runs; and whether a stale note is
    left (no server answers where it says, or it names no process of ours: a crashed
    server's pid may be another program's now). start, stop and status all judge by this."""
    from .._backends.probe import running_server, state_file

    note = trio.run(running_server)
    pid = None if note is None else note.get("pid")
    if note is not None and type(pid) is int and pid > 1 and _is_ours(pid):
        return note, False
    return None, note is not None or state_file().exists()


def _start(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .._backends.probe import forget_server, state_dir

    running, stale = _running()
    if running is not None:
        print(f"already running: {running['model']} at {running['base_url']} "
              f"(pid {running['pid']})", file=out)
        return 0
    if stale:
        forget_server()
    if args.foreground:
        return serve_local(args.port, out)
    log = state_dir() / "local-server.log"
    try:
        log_file = log.open("wb")
    except OSError as exc:
        raise ConfigError(f"cannot write the local server's log {log} "
                          f"({exc.strerror or exc}); set XDG_CACHE_HOME to a writable "
                          "directory") from None
    with log_file:  # the child keeps its own copy
        child = subprocess.Popen(
            [sys.executable, "-m", "stairflow", "local", "start", "--foreground", "--port",
             str(args.port)], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True)  # not stopped by the terminal's Ctrl-C
    deadline = time.monotonic() + START_TIMEOUT_S
    while (running := _running()[0]) is None:  # another process: poll its note and health
        if child.poll() is not None or time.monotonic() > deadline:
            if child.poll() is None:
                child.terminate()
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise ConfigError(f"the local model server did not start: {tail}; log: {log}")
        time.sleep(0.25)
    print(f"started: {running['model']} at {running['base_url']} (pid {child.pid}); later "
          "runs reuse it; 'stairflow local stop' stops it", file=out)
    return 0


def _stop(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .._backends.probe import forget_server

    running, stale = _running()
    if running is None:  # signal nothing
        forget_server()
        print("no local model server is running" + (" (removed a stale note)" if stale
                                                       else ""), file=out)
        return 0
    pid = running["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:  # another process: poll it
        time.sleep(0.1)
    if _alive(pid):
        raise ConfigError(f"process {pid} did not stop within 15 s; stop it yourself "
                          f"(kill {pid})")
    forget_server()  # it removes its note itself; unless it was killed
    print(f"stopped (pid {pid})", file=out)
    return 0


def _is_ours(pid: int) -> bool:
    """Whether process ``pid`` is a ``stairflow local start`` (without /proc to tell: whether
    it is alive, trusting the note)."""
    if not Path("/proc/self").exists():
        return _alive(pid)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone
        return False
    return b"stairflow" in b" ".join(argv) and b"local" in argv and b"start" in argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _status(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    running, stale = _running()
    if running is None:
        print("not running ('stairflow local start' starts it" + (
            "; the note a stopped server left is stale: 'stairflow local stop' removes it)"
            if stale else ")"), file=out)
        return 1
    print(f"running: {running['model']} at {running['base_url']} "
          f"(pid {running['pid']})", file=out)
    return 0


def _probe(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from .._backends.probe import probe, probe_rates, probe_slots

    results = trio.run(probe, args.base_url, args.model, args.api_key_env)
    for name, (ok, detail) in results.items():
        print(f"{name:14} {'works' if ok else 'no':6} {detail}", file=out)
    best = next((n for n, (ok, _) in results.items() if ok), None)
    print(f"use: --continuation {best}" if best else "no way to continue works here", file=out)
    if best:
        rates = trio.run(probe_rates, args.base_url, args.model, args.api_key_env)
        print(f"rates: {rates.describe()}" if rates else "rates: not measured (a request "
              "failed)", file=out)
    slots = trio.run(probe_slots, args.base_url, args.model, args.api_key_env)
    print(f"prefix cache: llama.cpp, {slots} slots; each node is pinned to one while one is "
          "free" if slots else "prefix cache: the server's own (no llama.cpp slots to pin); "
          "the append layout lets it hit", file=out)
    return 0 if best else 1
