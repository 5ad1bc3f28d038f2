"""The step policy on real servers with more latency: the local model behind a latency proxy.

    python benchmarks/latency_rates.py [--delays 0,0.2,1.0] [--graphs moa,moa-3layer,debate,chain]
        [--repeat 5] [--max-tokens 128] [--write docs/schedules.md] [--append]

Starts the local model (``stairflow local start``, in a cache directory of its own), puts
``benchmarks/latency_proxy.py`` in front of it adding each delay per request, and runs
``stairflow bench GRAPH --steps declared,auto --json`` through each proxy: both modes
interleaved, ``--repeat`` runs each, the declared step budgets and ``steps = "auto"``. Each
bench measures the endpoint's rates as it goes (stairflow's `Meter`) and sizes auto steps
and skips steps that do not pay from them. The figures go to docs/latency-rates.json (with
the machine and the date); benchmarks/schedules.py puts their table in docs/schedules.md,
which ``--write docs/schedules.md`` regenerates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "latency-rates.json"
STAIRFLOW = [sys.executable, "-m", "stairflow"]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _start_local(env: dict[str, str]) -> str:
    out = subprocess.run([*STAIRFLOW, "local", "start"], env=env, capture_output=True,
                         text=True, check=True).stdout
    found = re.search(r"at (http://\S+)/v1", out)
    if not found:
        raise SystemExit(f"cannot read the local server's URL from: {out!r}")
    return found.group(1)


def _start_proxy(upstream: str, delay: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "latency_proxy.py"),
                             "--upstream", upstream, "--delay", str(delay)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening on URL", once it listens
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the proxy did not start: {line!r}")
    return proc, line.split()[-1]


def _bench(graph: str, url: str, args: argparse.Namespace, env: dict[str, str]) -> Any:
    cmd = [*STAIRFLOW, "bench", graph, "--base-url", f"{url}/v1", "--model", "gemma-3-270m",
           "--continuation", "completions", "--prompt-format", "document",
           "--repeat", str(args.repeat), "--max-tokens", str(args.max_tokens),
           "--steps", "declared,auto", "--json"]
    print("  " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    return json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True,
                                     check=True).stdout)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cache = tempfile.mkdtemp(prefix="stairflow-latency-")
    env = {**os.environ, "XDG_CACHE_HOME": cache}
    local = _start_local(env)
    results: list[dict[str, Any]] = (json.loads(DATA.read_text())["results"]
                                     if args.append and DATA.exists() else [])
    try:
        for delay in args.delays:
            proxy, url = _start_proxy(local, delay)
            try:
                for graph in args.graphs:
                    print(f"{graph}, {delay:g} s added per request", file=sys.stderr, flush=True)
                    results.append({"graph": graph, "delay_s": delay,
                                    "variants": _bench(graph, url, args, env)})
                    DATA.write_text(json.dumps(_record(args, results), indent=1) + "\n")
            finally:
                proxy.terminate()
                proxy.wait()
    finally:
        subprocess.run([*STAIRFLOW, "local", "stop"], env=env, capture_output=True, check=False)
    return _record(args, results)


def _record(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    """What was measured so far, with the machine and the date (written after each bench, so
    an interrupted run keeps what it measured)."""
    return {"machine": f"{_cpu()}, {os.cpu_count()} cores",
            "date": datetime.date.today().isoformat(), "repeat": args.repeat,
            "max_tokens": args.max_tokens, "results": results}


def _median(summary: dict[str, Any], metric: str, mode: str) -> float | None:
    cell = summary["metrics"][metric][mode]
    return None if cell is None else float(cell["median"])


def _latest(summary: dict[str, Any]) -> tuple[str, float, float]:
    """The node that ends latest in staircase mode relative to normal mode: its name, how much
    later (median, s; negative: earlier) and normal mode's run-to-run spread (max - min)."""
    worst = ("-", float("-inf"), 0.0)
    for name, times in summary["nodes"].items():
        stair, normal = times["done_s"]["staircase"], times["done_s"]["normal"]
        if stair is None or normal is None:
            continue
        late = stair["median"] - normal["median"]
        if late > worst[1]:
            worst = (name, late, normal["max"] - normal["min"])
    return worst


def table(data: dict[str, Any]) -> str:
    head = ("| graph | added latency | measured latency, decode | TTFT staircase | TTFT normal "
            "| cut | latest node vs normal (spread) | final-answer tokens/s: declared / auto "
            "| LLM calls: declared / auto |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for row in data["results"]:
        declared, auto = row["variants"]
        rates = (auto.get("rates") or declared.get("rates") or [{}])[0]
        lat, dec = rates.get("latency_s"), rates.get("decode_tps")
        measured = (f"{lat:.2f} s, " if lat is not None else "?, ") + (
            f"{dec:.0f} tok/s" if dec is not None else "?")
        stair = _median(declared, "TTFT", "staircase")
        normal = _median(declared, "TTFT", "normal")
        cut = f"{100 * (1 - stair / normal):.0f}%" if stair and normal else "-"
        node, late, spread = _latest(declared)
        verdict = "within" if late <= spread else "BEYOND"
        tps = [_median(v, "final-answer tokens/s", "staircase") for v in (declared, auto)]
        calls = [_median(v, "LLM calls", "staircase") for v in (declared, auto)]
        lines.append(
            f"| `{row['graph']}` | {row['delay_s']:g} s | {measured} | {stair:.3f} s "
            f"| {normal:.3f} s | {cut} | {node} {late:+.2f} s ({spread:.2f} s, {verdict}) "
            f"| {' / '.join(f'{t:.1f}' if t is not None else '-' for t in tps)} "
            f"| {' / '.join(f'{c:.0f}' if c is not None else '-' for c in calls)} |")
    note = (f"\n\nMeasured on {data['machine']}, {data['date']}: the local model (llama-server "
            f"`-np 4`) behind `benchmarks/latency_proxy.py`, `--repeat {data['repeat']}` "
            f"interleaved runs per mode and variant, `--max-tokens {data['max_tokens']}`, "
            "medians. Regenerate: `python benchmarks/latency_rates.py --write "
            "docs/schedules.md`.")
    return "\n".join(lines) + note


def table_from_record() -> list[str]:
    """The table from docs/latency-rates.json (none if it was never measured)."""
    if not DATA.exists():
        return []
    return table(json.loads(DATA.read_text())).split("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delays", default="0,0.2,1.0")
    ap.add_argument("--graphs", default="moa,moa-3layer,debate,chain")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--write", metavar="FILE", help="then regenerate docs/schedules.md there")
    ap.add_argument("--append", action="store_true",
                    help="add to the rows already in docs/latency-rates.json")
    args = ap.parse_args()
    args.delays = [float(d) for d in args.delays.split(",")]
    args.graphs = args.graphs.split(",")
    data = measure(args)
    DATA.write_text(json.dumps(data, indent=1) + "\n")
    print(table(data))
    if args.write:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import schedules

        Path(args.write).write_text(schedules.document())


if __name__ == "__main__":
    main()
