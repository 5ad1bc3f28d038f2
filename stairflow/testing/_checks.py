"""The invariants every run must satisfy, as checks a user's own tests can call on a `Report`.

Each check reads the run's trace (and the graph, for triggers and joins) and raises
`InvariantError` naming the invariant, the node or edge, and what was seen; none uses
``assert``, so they hold under ``python -O``. They share nothing with the scheduler but the
public trigger interface (a trigger's own rule is what "conformance" means).

The producer's token stream is rebuilt from the trace (each chunk event lists where its
tokens end), so a trigger can be replayed on exactly what it saw, and on other splits of the
same text.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

from .._graph import FnNode, FrozenGraph, Graph, LLMNode
from .._metrics import Report
from .._trace import Event
from .._triggers import Buffer, Cutter, Trigger

__all__ = [
    "InvariantError",
    "check_causality",
    "check_conservation",
    "check_promptness",
    "check_requests",
    "check_run",
    "check_termination",
    "check_triggers",
]


class InvariantError(AssertionError):
    """A run broke one of stairflow's invariants; the message says which, and where."""

    def __init__(self, invariant: str, where: str, detail: str) -> None:
        super().__init__(f"{invariant}: {where}: {detail}")
        self.invariant = invariant
        self.where = where


def _fail(invariant: str, where: str, detail: str) -> None:
    raise InvariantError(invariant, where, detail)


def graph_of(graph: Graph | FrozenGraph, report: Report) -> FrozenGraph:
    """The graph as it ran: built, in the report's mode."""
    frozen = graph.build() if isinstance(graph, Graph) else graph
    return frozen.with_mode(report.trace.meta.get("mode", frozen.mode))


@dataclass
class _Produced:
    """What a node wrote, as the trace shows it."""

    status: str  # "end", "cancel" (nobody needed the rest), "error" (dropped), "none"
    text: str | None  # its whole output (None when the trace does not say: dropped)


def _produced(report: Report) -> dict[str, _Produced]:
    out: dict[str, _Produced] = {}
    for e in report.trace.events:
        if e.kind == "node_end" and e.node:
            out[e.node] = _Produced("end", e.data["text"])
        elif e.kind == "node_cancel" and e.node:
            out[e.node] = _Produced("cancel", e.data["text"])
        elif e.kind == "node_error" and e.node:
            out[e.node] = _Produced("error", None)
    return out


def _chunks(report: Report) -> dict[tuple[str, str], list[Event]]:
    out: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for e in report.trace.of("chunk"):
        src, dst = e.data["edge"]
        out[(src, dst)].append(e)
    return out


def _label(edge: tuple[str, str]) -> str:
    return f"edge {edge[0]} -> {edge[1]}"


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


# 1. Conservation ----------------------------------------------------------------------------


def check_conservation(report: Report) -> None:
    """Every edge's chunks, joined, equal the producer's whole output: no loss, no
    duplicates, no reordering; chunks are numbered 0, 1, 2... and only the last is marked last.
    A producer cancelled because nobody needed more (or dropped) delivers a prefix."""
    produced = _produced(report)
    chunks = _chunks(report)
    for src, dst, _ in report.trace.meta["edges"]:
        where = _label((src, dst))
        got = [e.data for e in chunks.get((src, dst), [])]
        if [c["index"] for c in got] != list(range(len(got))):
            _fail("conservation", where, f"chunk numbers {[c['index'] for c in got]}")
        if any(c["last"] for c in got[:-1]):
            _fail("conservation", where, "a chunk before the end is marked last")
        joined = "".join(c["text"] for c in got)
        done = produced.get(src, _Produced("none", None))
        if done.status == "end":
            if not (got and got[-1]["last"]):
                _fail("conservation", where, f"{src} ended but the edge got no last chunk")
            if joined != done.text:
                _fail("conservation", where, f"the chunks joined ({_short(joined)}) are not "
                      f"{src}'s output ({_short(done.text or '')})")
        elif done.status == "cancel" and not (done.text or "").startswith(joined):
            _fail("conservation", where, f"the chunks are not a prefix of what {src} wrote")
        elif done.status == "none":
            _fail("conservation", where, f"{src} never ended, failed or was cancelled")


