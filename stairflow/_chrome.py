"""A run's trace in the Chrome trace-event format, for the Perfetto UI and chrome://tracing.

Theory of operation. `to_chrome` reads a trace as `Trace.to_json` writes it (``meta`` and
``events``, times in seconds) and returns the JSON object format of the Chrome trace-event
format: one process for the run, one thread per node (in the graph's order, named after it),
and on each thread

- a slice (``ph: "X"``, a complete event) for the node's life, from its start to its end,
  failure or cancellation;
- inside it, a slice per step (an llm or fn node's step, from its start to its end: for an
  fn node, until it asks for the next one) and, inside those, a slice per model request
  (sent to its end or cancellation, with its usage);
- an instant (``ph: "i"``) at each first token;
- for each chunk crossing an edge, a flow (``ph: "s"`` on the producer when the chunk was cut,
  ``ph: "f"`` on the consumer when a step took it): the arrows of the staircase.

Times become microseconds (``ts``, ``dur``). Pure: no I/O; the CLI reads and writes files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._crossings import crossings

__all__ = ["to_chrome"]

_PID = 1
_NODE_ENDS = ("node_end", "node_error", "node_cancel")


def _us(t: float) -> float:
    return round(t * 1e6, 3)


def to_chrome(trace: Mapping[str, Any]) -> dict[str, Any]:
    """The Chrome trace-event JSON object of a stairflow trace (see the module docs)."""
    meta = trace["meta"]
    events: Sequence[Mapping[str, Any]] = trace["events"]
    nodes: list[str] = list(meta.get("nodes") or dict.fromkeys(
        e["node"] for e in events if e.get("node") is not None))
    tid = {name: i + 1 for i, name in enumerate(nodes)}
    out: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": _PID, "tid": 0,
         "args": {"name": f"stairflow: {meta.get('graph', '?')} ({meta.get('mode', '?')}, "
                          f"{meta.get('backend', '?')})"}},
    ]
    for name, i in tid.items():
        out.append({"ph": "M", "name": "thread_name", "pid": _PID, "tid": i,
                    "args": {"name": name}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": _PID, "tid": i,
                    "args": {"sort_index": i}})
    end = max((e["t"] for e in events), default=0.0)
    timed: list[dict[str, Any]] = []
    timed += _node_slices(events, tid, end)
    timed += _step_slices(events, tid)
    timed += _request_slices(events, tid, end)
    timed += _instants(events, tid)
    timed += _flows(events, tid, meta.get("output"))
    # a stable order: by time, enclosing slices before what they enclose
    timed.sort(key=lambda e: (e["ts"], -e.get("dur", 0.0)))
    return {"traceEvents": out + timed, "displayTimeUnit": "ms",
            "otherData": {k: v for k, v in meta.items() if k in ("graph", "mode", "backend",
                                                                 "simulated")}}


def _slice(name: str, cat: str, tid: int, start: float, stop: float,
           args: Mapping[str, Any]) -> dict[str, Any]:
    ts = _us(start)
    return {"ph": "X", "name": name, "cat": cat, "pid": _PID, "tid": tid, "ts": ts,
            "dur": max(0.0, round(_us(stop) - ts, 3)), "args": dict(args)}


def _data(e: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if k not in ("t", "kind", "node")}


def _node_slices(events: Sequence[Mapping[str, Any]], tid: Mapping[str, int],
                 end: float) -> list[dict[str, Any]]:
    starts = {e["node"]: e["t"] for e in events if e["kind"] == "node_start"}
    ends = {e["node"]: e for e in events if e["kind"] in _NODE_ENDS}
    out = []
    for name, start in starts.items():
        last = ends.get(name)
        stop = last["t"] if last else end
        args = {"ended": last["kind"] if last else "running"}
        if last:
            args |= {k: v for k, v in _data(last).items() if k != "text"}
        out.append(_slice(name, "node", tid[name], start, stop, args))
    return out


def _step_slices(events: Sequence[Mapping[str, Any]],
                 tid: Mapping[str, int]) -> list[dict[str, Any]]:
    out = []
    open_steps: dict[str, Mapping[str, Any]] = {}

    def close(name: str, t: float, args: Mapping[str, Any]) -> None:
        start = open_steps.pop(name, None)
        if start is not None:
            out.append(_slice(f"step {start.get('step', '?')}", "step", tid[name], start["t"], t,
                              {**_data(start), **args}))

    for e in events:
        name, kind = e["node"], e["kind"]
        if name is None:
            continue
        if kind == "step_start":
            close(name, e["t"], {})
            open_steps[name] = e
        elif kind == "step_end":
            close(name, e["t"], {"tokens": e.get("tokens")})
        elif kind == "step_wait" or kind in _NODE_ENDS:
            close(name, e["t"], {})
    last = max((e["t"] for e in events), default=0.0)
    for name in list(open_steps):
        close(name, last, {})
    return out


def _request_slices(events: Sequence[Mapping[str, Any]], tid: Mapping[str, int],
                    end: float) -> list[dict[str, Any]]:
    out = []
    sent: dict[tuple[str, Any], Mapping[str, Any]] = {}
    for e in events:
        kind = e["kind"]
        if kind == "request_sent":
            sent[(e["node"], e.get("step"))] = e
        elif kind in ("request_end", "request_cancel"):
            start = sent.pop((e["node"], e.get("step")), None)
            if start is not None:
                args = {**_data(start), **_data(e), "cancelled": kind == "request_cancel"}
                out.append(_slice(f"request {e.get('step', '?')}", "request", tid[e["node"]],
                                  start["t"], e["t"], args))
    for (name, _), start in sent.items():  # still open when the trace ends
        out.append(_slice(f"request {start.get('step', '?')}", "request", tid[name],
                          start["t"], end, {**_data(start), "open": True}))
    return out


def _instants(events: Sequence[Mapping[str, Any]],
              tid: Mapping[str, int]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        if e["kind"] == "first_token":
            out.append({"ph": "i", "s": "t", "name": "first token", "cat": "token",
                        "pid": _PID, "tid": tid[e["node"]], "ts": _us(e["t"]),
                        "args": _data(e)})
        elif e["kind"] in ("run_start", "run_end", "run_error", "run_cancel"):
            out.append({"ph": "i", "s": "p", "name": e["kind"].replace("_", " "),
                        "cat": "run", "pid": _PID, "tid": 0, "ts": _us(e["t"]),
                        "args": _data(e)})
    return out


def _flows(events: Sequence[Mapping[str, Any]], tid: Mapping[str, int],
           output: str | None) -> list[dict[str, Any]]:
    """A flow per chunk, from the producer when it was cut to the consumer's step that took
    it (edges into the output node: when it arrived; a chunk no step took has no flow)."""
    out: list[dict[str, Any]] = []
    taken, _ = crossings(events, output)
    for fid, (chunk, dst, t) in enumerate(taken, 1):
        src = chunk["edge"][0]
        args = {"edge": f"{src} -> {dst}", "index": chunk.get("index"),
                "tokens": chunk.get("tokens"), "last": chunk.get("last")}
        out.append({"ph": "s", "id": fid, "name": "chunk", "cat": "chunk", "pid": _PID,
                    "tid": tid[src], "ts": _us(chunk["t"]), "args": args})
        out.append({"ph": "f", "bp": "e", "id": fid, "name": "chunk", "cat": "chunk",
                    "pid": _PID, "tid": tid[dst], "ts": _us(t), "args": args})
    return out
