"""`stairflow serve` replicas behind nginx (deploy/nginx.conf): the TTFT nginx adds, and the
throughput of one replica and of two replicas behind nginx.

    python benchmarks/balancer.py [--requests 50] [--seconds 15] [--clients 50,150]

Everything runs on loopback and stops by itself. The graph is the bundled ``moa`` on the
simulated backend in real time (``--backend sim``: the paper-calibrated timing, staircase TTFT
0.244 s, no GPU needed); the clients are the official ``openai`` client.

- TTFT: ``--requests`` streamed requests straight to a replica and as many through nginx,
  interleaved, one at a time, each answer capped at 4 tokens: the client's time to the first
  text, median and p90, and the difference.
- Throughput: for each number of concurrent clients (``--clients``), every client streams
  requests (``max_tokens`` 64, as benchmarks/serve_load.py does) for ``--seconds``: requests/s,
  TTFT p50/p99, errors, and the CPU time per request of the servers (the replicas' process
  groups and nginx's; nginx's alone too) and of the clients (this process). Against one
  ``stairflow serve``, and against two behind nginx. (Hypercorn's own ``--workers`` needs an
  ASGI app to import, and stairflow has no public one; deploy/README.md says how it was
  measured once.)

Needs nginx (``apt-get install nginx``) and ``pip install 'stairflow[serve]'``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "deploy" / "nginx.conf"
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(url: str, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:  # another process: poll until it answers
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer in 60 s") from None
            time.sleep(0.05)


GROUPS: dict[int, str] = {}  # the process groups of the servers running now: what each is


def _cpu_s(groups: list[int]) -> float:
    """CPU seconds used so far by the processes in the process groups ``groups`` (Linux
    /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) in groups:  # pgrp; then utime and stime in clock ticks
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def _process(cmd: list[str], health: str, what: str) -> Iterator[None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    GROUPS[proc.pid] = what
    try:
        _wait_for(health, proc, what)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nginx's workers
        proc.wait(10)
        del GROUPS[proc.pid]


def _replica(stack: ExitStack) -> str:
    port = _free_port()
    stack.enter_context(_process(
        [sys.executable, "-m", "stairflow", "serve", "moa", "--backend", "sim", "--port",
         str(port), "--max-concurrent", "1000"], f"http://127.0.0.1:{port}/health",
        "stairflow serve"))
    return f"127.0.0.1:{port}"


def _nginx(stack: ExitStack, replicas: list[str]) -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = _free_port()
    text = CONF.read_text()
    for old, new in (("listen 127.0.0.1:8000 ", f"listen 127.0.0.1:{port} "),
                     ("server 127.0.0.1:8001 ", f"server {replicas[0]} "),
                     ("server 127.0.0.1:8002 ", f"server {replicas[1]} ")):
        if text.count(old) != 1:
            raise RuntimeError(f"{CONF}: no '{old.strip()}' line")
        text = text.replace(old, new)
    prefix = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stairflow-nginx-")))
    (prefix / "logs").mkdir()
    (prefix / "nginx.conf").write_text(text)
    stack.enter_context(_process(
        [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        f"http://127.0.0.1:{port}/health", "nginx"))
    return f"127.0.0.1:{port}"


def _ttft(client: Any) -> float:
    start = time.perf_counter()
    first = None
    with client.chat.completions.create(model="moa", messages=ASK, stream=True,
                                        max_tokens=4) as stream:
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("an answer without text")
    return first


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def ttft_rows(requests: int) -> list[str]:
    import openai

    with ExitStack() as stack:
        replicas = [_replica(stack), _replica(stack)]
        balancer = _nginx(stack, replicas)
        clients = {name: stack.enter_context(openai.OpenAI(
            base_url=f"http://{addr}/v1", api_key="unused", max_retries=0))
            for name, addr in (("direct", replicas[0]), ("nginx", balancer))}
        times: dict[str, list[float]] = {"direct": [], "nginx": []}
        for n in range(requests + 2):  # 2 to warm up
            order = list(clients.items()) if n % 2 else list(clients.items())[::-1]
            for name, client in order:
                ttft = _ttft(client)
                if n >= 2:
                    times[name].append(ttft)
    med = {k: statistics.median(v) for k, v in times.items()}
    p90 = {k: _p90(v) for k, v in times.items()}
    return [
        "| client's TTFT | median | p90 |",
        "|---|---|---|",
        f"| straight to a replica | {1000 * med['direct']:.1f} ms | {1000 * p90['direct']:.1f} ms |",
        f"| through nginx | {1000 * med['nginx']:.1f} ms | {1000 * p90['nginx']:.1f} ms |",
        f"| nginx adds | {1000 * (med['nginx'] - med['direct']):+.1f} ms | "
        f"{1000 * (p90['nginx'] - p90['direct']):+.1f} ms |",
    ]


def throughput_rows(levels: list[int], seconds: float) -> list[str]:
    import trio

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import one_level  # the same clients as docs/serving.md's load figures

    setups = {
        "one `stairflow serve`": lambda stack: _replica(stack),
        "two replicas behind nginx": lambda stack: _nginx(stack, [_replica(stack),
                                                                   _replica(stack)]),
    }
    rows = ["| server | concurrent clients | requests | requests/s | TTFT p50 | TTFT p99 "
            "| errors | CPU per request: server | of it nginx | client |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, setup in setups.items():
        with ExitStack() as stack:
            addr = setup(stack)
            for clients in levels:
                print(f"{name}: {clients} clients for {seconds:g} s ...", file=sys.stderr,
                      flush=True)
                servers = list(GROUPS)
                nginx = [pid for pid, what in GROUPS.items() if what == "nginx"]
                before = _cpu_s(servers), _cpu_s(nginx), time.process_time()
                level = trio.run(one_level, f"http://{addr}/v1", clients, seconds)
                after = _cpu_s(servers), _cpu_s(nginx), time.process_time()
                server, proxy, client = (1000 * (b - a) / max(1, len(level.ttfts))
                                         for a, b in zip(before, after, strict=True))
                rows.append(f"| {name} {level.row()} {server:.1f} ms | "
                            f"{f'{proxy:.1f} ms' if nginx else '-'} | {client:.1f} ms |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=50,
                    help="streamed requests each way for the TTFT (default 50)")
    ap.add_argument("--seconds", type=float, default=15.0,
                    help="per throughput row (default 15)")
    ap.add_argument("--clients", default="50,150", metavar="N,N,...",
                    help="concurrent clients per throughput row (default 50,150)")
    args = ap.parse_args()
    levels = [int(n) for n in args.clients.split(",")]
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    nginx = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
                           capture_output=True, text=True, check=True).stderr.strip()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    ttft = ttft_rows(args.requests)
    throughput = throughput_rows(levels, args.seconds)
    print("\n".join([
        f"Measured {date} with `python benchmarks/balancer.py --requests {args.requests} "
        f"--seconds {args.seconds:g} --clients {args.clients}` on {os.cpu_count()} CPU cores "
        f"({model}; {platform.system()}, Python {platform.python_version()}, "
        f"{nginx.removeprefix('nginx version: ')}), clients, replicas and nginx on the same "
        f"machine: `stairflow serve moa --backend sim` (staircase TTFT 0.244 s), nginx with "
        f"deploy/nginx.conf.",
        "",
        f"TTFT, {args.requests} streamed requests each way, one at a time, interleaved:",
        "",
        *ttft,
        "",
        f"Throughput, every request streamed with max_tokens 64, {args.seconds:g} s per row:",
        "",
        *throughput,
    ]))


if __name__ == "__main__":
    main()
