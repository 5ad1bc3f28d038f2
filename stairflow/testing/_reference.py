"""The exact-timeline reference: what the simulated timing model says each node does, and a
check that a run did exactly that.

Theory of operation. No Trio, no tasks, nothing from the runtime, the inbox or the emitter:
nodes are worked out one after the other in topological order, each from the chunk arrival
times of its inputs, with the timing model's formulas written out here (a request's first
token comes ``latency_s + (prompt_tokens - cached_tokens) / prefill_tps`` after it is sent,
token ``k`` then ``k / decode_tps`` later, where ``cached_tokens`` is what a slot cache holds
of the prompt: its common prefix with what the node's last request processed; a step starts
when its join holds, or its straggler timeout runs out, and the step policy lets it: an early
step that pays, the final one, or a node's first step once normal mode's would start, worked
out from its inputs' ends; a step in flight when the inputs end is cut, unless it is writing
and finishing is no later, or it is a first request on part of the inputs, which keeps its
first token). It shares with the runtime only pure pieces that have their own tests: the
trigger rules (`Cutter`), prompt building, the step policy's arithmetic
(`stairflow._core.policy`), and the simulated tokenizer and text.

Where it applies: graphs of input, llm and output nodes, with token-count or rule triggers
(any join, straggler timeouts included), run on the simulated backend in virtual time, with no
prefix cache or a slot per node (``cache = "slot"``). Out: fn nodes and time-based triggers
(``sf.interval``, any trigger with a ``deadline``), since the timing model does not say how
user code paces itself, nor how a deadline falling on the same instant as a token is ordered;
and a shared prefix cache, since what a node reuses then depends on every other node's
requests. `check_timeline` says so instead of passing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .._backends.prefix import common_prefix, sequence
from .._backends.sim import SimBackend, SimTiming, count_tokens, sim_tokens
from .._core.policy import Layout, Rates, early_step_pays, keep_writing, overheads
from .._errors import ConfigError
from .._graph import FnNode, FrozenGraph, Graph, InputNode, LLMNode, Mode, OutputNode
from .._joins import Join
from .._metrics import Report
from .._prompts import InputText, StepText, build_messages
from .._triggers import Cutter, Trigger
from ._checks import InvariantError, graph_of

__all__ = ["NodeTimeline", "check_timeline", "expected_timeline", "timeline_applies"]


@dataclass(frozen=True)
class NodeTimeline:
    """What the timing model says one node does in a run (seconds from the run's start).

    A node still running when its last consumer has finished is cancelled then (nobody needs
    the rest): ``cancelled`` is True, ``end_s`` is that instant, and only the steps started
    before it (and their prompts) are listed.
    """

    node: str
    step_starts: tuple[float, ...]  # when each step began (llm nodes; empty for the others)
    prompt_tokens: tuple[int, ...]  # each step's prompt, as the simulated tokenizer counts it
    first_token_s: float | None  # its first token; None: it wrote nothing (in time)
    end_s: float  # when it ended, or was cancelled
    cancelled: bool
    text: str  # what it wrote (for a cancelled node, up to end_s)
    cached_tokens: tuple[int, ...] = ()  # of each step's prompt, served from the slot cache


# the computation ------------------------------------------------------------------------------


@dataclass
class _Arrival:
    t: float
    text: str
    last: bool


@dataclass
class _Line:
    tokens: list[tuple[float, str]] = field(default_factory=list)
    end: float = 0.0
    steps: list[float] = field(default_factory=list)  # step start times
    prompt_tokens: list[int] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)
    stop: float = math.inf  # cancelled then: every consumer had finished

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.tokens)


def _cut(trigger: Trigger, line: _Line) -> list[_Arrival]:
    cutter = Cutter(trigger)
    out = []
    for t, tok in line.tokens:
        out += [_Arrival(t, p.text, False) for p in cutter.feed(tok, t)]
    out.append(_Arrival(line.end, cutter.close().text, True))
    return out


def _step_start(node: str, arrivals: dict[str, list[_Arrival]], used: dict[str, int],
                ready: float, join: Join, takes: Callable[[float], bool],
                stepped: float = 0.0, owed: float = math.inf) -> float:
    """The first instant at or after ``ready`` when the join holds (or its wait runs out) and
    the step is worth taking (``takes``: the no-regret policy, or the final step). ``owed``:
    an instant ``takes`` may change its mind at without an arrival (normal mode's first
    step)."""
    times = sorted({ready} | {a.t for name, arr in arrivals.items() for a in arr[used[name]:]
                              if a.t > ready} | ({owed} if ready < owed < math.inf else set()))

    def state(at: float) -> tuple[int, int, float | None]:
        pending = candidates = 0
        earliest = math.inf
        for name, arr in arrivals.items():
            ended = any(a.last for a in arr[: used[name]])
            here = [a for a in arr[used[name]:] if a.t <= at]
            if not ended:
                candidates += 1
                if here:
                    pending += 1
                    earliest = min(earliest, here[0].t)
        return pending, candidates, None if earliest == math.inf else earliest

    waited_out = False  # the straggler timeout has passed: any arrival may start the step
    for i, at in enumerate(times):
        pending, candidates, earliest = state(at)
        if candidates == 0 or join.satisfied(pending, candidates) or waited_out:
            if takes(at):
                return at
            continue
        if join.waits and earliest is not None:
            due = _due(join, ready, earliest, stepped)
            if due <= (times[i + 1] if i + 1 < len(times) else math.inf):
                if takes(due):
                    return due
                waited_out = True
    raise InvariantError("exactness", f"node {node}", "the timing model says it waits forever "
                         f"for its inputs (join {join.describe()})")


def _due(join: Join, ready: float, earliest: float, stepped: float) -> float:
    """When a straggler timeout or factor lets a node ready at ``ready``, whose oldest
    pending chunk came at ``earliest`` and whose previous step started at ``stepped``, go on
    (written out here from the join's docs)."""
    due = [max(ready, earliest) + join.max_wait_s] if join.max_wait_s is not None else []
    if join.straggler is not None:
        due.append(max(ready, earliest + join.straggler * (earliest - stepped)))
    return min(due)


def _normal_first(join: Join, ends: list[float]) -> float:
    """When normal mode's first step starts: there each input arrives whole at its end, so the
    join counts ended inputs, and a straggler timeout or factor counts from the first end
    (written out here from the join's docs)."""
    ordered = sorted(ends)
    need = {"all": len(ends), "any": 1, "quorum": min(join.k, len(ends))}[join.policy]
    due = [ordered[need - 1]]
    if join.waits:
        due.append(_due(join, 0.0, ordered[0], 0.0))
    return min(due)


def _on_part(join: Join, inputs: int) -> bool:
    """Whether the join may take a first step before every input has ended (written out)."""
    return inputs > 1 and (join.max_wait_s is not None or join.straggler is not None
                           or join.policy == "any" or (join.policy == "quorum"
                                                       and join.k < inputs))


def _llm(graph: FrozenGraph, node: LLMNode, arrivals: dict[str, list[_Arrival]],
         timing: SimTiming, query: str, rates: Rates) -> _Line:
    # the answer the model wants to write, as far as max_tokens lets it go
    words = sim_tokens(timing.seed, node.name, timing.output_tokens, 0, node.max_tokens)
    layout = Layout(node.prompt, node.system, query, node.context, graph.input)
    all_ended = max(arr[-1].t for arr in arrivals.values())
    # the first step is owed when normal mode's would start, whether it pays or not; a first
    # request on part of the inputs is not cut before its first token
    owed = _normal_first(node.join, [arr[-1].t for arr in arrivals.values()])
    on_part = _on_part(node.join, len(arrivals))
    line = _Line()
    used = dict.fromkeys(arrivals, 0)
    history: list[StepText] = []  # steps that wrote something
    carry: dict[str, str] = {}  # input of a step cut before it wrote anything
    slot: tuple[str, ...] = ()  # with a slot cache: what the node's last request processed
    ready, k = 0.0, 0

    def upto(at: float) -> tuple[dict[str, str], dict[str, str], frozenset[str]]:
        texts, pending, ended = {}, dict(carry), set()
        for src, arr in arrivals.items():
            got = [a for a in arr if a.t <= at]
            texts[src] = "".join(a.text for a in got)
            new = "".join(a.text for a in got[used[src]:])
            if new or len(got) > used[src]:
                pending[src] = pending.get(src, "") + new
            if got and got[-1].last:
                ended.add(src)
        return texts, pending, frozenset(ended)

    def takes(at: float) -> bool:  # the same policy as the runtime's, written on its state
        texts, pending, ended = upto(at)
        if len(ended) == len(arrivals) or (k == 0 and owed <= at):
            return True
        skipped, taken = overheads(rates, layout, texts=texts, pending=pending, ended=ended,
                                   history=history, output=line.text)
        prompt = 0
        if node.steps == "auto":
            inputs = [InputText(s, t, s in ended, s == graph.input) for s, t in texts.items()]
            prompt = count_tokens(*build_messages(
                node.prompt, node.system, query, inputs, line.text, node.context,
                [*history, StepText(tuple(pending.items()), "")]))
        budget = min(node.max_tokens - len(line.tokens), node.step_budget(k, prompt, rates))
        return early_step_pays(rates, written=len(line.tokens), budget=budget,
                               skipped=skipped, taken=taken)

    while len(line.tokens) < node.max_tokens:
        start = _step_start(node.name, arrivals, used, ready, node.join, takes,
                            line.steps[-1] if line.steps else 0.0, owed if k == 0 else math.inf)
        new = dict(carry)
        for src, arr in arrivals.items():
            take = [a for a in arr[used[src]:] if a.t <= start]
            if take:
                new[src] = new.get(src, "") + "".join(a.text for a in take)
            used[src] += len(take)
        final = all(any(a.last for a in arr[: used[s]]) for s, arr in arrivals.items())
        inputs = [InputText(s, "".join(a.text for a in arr[: used[s]]),
                            any(a.last for a in arr[: used[s]]), s == graph.input)
                  for s, arr in arrivals.items()]
        so_far = line.text
        messages, prefix = build_messages(node.prompt, node.system, query, inputs, so_far,
                                          node.context, [*history, StepText(tuple(new.items()),
                                                                            "")])
        prompt = count_tokens(messages, prefix)
        seq = sequence(messages, prefix)
        cached = common_prefix(seq, slot, prompt - 1) if timing.cache == "slot" else 0
        pos = len(line.tokens)
        left = node.max_tokens - pos
        budget = left if final else min(left, node.step_budget(k, prompt, rates))
        n = min(budget, max(0, timing.output_tokens - pos))
        first = start + timing.latency_s + (prompt - cached) / timing.prefill_tps
        times = [first + i / timing.decode_tps for i in range(n)]
        end = times[-1] if n else first
        # every input ends while the step is in flight: it is cut and the final step starts
        # then, unless it is writing already and finishing it is no later (keep_writing)
        cut = not final and end > all_ended
        at, done = all_ended, [t for t in times if t <= all_ended]
        if cut and not done and k == 0 and on_part:  # the decision waits for a first token
            at, done = (times[0], times[:1]) if times else (end, [])
            cut = end > at
        if cut:
            if not done or not keep_writing(rates, left=budget - len(done),
                                            since_last=at - done[-1]):
                times, end = done, at
            else:
                cut = False
        line.tokens += [(t, words[pos + i]) for i, t in enumerate(times)]
        if end >= first:  # the slot holds the prompt and what the step wrote
            slot = seq + tuple("".join(words[pos:pos + len(times)]).split())
        else:  # cut while reading its prompt: as far as the reading got
            read = cached + max(0, math.floor((end - (start + timing.latency_s))
                                              * timing.prefill_tps))
            slot = seq[:min(read, prompt)]
        ready = end
        line.steps.append(start)
        line.prompt_tokens.append(prompt)
        line.cached_tokens.append(cached)
        wrote = line.text[len(so_far):]
        if wrote:
            history.append(StepText(tuple(new.items()), wrote))
            carry = {}
        else:
            carry = new
        k += 1
        if final or (not cut and pos + n >= timing.output_tokens):
            break
    line.end = ready
    return line


def _sim_for(graph: FrozenGraph, backend: SimBackend | None) -> SimBackend:
    # a fresh copy: what-ifs given to the run's backend count, and nothing is attached twice
    if backend is None:
        return SimBackend.for_graph(graph)
    return SimBackend(backend.timing, backend.nodes, sim=backend.sim).attach(graph)


def _lines(graph: FrozenGraph, query: str, sim: SimBackend) -> dict[str, _Line]:
    lines: dict[str, _Line] = {}
    for name in graph.order:
        node = graph.nodes[name]
        if isinstance(node, InputNode):
            lines[name] = _Line([(0.0, query)], 0.0)
            continue
        arrivals = {e.src: _cut(e.trigger, lines[e.src]) for e in graph.inputs_of(name)}
        if isinstance(node, OutputNode):
            arr = next(iter(arrivals.values()))
            lines[name] = _Line([(a.t, a.text) for a in arr if a.text], arr[-1].t)
        elif isinstance(node, LLMNode):
            lines[name] = _llm(graph, node, arrivals, sim.timing_for(name), query,
                               sim.rates(name))
    # a node still running when its last consumer finishes is cancelled then; that changes
    # nothing its consumers saw, so it is worked out afterwards, from the output back
    for name in reversed(graph.order):
        consumers = [e.dst for e in graph.outputs_of(name)]
        if consumers and isinstance(graph.nodes[name], LLMNode):
            last = max(min(lines[c].end, lines[c].stop) for c in consumers)
            if last < lines[name].end:
                lines[name].stop = last
    return lines


def _public(name: str, line: _Line) -> NodeTimeline:
    stop = line.stop
    # a token due at the very instant of the cancellation still counts, as in the runtime
    tokens = [(t, s) for t, s in line.tokens if t <= stop]
    sent = [(t, p) for t, p in zip(line.steps, line.prompt_tokens, strict=True) if t < stop]
    cached = line.cached_tokens[:len(sent)]
    return NodeTimeline(
        node=name,
        step_starts=tuple(t for t, _ in sent),
        prompt_tokens=tuple(p for _, p in sent),
        first_token_s=tokens[0][0] if tokens else None,
        end_s=min(line.end, stop),
        cancelled=stop < line.end,
        text="".join(s for _, s in tokens),
        cached_tokens=tuple(cached),
    )


def _why_not(graph: FrozenGraph) -> str | None:
    """Why the reference does not cover ``graph`` (None: it does)."""
    for name in graph.order:
        if isinstance(graph.nodes[name], FnNode):
            return (f"node '{name}' is an fn node, and the timing model does not say how "
                    "user code paces itself")
    for e in graph.edges:
        if type(e.trigger).deadline is not Trigger.deadline:
            return (f"edge {e.src} -> {e.dst} ({e.trigger.describe()}) cuts on a deadline, "
                    "and the timing model does not order a deadline and a token due at the "
                    "same instant")
    return None


def timeline_applies(graph: Graph | FrozenGraph) -> bool:
    """Whether `expected_timeline` covers ``graph``: no fn nodes, no deadline triggers (the
    run must also be on the simulated backend, in virtual time; `check_timeline` checks)."""
    return _why_not(graph.build() if isinstance(graph, Graph) else graph) is None


def _not_applicable(graph: FrozenGraph, why: str) -> ConfigError:
    return ConfigError(f"the exact-timeline reference does not apply to graph '{graph.name}': "
                       f"{why}; check it with check_run instead")


def expected_timeline(
    graph: Graph | FrozenGraph,
    message: str,
    *,
    mode: Mode = "staircase",
    backend: SimBackend | None = None,
) -> dict[str, NodeTimeline]:
    """Each node's timeline in a run of ``graph`` on ``message`` (in ``mode``), worked out
    from the simulated backend's timing model alone (see the module docs): the graph's
    ``[sim]`` settings, or those of ``backend`` if given (a `SimBackend` with what-ifs).
    Raises `ConfigError` for a graph it does not cover (fn nodes, deadline triggers)."""
    frozen = (graph.build() if isinstance(graph, Graph) else graph).with_mode(mode)
    why = _why_not(frozen)
    if why:
        raise _not_applicable(frozen, why)
    sim = _sim_for(frozen, backend)
    shared = next((n.name for n in frozen.llm_nodes() if sim.timing_for(n.name).cache == "shared"),
                  None)
    if shared is not None:
        raise _not_applicable(frozen, f"node '{shared}' has a shared prefix cache (what it "
                              "reuses depends on every other node's requests, which the "
                              "reference works out one node at a time); use cache = \"slot\" "
                              "or \"none\"")
    lines = _lines(frozen, message, sim)
    return {name: _public(name, lines[name]) for name in frozen.order}


# the check -----------------------------------------------------------------------------------


def _close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (
        a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9))


def _s(t: float | None) -> str:
    return "none" if t is None else f"{t:.9g} s"


def _fail(node: str, detail: str) -> NoReturn:
    raise InvariantError("exactness", f"node {node}", detail)


def _message_of(report: Report, graph: FrozenGraph) -> str:
    ends = report.trace.of("node_end", graph.input)
    if not ends:
        _fail(graph.input, "the trace does not show the message (no node_end); pass message=")
    return str(ends[0].data["text"])


def _run_why_not(report: Report, backend: object) -> str | None:
    if backend is not None and not isinstance(backend, SimBackend):
        return f"backend {type(backend).__name__} is not a SimBackend"
    if not report.simulated:
        return (f"the run was on backend '{report.backend}', not the simulated one, so its "
                "times come from no timing model")
    events = report.trace.events
    failed = [e.node for e in events if e.kind == "node_error"]
    if failed:
        return f"node '{failed[0]}' failed in this run (the timing model has no failures)"
    if not events or events[-1].kind != "run_end":
        last = events[-1].kind if events else "no event"
        return f"the run did not finish (its trace ends with {last})"
    return None


_Issues = list[tuple[float, str]]  # (when, what differs): the earliest is reported


def _earliest(*times: float | None) -> float:
    return min((t for t in times if t is not None), default=math.inf)


def _steps(name: str, want: NodeTimeline, report: Report, issues: _Issues) -> None:
    starts = [e.t for e in report.trace.of("step_start", name)
              if not want.cancelled or e.t < want.end_s]
    for i, (got, t) in enumerate(zip(starts, want.step_starts, strict=False)):
        if not _close(got, t):
            issues.append((min(got, t), f"step {i} started at {_s(got)}; the timing model "
                           f"says {_s(t)}"))
    n, m = len(starts), len(want.step_starts)
    if n > m:
        issues.append((starts[m], f"step {m} started at {_s(starts[m])}; the timing model "
                       f"has {m} step(s) only"))
    elif n < m:
        issues.append((want.step_starts[n], f"{n} step(s) started; the timing model starts "
                       f"step {n} at {_s(want.step_starts[n])}"))
    prompts: dict[int, int] = {}
    cached: dict[int, int] = {}
    for e in report.trace.of("request_end", name) + report.trace.of("request_cancel", name):
        prompts[int(e.data.get("step", -1))] = int(e.data.get("prompt_tokens", 0))
        cached[int(e.data.get("step", -1))] = int(e.data.get("cached_tokens", 0))
    for i, (t, p) in enumerate(zip(want.step_starts, want.prompt_tokens, strict=True)):
        if prompts.get(i) != p:
            issues.append((t, f"step {i}'s prompt was {prompts.get(i, 'never sent, so 0')} "
                           f"tokens; the timing model says {p}"))
    for i, (t, c) in enumerate(zip(want.step_starts, want.cached_tokens, strict=False)):
        if i in prompts and cached.get(i) != c:
            issues.append((t, f"step {i} reused {cached.get(i)} cached prompt tokens; the "
                           f"timing model says {c}"))
    total, want_total = report.nodes[name].prompt_tokens, sum(want.prompt_tokens)
    if total != want_total:
        issues.append((want.end_s, f"its requests counted {total} prompt tokens in all; the "
                       f"timing model says {want_total}"))


def _check_node(name: str, node: object, want: NodeTimeline, report: Report) -> None:
    got = report.nodes[name]
    issues: _Issues = []
    if isinstance(node, LLMNode):
        _steps(name, want, report, issues)
        if not _close(got.ttft_s, want.first_token_s):
            issues.append((_earliest(got.ttft_s, want.first_token_s), f"first token at "
                           f"{_s(got.ttft_s)}; the timing model says {_s(want.first_token_s)}"))
    if isinstance(node, OutputNode):
        if not _close(report.ttft_s, want.first_token_s):
            issues.append((_earliest(report.ttft_s, want.first_token_s), f"first output at "
                           f"{_s(report.ttft_s)}; the timing model says "
                           f"{_s(want.first_token_s)}"))
        if report.output != want.text:
            issues.append((want.end_s, "the output differs from the timing model's at "
                           f"character {_differs_at(report.output, want.text)}"))
    elif not _close(got.done_s, want.end_s):
        how = "cancelled" if want.cancelled else "ended"
        issues.append((_earliest(got.done_s, want.end_s), f"ended at {_s(got.done_s)}; the "
                       f"timing model says it {how} at {_s(want.end_s)}"))
    if issues:
        _fail(name, min(issues, key=lambda issue: issue[0])[1])


def _differs_at(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def check_timeline(
    report: Report,
    graph: Graph | FrozenGraph,
    message: str | None = None,
    *,
    backend: Any = None,
) -> dict[str, NodeTimeline]:
    """The run's measured times equal the timing model's, exactly: for every node, when each
    step started and its prompt size, its first token and when it ended (or was cancelled);
    and the output's first token and text (`expected_timeline`).

    For runs on the simulated backend in virtual time (`run_virtual`); pass the backend the
    run used if it was not the graph's own (a `SimBackend` with what-ifs), and the message
    (default: the one the trace shows). Raises `InvariantError` (``exactness``, the node, what
    differs) on the first difference in topological order, so the node named is where the
    run first left the model. Raises `ConfigError` where the reference does not apply: fn
    nodes, deadline triggers, another backend, a failed or unfinished run. Returns the
    expected timelines."""
    frozen = graph_of(graph, report)
    why = _why_not(frozen) or _run_why_not(report, backend)
    if why:
        raise _not_applicable(frozen, why)
    if set(report.nodes) != set(frozen.order):
        raise ConfigError(f"the report is of graph '{report.graph}' with nodes "
                          f"{sorted(report.nodes)}, not of graph '{frozen.name}'; pass the "
                          "graph that ran")
    query = _message_of(report, frozen) if message is None else message
    want = expected_timeline(frozen, query, mode=frozen.mode, backend=backend)
    for name in frozen.order:
        _check_node(name, frozen.nodes[name], want[name], report)
    return want
