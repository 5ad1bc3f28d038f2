"""Metrics, all derived from a run's trace."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ._trace import Event, Trace

__all__ = ["NodeReport", "Read", "Report"]


@dataclass(frozen=True)
class Read:
    """How much of one input a node had taken in its steps when it ended: ``tokens`` of the
    ``sent`` tokens that input sent it, and whether that was the input's whole answer."""

    tokens: int
    sent: int
    whole: bool


@dataclass(frozen=True)
class NodeReport:
    ttft_s: float | None  # first token this node produced
    done_s: float | None  # when it ended
    tokens: int
    calls: int
    prompt_tokens: int
    cached_tokens: int
    recomputed_tokens: int  # prompt tokens the model read (not served from its cache)
    completion_tokens: int  # tokens its requests wrote (what an endpoint bills as output)
    error: str | None = None  # why it failed (a run that went on had dropped it)
    # per input, what its steps had read (llm and fn nodes; staircase mode may end a node
    # before it has read its inputs whole: the trade-off it makes for time)
    read: Mapping[str, Read] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """What a run did (times in seconds from the run's start): TTFT of the output, total time,
    output tokens and ``tokens_per_s = output_tokens / total_s`` (the end-to-end rate a user
    sees), prompt tokens (cached ones too), those of them the model recomputed (the rest came
    from its prefix cache), the tokens every request wrote (``completion_tokens``: what an
    endpoint bills as output), LLM calls, and a `NodeReport` per node."""

    graph: str
    mode: str
    backend: str
    simulated: bool
    output: str
    ttft_s: float | None
    total_s: float
    output_tokens: int
    tokens_per_s: float
    prompt_tokens: int
    cached_tokens: int
    recomputed_tokens: int
    completion_tokens: int
    llm_calls: int
    nodes: Mapping[str, NodeReport]
    trace: Trace
    # what a real backend measured of each (endpoint, model) by the run's end: base_url,
    # model, latency_s, prefill_tps, decode_tps, requests (see stairflow._backends.meter)
    rates: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_trace(cls, trace: Trace) -> Report:
        meta = trace.meta
        texts = [(t, data["text"]) for t, _, _, data in trace.rows(("output",))]
        first = next((t for t, text in texts if text), None)
        end = trace.of("run_end")
        total = end[-1].t if end else (trace.events[-1].t if trace.events else 0.0)
        last = trace.events[-1] if trace.events else None
        rates = tuple(last.data.get("rates", ())) if last is not None else ()
        out_tokens = sum(data["tokens"] for _, _, _, data in trace.rows(("chunk",))
                         if data["edge"][1] == meta["output"])
        # one pass over the events a node's report reads: asking the trace per node would
        # cost nodes x events
        by: dict[tuple[str, str | None], list[Event]] = defaultdict(list)
        for event in trace.of_kinds(_NODE_KINDS):
            by[(event.kind, event.node)].append(event)
        read = _read(trace)
        nodes = {name: _node(by, name, read.get(name, {})) for name in meta["nodes"]}
        return cls(
            graph=meta["graph"],
            mode=meta["mode"],
            backend=meta["backend"],
            simulated=meta["simulated"],
            output="".join(text for _, text in texts),
            ttft_s=first,
            total_s=total,
            output_tokens=out_tokens,
            tokens_per_s=out_tokens / total if total > 0 else 0.0,
            prompt_tokens=sum(n.prompt_tokens for n in nodes.values()),
            cached_tokens=sum(n.cached_tokens for n in nodes.values()),
            recomputed_tokens=sum(n.recomputed_tokens for n in nodes.values()),
            completion_tokens=sum(n.completion_tokens for n in nodes.values()),
            llm_calls=sum(n.calls for n in nodes.values()),
            nodes=nodes,
            trace=trace,
            rates=rates,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.pop("trace")
        out["nodes"] = {k: asdict(v) for k, v in self.nodes.items()}
        out["rates"] = [dict(r) for r in self.rates]
        return out


_NODE_KINDS = frozenset({"first_token", "node_end", "node_error", "node_cancel", "request_end",
                         "request_cancel", "request_sent"})


def _read(trace: Trace) -> dict[str, dict[str, Read]]:
    """Per node and input: the tokens of the chunks its steps took, of all the input sent."""
    sent: dict[tuple[str, str], list[tuple[int, bool]]] = defaultdict(list)
    taken: dict[tuple[str, str], int] = defaultdict(int)
    for _, kind, node, data in trace.rows(("chunk", "step_start")):
        if kind == "chunk":
            sent[(data["edge"][0], data["edge"][1])].append((data["tokens"], data["last"]))
        elif node is not None:
            for src, n in data["consumed"].items():
                taken[(src, node)] += n
    out: dict[str, dict[str, Read]] = defaultdict(dict)
    for (src, dst), n in taken.items():
        chunks = sent.get((src, dst), [])
        took = chunks[:n]
        out[dst][src] = Read(sum(t for t, _ in took), sum(t for t, _ in chunks),
                             any(last for _, last in took))
    return out


def _node(by: Mapping[tuple[str, str | None], list[Event]], name: str,
          read: Mapping[str, Read]) -> NodeReport:
    def of(kind: str) -> list[Event]:
        return by.get((kind, name), [])

    firsts = of("first_token")
    ends = of("node_end") or of("node_error") or of("node_cancel")
    # a cancelled request was prefilled too; it counts what the backend knew (see nodes.py)
    requests = of("request_end") + of("request_cancel")
    prompt = sum(int(e.data.get("prompt_tokens", 0)) for e in requests)
    cached = sum(int(e.data.get("cached_tokens", 0)) for e in requests)
    return NodeReport(
        ttft_s=firsts[0].t if firsts else None,
        done_s=ends[0].t if ends else None,
        tokens=int(ends[0].data.get("tokens", 0)) if ends else 0,
        calls=len(of("request_sent")),
        prompt_tokens=prompt,
        cached_tokens=cached,
        recomputed_tokens=prompt - cached,
        completion_tokens=sum(int(e.data.get("tokens", 0)) for e in requests),
        error=next((str(e.data["error"]) for e in of("node_error")), None),
        read=read,
    )