# 2. Trigger conformance ---------------------------------------------------------------------


def _tokens(events: Sequence[Event], rest: str = "") -> list[str] | None:
    """The producer's tokens, rebuilt from one edge's chunks (None for an old trace); text
    after the last token end the trace shows (``rest``: never delivered) is one more token."""
    if any("token_ends" not in e.data for e in events):
        return None
    text = "".join(e.data["text"] for e in events)
    ends, offset = [], 0
    for e in events:
        ends += [offset + end for end in e.data["token_ends"]]
        offset += len(e.data["text"])
    tokens = [text[a:b] for a, b in zip([0, *ends], ends, strict=False)]
    tail = text[ends[-1] if ends else 0 :] + rest
    return [*tokens, tail] if tail else tokens


def recut(trigger: Trigger, tokens: Sequence[str], *, close: bool = True) -> list[str]:
    """The chunks ``trigger`` cuts from ``tokens`` fed one by one (time-based cuts aside)."""
    cutter = Cutter(trigger)
    out = [p.text for tok in tokens for p in cutter.feed(tok, 0.0)]
    return [*out, cutter.close().text] if close else out


def _splits(text: str, tokens: list[str]) -> dict[str, list[str]]:
    """Other ways the same text could have been streamed."""
    pairs = ["".join(tokens[i : i + 2]) for i in range(0, len(tokens), 2)]
    out = {"in one piece": [text], "one character at a time": list(text),
           "two tokens at a time": pairs}
    for seed in range(3 if len(text) > 1 else 0):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, len(text) // 3 + 1)))
        out[f"in random pieces (seed {seed})"] = [
            text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return out


def _has_deadline(trigger: Trigger) -> bool:
    return type(trigger).deadline is not Trigger.deadline


def check_triggers(report: Report, graph: Graph | FrozenGraph) -> None:
    """Every chunk is the one its edge's trigger asks for, and cuts do not depend on how the
    producer's text happened to be split into tokens.

    - Rule triggers (the default for your own): replaying the producer's tokens through the
      trigger gives exactly the chunks delivered, and so does every other split of the same
      text (in one piece, one character at a time, random pieces). A trigger that keeps state
      between calls, or looks only at the newest text, fails here.
    - Token-count triggers (``token_based = True``, like `sf.tokens`): the replay of the real
      tokens gives the chunks delivered, twice in a row; other splits do not apply (a token
      count is defined on tokens, not text).
    - Time-based triggers (with a `deadline`): each chunk holds every token that arrived up
      to its deadline and none after it (cut at the deadline, not before).
    """
    g = graph_of(graph, report)
    produced, chunks = _produced(report), _chunks(report)
    for edge in g.edges:
        key = (edge.src, edge.dst)
        events = chunks.get(key, [])
        done = produced.get(edge.src, _Produced("none", None))
        if _has_deadline(edge.trigger):
            _check_deadlines(key, edge.trigger, events)
        elif events:
            _check_rule(key, edge.trigger, events, done)


def _check_rule(key: tuple[str, str], trigger: Trigger, events: list[Event],
                done: _Produced) -> None:
    where = f"{_label(key)} ({trigger.describe()})"
    got = [e.data["text"] for e in events]
    delivered = "".join(got)
    closed = events[-1].data["last"]
    rest = "" if closed or done.text is None else done.text[len(delivered):]
    tokens = _tokens(events, rest)
    if tokens is None:
        return

    def compare(pieces: list[str], how: str) -> None:
        same = pieces == got if closed else pieces[: len(got)] == got
        if not same:
            i = next((i for i, (a, b) in enumerate(zip(pieces, got, strict=False)) if a != b),
                     min(len(pieces), len(got)))
            seen = _short(got[i]) if i < len(got) else "nothing"
            want = _short(pieces[i]) if i < len(pieces) else "nothing"
            hint = "" if how.startswith("token by token") else (
                "; cuts must not depend on how the text is split into tokens (keep the "
                "trigger stateless and read all of buf.text, or set token_based = True)")
            _fail("trigger conformance", where, f"chunk {i} was {seen}, but the trigger cuts "
                  f"{want} from the same text fed {how}{hint}")

    compare(recut(trigger, tokens, close=closed), "token by token as the run did")
    if trigger.token_based:
        compare(recut(trigger, tokens, close=closed), "token by token, a second time")
        return
    if done.status == "error":
        return  # what a dropped node would have written next is unknown
    text = "".join(tokens)
    for how, pieces in _splits(text, tokens).items():
        compare(recut(trigger, pieces, close=closed), how)


def _check_deadlines(key: tuple[str, str], trigger: Trigger, events: list[Event]) -> None:
    where = f"{_label(key)} ({trigger.describe()})"
    for e, nxt in zip_longest(events, events[1:]):
        d = e.data
        if d["first_token_s"] is None:
            continue
        n = max(1, len(d.get("token_ends", [])))
        buf = Buffer(d["index"], d["text"], list(d.get("token_ends", [len(d["text"])])),
                     [d["first_token_s"]] + [d["last_token_s"]] * (n - 1))
        due = trigger.deadline(buf)
        if due is None:
            continue
        if d["last_token_s"] > due:
            _fail("trigger conformance", where, f"chunk {d['index']} holds a token that "
                  f"arrived at {d['last_token_s']:g} s, after its deadline {due:g} s")
        if nxt is None or trigger.boundary(buf) is not None:
            continue
        if e.t < due:
            _fail("trigger conformance", where, f"chunk {d['index']} was cut at {e.t:g} s, "
                  f"before its deadline {due:g} s")
        first_next = nxt.data["first_token_s"]
        if first_next is not None and first_next <= due:
            _fail("trigger conformance", where, f"chunk {d['index']} left out a token that "
                  f"arrived at {first_next:g} s, by its deadline {due:g} s")


# 3. Causality -------------------------------------------------------------------------------


def _need(policy: str, k: int, candidates: int) -> int:
    """How many inputs with a new chunk a join waits for (written out, not imported)."""
    return {"all": candidates, "any": 1, "quorum": min(k, candidates)}[policy]


def check_causality(report: Report, graph: Graph | FrozenGraph) -> None:
    """No chunk is delivered before its last token was produced; no step consumes a chunk not
    yet delivered, or starts before its join holds (unless a straggler timeout allows it).
    The join rules are written out here, independently of the scheduler's."""
    g = graph_of(graph, report)
    delivered: dict[tuple[str, str], int] = defaultdict(int)
    consumed: dict[tuple[str, str], int] = defaultdict(int)
    ended: set[tuple[str, str]] = set()
    for e in report.trace.events:
        if e.kind == "chunk":
            key = (e.data["edge"][0], e.data["edge"][1])
            last = e.data["last_token_s"]
            if last is not None and e.t < last:
                _fail("causality", _label(key), f"chunk {e.data['index']} delivered at "
                      f"{e.t:g} s, before its last token ({last:g} s)")
            delivered[key] += 1
            if e.data["last"]:
                ended.add(key)
        elif e.kind == "step_start" and e.node is not None:
            _check_step(g, e, delivered, consumed, ended)


def _check_step(g: FrozenGraph, e: Event, delivered: Mapping[tuple[str, str], int],
                consumed: dict[tuple[str, str], int], ended: set[tuple[str, str]]) -> None:
    name = e.node or ""
    node = g.nodes[name]
    if not isinstance(node, LLMNode | FnNode):
        return
    taken: Mapping[str, int] = e.data["consumed"]
    for src, n in taken.items():
        consumed[(src, name)] += n
        if consumed[(src, name)] > delivered[(src, name)]:
            _fail("causality", f"node {name}", f"step {e.data['step']} consumed "
                  f"{consumed[(src, name)]} chunks from {src}, only {delivered[(src, name)]} "
                  "were delivered")
    ins = [x.src for x in g.inputs_of(name)]
    candidates = [s for s in ins if (s, name) not in ended or taken.get(s)]
    pending = sum(1 for s in candidates if taken.get(s))
    join = node.join
    if join.waits or not candidates:
        return  # a straggler timeout may start a step early; nothing left to wait for
    need = max(1, _need(join.policy, join.k, len(candidates)))
    if pending < need:
        _fail("causality", f"node {name}", f"step {e.data['step']} started at {e.t:g} s with "
              f"{pending} of {len(candidates)} inputs ready; join {join.describe()} needs "
              f"{need}")


# Promptness ---------------------------------------------------------------------------------


def check_promptness(report: Report, graph: Graph | FrozenGraph) -> None:
    """Chunks into llm and output nodes (which never hold their producers back) are delivered
    the instant they are complete: a rule or token chunk when the token that completes it
    arrives, a time-based one at its deadline, the last one when the producer ends. (Into
    `fn` nodes, a full buffer may hold a chunk back: backpressure, not lateness.)"""
    g = graph_of(graph, report)
    ends = {e.node: e.t for e in report.trace.events if e.kind in ("node_end",)}
    chunks = _chunks(report)
    for edge in g.edges:
        if isinstance(g.nodes[edge.dst], FnNode):
            continue
        events = chunks.get((edge.src, edge.dst), [])
        where = f"{_label((edge.src, edge.dst))} ({edge.trigger.describe()})"
        for e, nxt in zip_longest(events, events[1:]):
            d = e.data
            if nxt is None:
                if d["last"] and edge.src in ends and e.t != ends[edge.src]:
                    _fail("promptness", where, f"the last chunk came at {e.t:g} s; "
                          f"{edge.src} ended at {ends[edge.src]:g} s")
                continue
            if _has_deadline(edge.trigger):
                due = edge.trigger.deadline(Buffer(d["index"], d["text"], [len(d["text"])],
                                                   [d["first_token_s"]]))
                ok = [due]
            else:  # completed by its own last token, or by the first of the next chunk
                ok = [d["last_token_s"], nxt.data["first_token_s"]]
            if e.t not in ok:
                _fail("promptness", where, f"chunk {d['index']} came at {e.t:g} s; it was "
                      f"complete at {min(t for t in ok if t is not None):g} s")


# 5. Termination -----------------------------------------------------------------------------


def check_termination(report: Report, graph: Graph | FrozenGraph) -> None:
    """The run ended (``run_end``), and every node started and then ended, was cancelled
    because nobody needed more of it, or failed and was dropped."""
    g = graph_of(graph, report)
    events = report.trace.events
    if not events or events[-1].kind != "run_end":
        _fail("termination", f"graph {g.name}", "the trace does not end with run_end "
              f"(last event: {events[-1].kind if events else 'none'})")
    started = {e.node for e in report.trace.of("node_start")}
    done = _produced(report)
    for name in g.order:
        if name not in started:
            _fail("termination", f"node {name}", "never started")
        if name not in done:
            _fail("termination", f"node {name}", "started but never ended")


def check_requests(report: Report, backend: Any = None) -> None:
    """No backend request is left open: every request sent was ended or cancelled, and the
    backend (if it counts them, like `SimBackend.active`) has none in flight."""
    open_: dict[str, int] = defaultdict(int)
    for e in report.trace.events:
        if e.kind == "request_sent" and e.node:
            open_[e.node] += 1
        elif e.kind in ("request_end", "request_cancel") and e.node:
            open_[e.node] -= 1
    for node, n in open_.items():
        if n:
            _fail("no request left open", f"node {node}", f"{n} request(s) sent and never "
                  "ended or cancelled")
    active = getattr(backend, "active", 0)
    if active:
        _fail("no request left open", f"backend {getattr(backend, 'name', backend)!s}",
              f"{active} request(s) still in flight after the run")


def check_run(report: Report, graph: Graph | FrozenGraph, backend: Any = None) -> None:
    """Every check above, on one finished run."""
    check_termination(report, graph)
    check_requests(report, backend)
    check_conservation(report)
    check_triggers(report, graph)
    check_causality(report, graph)
    check_promptness(report, graph)
