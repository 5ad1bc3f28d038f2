"""What `stairflow batch` sustains: prompts/s and peak memory, on one process and on Ray.

    python benchmarks/batch.py memory            # 10,000 and 100,000 prompts, virtual time
    python benchmarks/batch.py ray               # 1, 2, 4 Ray workers against one process
    python benchmarks/batch.py ray --prompts 1600 --workers 1 2 4

Each batch is the ``stairflow batch`` command in a fresh process group; the memory figure is
the peak of the summed resident memory of every process in it (sampled every 0.1 s: with Ray,
its daemons and workers too), the rate is the batch's own (its JSON summary). ``memory`` runs
``moa`` with answers of 32 tokens on the simulated backend in virtual time, so the figure is
stairflow's own cost (``--max-tokens 0`` leaves the graph's 256-token answers: some 4x the
time);
``ray`` runs it on the simulated backend in real time (``--sim latency_s=0.1``, answers of
32 tokens: some 3.5 s a prompt, mostly waiting), each process or worker keeping the same
number of prompts in flight, so capacity should grow with the workers. Everything here is
simulated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def session_rss(sid: int) -> int:
    """Bytes resident in every process of session ``sid``."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid:  # the session id, after state, ppid, pgrp
                total += int(Path(f"/proc/{d}/statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
    return total


def batch(args: list[str]) -> dict[str, Any]:
    """One ``stairflow batch ... --json`` in a new session: its summary, wall time and peak
    memory."""
    cmd = [sys.executable, "-m", "stairflow", "batch", *args, "--json"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    peak = 0
    while proc.poll() is None:
        peak = max(peak, session_rss(proc.pid))
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    summary = json.loads(out)
    summary["wall_s"] = time.perf_counter() - start
    summary["peak_mb"] = peak / 2**20
    return summary


def prompts(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}: why is the sky "
                                                        "blue?"}) + "\n")
    return path


def memory(ns: list[int], max_tokens: int, tmp: Path) -> None:
    cap = ["--max-tokens", str(max_tokens)] if max_tokens else []
    print(f"moa{' --max-tokens ' + str(max_tokens) if max_tokens else ''}, simulated "
          "backend, virtual time, one process (256 runs in flight)\n")
    print("| prompts | wall | prompts/s (wall) | peak memory | results file |")
    print("|---|---|---|---|---|")
    for n in ns:
        p, out = prompts(tmp / f"p{n}.jsonl", n), tmp / f"r{n}.jsonl"
        s = batch(["moa", str(p), "-o", str(out), "--virtual-clock", *cap])
        assert s["done"] == n and s["failed"] == 0, s
        print(f"| {n:,} | {s['wall_s']:.0f} s | {n / s['wall_s']:.0f} | "
              f"{s['peak_mb']:.0f} MB | {out.stat().st_size / 2**20:.0f} MB |", flush=True)


def ray(n: int, workers: list[int], per: int, tmp: Path) -> None:
    p = prompts(tmp / "p.jsonl", n)
    common = ["--sim", "latency_s=0.1", "--max-tokens", "32", "--concurrency", str(per)]
    print(f"moa, simulated backend in real time, {n} prompts, {per} in flight per process or "
          f"worker, {os.cpu_count()} CPUs\n")
    print("| where | prompts/s | batch time | wall (with start-up) | peak memory (all "
          "processes) |")
    print("|---|---|---|---|---|")
    runs = [("one process", [])] + [(f"Ray, {w} worker{'s' * (w > 1)}",
                                     ["--ray", "local", "--workers", str(w)]) for w in workers]
    for label, extra in runs:
        out = tmp / f"r-{label.replace(' ', '').replace(',', '')}.jsonl"
        s = batch(["moa", str(p), "-o", str(out), *common, *extra])
        assert s["done"] == n and s["failed"] == 0, s
        print(f"| {label} | {s['prompts_per_s']:.1f} | {s['elapsed_s']:.1f} s | "
              f"{s['wall_s']:.1f} s | {s['peak_mb']:.0f} MB |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--prompts", type=int, nargs="+", default=[10_000, 100_000])
    m.add_argument("--max-tokens", type=int, default=32)
    r = sub.add_parser("ray")
    r.add_argument("--prompts", type=int, default=1600)
    r.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    r.add_argument("--per", type=int, default=32, help="prompts in flight per process/worker")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if a.what == "memory":
            memory(a.prompts, a.max_tokens, Path(d))
        else:
            ray(a.prompts, a.workers, a.per, Path(d))


if __name__ == "__main__":
    main()
