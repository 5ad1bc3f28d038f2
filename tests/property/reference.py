"""An independent reference computation of a run's timeline, for the exactness property.

No Trio, no tasks: nodes are computed one after the other in topological order, each from
the chunk arrival times of its inputs, with the timing model's formulas written out here.
It shares with the runtime only the pure pieces that have their own tests: the cutter
(trigger rules), prompt building and the simulated tokenizer and text. It covers llm nodes
with any join (incl. straggler timeouts) and token/rule triggers; not fn nodes or interval
triggers, whose same-instant ordering is not defined by the timing model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stairflow import FrozenGraph, InputNode, LLMNode, OutputNode
from stairflow._backends.sim import SimBackend, count_tokens, sim_tokens
from stairflow._prompts import InputText, StepText, build_messages
from stairflow._triggers import Cutter


@dataclass
class Arrival:
    t: float
    text: str
    last: bool


@dataclass
class NodeTimeline:
    tokens: list[tuple[float, str]] = field(default_factory=list)
    end: float = 0.0
    steps: list[float] = field(default_factory=list)  # step start times
    step_ends: list[float] = field(default_factory=list)  # when each step's request ended
    prompt_tokens: list[int] = field(default_factory=list)
    stop: float = math.inf  # cancelled then: every consumer had finished

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.tokens)

    @property
    def first_token(self) -> float | None:
        return self.tokens[0][0] if self.tokens else None


def cut(edge_trigger: object, node: NodeTimeline) -> list[Arrival]:
    cutter = Cutter(edge_trigger)  # type: ignore[arg-type]
    out = []
    for t, tok in node.tokens:
        out += [Arrival(t, p.text, False) for p in cutter.feed(tok, t)]
    last = cutter.close()
    out.append(Arrival(node.end, last.text, True))
    return out


def _step_start(arrivals: dict[str, list[Arrival]], used: dict[str, int], ready: float,
                join: object) -> float:
    from stairflow._joins import Join

    assert isinstance(join, Join)
    times = sorted({ready} | {a.t for name, arr in arrivals.items() for a in arr[used[name]:]
                              if a.t > ready})

    def state(at: float) -> tuple[int, int, float | None]:
        pending = candidates = 0
        earliest = math.inf
        for name, arr in arrivals.items():
            rest = arr[used[name]:]
            ended = any(a.last for a in arr[: used[name]])
            here = [a for a in rest if a.t <= at]
            if not ended:
                candidates += 1
                if here:
                    pending += 1
                    earliest = min(earliest, here[0].t)
        return pending, candidates, None if earliest == math.inf else earliest

    for i, at in enumerate(times):
        pending, candidates, earliest = state(at)
        if candidates == 0 or join.satisfied(pending, candidates):
            return at
        if join.max_wait_s is not None and earliest is not None:
            due = max(ready, earliest) + join.max_wait_s
            nxt = times[i + 1] if i + 1 < len(times) else math.inf
            if due <= nxt:
                return due
    raise AssertionError("the node would wait forever")


def reference(graph: FrozenGraph, query: str) -> dict[str, NodeTimeline]:
    sim = SimBackend.for_graph(graph)
    lines: dict[str, NodeTimeline] = {}
    for name in graph.order:
        node = graph.nodes[name]
        if isinstance(node, InputNode):
            lines[name] = NodeTimeline([(0.0, query)], 0.0)
            continue
        arrivals = {e.src: cut(e.trigger, lines[e.src]) for e in graph.inputs_of(name)}
        if isinstance(node, OutputNode):
            (arr,) = arrivals.values()
            lines[name] = NodeTimeline([(a.t, a.text) for a in arr if a.text], arr[-1].t)
            continue
        assert isinstance(node, LLMNode), "the reference covers llm nodes only"
        lines[name] = _llm(graph, node, arrivals, sim, query)
    # a node still running when its last consumer finishes is cancelled then; that changes
    # nothing its consumers saw, so it can be worked out afterwards, from the output back
    for name in reversed(graph.order):
        consumers = [e.dst for e in graph.outputs_of(name)]
        if consumers and isinstance(graph.nodes[name], LLMNode):
            last = max(min(lines[c].end, lines[c].stop) for c in consumers)
            if last < lines[name].end:
                lines[name].stop = last
    return lines


def _llm(graph: FrozenGraph, node: LLMNode, arrivals: dict[str, list[Arrival]],
         sim: SimBackend, query: str) -> NodeTimeline:
    timing = sim.timing_for(node.name)
    words = sim_tokens(timing.seed, node.name, timing.output_tokens)
    line = NodeTimeline()
    used = dict.fromkeys(arrivals, 0)
    history: list[StepText] = []
    ready, k = 0.0, 0
    while len(line.tokens) < node.max_tokens:
        start = _step_start(arrivals, used, ready, node.join)
        new = {}
        for src, arr in arrivals.items():
            take = [a for a in arr[used[src]:] if a.t <= start]
            if take:
                new[src] = "".join(a.text for a in take)
            used[src] += len(take)
        final = all(any(a.last for a in arr[: used[s]]) for s, arr in arrivals.items())
        inputs = [InputText(s, "".join(a.text for a in arr[: used[s]]),
                            any(a.last for a in arr[: used[s]]), s == graph.input)
                  for s, arr in arrivals.items()]
        history.append(StepText(tuple(new.items()), ""))
        out_so_far = line.text
        messages, prefix = build_messages(node.prompt, node.system, query, inputs, out_so_far,
                                          node.context, history)
        prompt = count_tokens(messages, prefix)
        pos = len(line.tokens)
        left = node.max_tokens - pos
        budget = left if final else min(left, node.step_budget(k))
        n = min(budget, max(0, timing.output_tokens - pos))
        first = start + timing.latency_s + prompt / timing.prefill_tps
        for i in range(n):
            line.tokens.append((first + i / timing.decode_tps, words[pos + i]))
        ready = first + (n - 1) / timing.decode_tps if n else first
        line.steps.append(start)
        line.step_ends.append(ready)
        line.prompt_tokens.append(prompt)
        history[-1] = StepText(history[-1].new, line.text[len(out_so_far):])
        k += 1
        if pos + n >= timing.output_tokens or final:
            break
    line.end = ready
    return line
