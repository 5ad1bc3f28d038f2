"""Hypothesis strategies: random multi-layer DAGs with random triggers, joins and timings.

Timings are dyadic (latencies of 1/8 s steps, token rates that are powers of two) so that
virtual-time arithmetic is exact and events that coincide in theory coincide in practice.
They are drawn as plain dicts, so a failing example prints as
``{'latency_s': 0.125, 'decode_tps': 8.0, ...}``. Every simulated node writes at least one
token unless ``empty_answers=True``: a node that writes nothing has no first token, and a
run whose output node gets nothing has ``ttft_s`` None (compare with care).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st

from .._graph import FnNode, FrozenGraph, Graph, InputNode, LLMNode
from .._runtime.inbox import Inputs
from .._triggers import Trigger, complete, paragraph, regex, sentence, tokens

__all__ = ["dyadic_timings", "graphs", "moa_graphs", "passthrough", "triggers"]

TRIGGER_KINDS = ("tokens", "schedule", "sentence", "paragraph", "regex", "complete")


def triggers(kinds: Sequence[str] = TRIGGER_KINDS) -> st.SearchStrategy[Trigger]:
    """Random triggers of the given kinds (add "interval" for time-based ones)."""
    from .._triggers import interval

    options: dict[str, st.SearchStrategy[Trigger]] = {
        "tokens": st.integers(1, 12).map(tokens),
        "schedule": st.lists(st.integers(1, 12), min_size=2, max_size=4).map(tokens),
        "sentence": st.just(sentence()),
        "paragraph": st.just(paragraph()),
        "regex": st.sampled_from([r",", r"\band\b", r"[.!?]"]).map(regex),
        "complete": st.just(complete()),
        "interval": st.sampled_from([0.125, 0.25, 1.0]).map(interval),
    }
    return st.one_of([options[k] for k in kinds])


def dyadic_timings(*, empty_answers: bool = False) -> st.SearchStrategy[dict[str, float]]:
    """Per-node simulated timing with exact binary fractions, as a ``sim`` dict. With
    ``empty_answers=True``, ``output_tokens`` can be 0 (the node writes nothing)."""
    return st.fixed_dictionaries({
        "latency_s": st.integers(0, 4).map(lambda n: n / 8),
        "decode_tps": st.sampled_from([4.0, 8.0, 16.0, 32.0, 64.0]),
        "prefill_tps": st.sampled_from([2.0**e for e in range(5, 13)]),
        "output_tokens": st.integers(0 if empty_answers else 1, 40),
        "seed": st.integers(0, 3),
    })


JOIN_KINDS = ("all", "any", "quorum")


def _join(n_inputs: int, with_wait: bool, kinds: Sequence[str]) -> st.SearchStrategy[Any]:
    """A join in its graph-file form; with ``with_wait``, maybe a straggler timeout and/or a
    straggler factor (the latter for ``all`` and quorum joins)."""
    none: st.SearchStrategy[dict[str, float]] = st.just({})
    waits = st.one_of(none, st.sampled_from([0.25, 0.5, 2.0]).map(
        lambda w: {"max_wait_s": w})) if with_wait else none
    lags = st.one_of(none, st.sampled_from([0.0, 1.0, 2.0]).map(
        lambda f: {"straggler": f})) if with_wait else none
    extra = st.tuples(waits, lags).map(lambda wl: {**wl[0], **wl[1]})
    options = []
    if "all" in kinds:
        options.append(extra.map(lambda e: {"policy": "all", **e} if e else "all"))
    if "any" in kinds:
        options.append(waits.map(lambda e: {"policy": "any", **e} if e else "any"))
    if "quorum" in kinds:
        options.append(st.integers(1, n_inputs).flatmap(
            lambda k: extra.map(lambda e: {"quorum": k, **e})))
    if not options:
        raise ValueError(f"joins={tuple(kinds)!r}: use some of {', '.join(JOIN_KINDS)}")
    return st.one_of(options)


def _show_steps(node: LLMNode) -> str:
    if node.steps == "auto":
        return f"auto step_scale_s={node.step_scale_s}"
    return str(list(node.steps))


@dataclass(frozen=True, repr=False)
class DrawnGraph(FrozenGraph):
    """A drawn graph that prints as what it is (nodes, settings, edges and triggers), so a
    failing example can be read and rebuilt."""

    def __repr__(self) -> str:
        lines = [f"graph {self.name!r} ({self.mode}, sim={dict(self.sim)}):"]
        for name in self.order:
            node = self.nodes[name]
            if isinstance(node, LLMNode):
                lines.append(
                    f"  {name}: llm join={node.join.describe()} max_tokens={node.max_tokens} "
                    f"steps={_show_steps(node)} prompt={node.prompt!r} context={node.context!r} "
                    f"sim={dict(node.sim)}")
            elif isinstance(node, FnNode):
                lines.append(f"  {name}: fn {node.fn.__name__} join={node.join.describe()}")
            else:
                lines.append(f"  {name}: {'input' if isinstance(node, InputNode) else 'output'}")
        lines += [f"  {e.src} -> {e.dst}: {e.trigger.describe()}" for e in self.edges]
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # Hypothesis' printer asks for this
        p.text(repr(self))


def _drawn(g: Graph) -> DrawnGraph:
    frozen = g.build()
    return DrawnGraph(**{f: getattr(frozen, f) for f in frozen.__dataclass_fields__})


async def passthrough(inputs: Inputs) -> AsyncIterator[str]:
    """An fn node that forwards what arrives, input by input, step by step."""
    async for step in inputs:
        for name in inputs.names:
            if step.new.get(name):
                yield step.new[name]


async def concat_at_end(inputs: Inputs) -> AsyncIterator[str]:
    """An fn node whose output does not depend on timing: all inputs, once they end."""
    step = await inputs.collect()
    for name in inputs.names:
        if step.text.get(name):
            yield step.text[name]


@st.composite
def graphs(
    draw: st.DrawFn,
    *,
    max_layers: int = 4,
    max_width: int = 3,
    trigger_kinds: Sequence[str] = TRIGGER_KINDS,
    fn_nodes: bool = False,
    fn: Any = passthrough,
    max_wait: bool = True,
    empty_answers: bool = False,
    joins: Sequence[str] = JOIN_KINDS,
) -> FrozenGraph:
    """A random DAG: an input, layers of nodes each reading the previous layer (and maybe
    earlier ones), one last node feeding the output. Every node leads to the output.
    ``fn_nodes=True`` mixes in fn nodes running ``fn``; ``joins`` picks the join kinds drawn
    and ``max_wait=False`` leaves out straggler timeouts and factors; see the module docs for
    ``empty_answers``."""
    g = Graph("random", sim={"latency_s": 0.125})
    g.input("q")
    layers: list[list[str]] = [["q"]]
    n_layers = draw(st.integers(1, max_layers))
    for li in range(n_layers):
        width = 1 if li == n_layers - 1 else draw(st.integers(1, max_width))
        layer = []
        for j in range(width):
            name = f"n{li}_{j}"
            earlier = [n for lay in layers for n in lay]
            srcs = {draw(st.sampled_from(layers[-1]))}
            srcs |= set(draw(st.lists(st.sampled_from(earlier), max_size=2)))
            is_fn = fn_nodes and li > 0 and draw(st.booleans())
            join = draw(_join(len(srcs), max_wait, joins))
            if is_fn:
                g.fn(name, fn, join=join)
            else:
                steps, scale = draw(_steps())
                g.llm(name, join=join, sim=draw(dyadic_timings(empty_answers=empty_answers)),
                      max_tokens=draw(st.integers(1, 48)), steps=steps, step_scale_s=scale,
                      prompt=draw(st.sampled_from([None, "moa-aggregate", "moa-aggregate-user"])),
                      context=draw(st.sampled_from(["rebuild", "append"])))
            for s in sorted(srcs):
                g.connect(s, name, draw(triggers(trigger_kinds)))
            layer.append(name)
        layers.append(layer)
    last = layers[-1][0]
    # every node must lead to the output: give dead ends an edge to a node of a later layer
    fed = {s for s, _, _ in g._edges}
    for li, layer in enumerate(layers[1:-1], start=1):
        for name in layer:
            if name not in fed:
                later = [n for lay in layers[li + 1 :] for n in lay]
                g.connect(name, draw(st.sampled_from(later)), draw(triggers(trigger_kinds)))
                fed.add(name)
    g.output("out")
    g.connect(last, "out", draw(st.sampled_from([None, tokens(1), tokens(4), sentence()])))
    return _drawn(g)


def _steps() -> st.SearchStrategy[tuple[list[int] | Literal["auto"], float]]:
    """Step budgets and scale: a fixed schedule, or "auto" with a scale giving budgets from
    one token to more than a node writes."""
    fixed = st.tuples(st.lists(st.integers(1, 16), min_size=1, max_size=3), st.just(16.0))
    auto = st.tuples(st.just("auto"), st.sampled_from([1 / 64, 1 / 8, 1.0, 16.0]))
    return st.one_of(fixed, auto)


@st.composite
def moa_graphs(
    draw: st.DrawFn, *, max_width: int = 4, join: Any = "all", empty_answers: bool = False
) -> FrozenGraph:
    """Mixture-of-Agents shapes: N proposers reading the input, one aggregator with the given
    join, random triggers, timings and step schedules."""
    timings = dyadic_timings(empty_answers=empty_answers)
    g = Graph("moa-random")
    g.input("q")
    props = [f"p{i}" for i in range(draw(st.integers(1, max_width)))]
    for p in props:
        g.llm(p, sim=draw(timings), max_tokens=draw(st.integers(1, 48)))
    steps, scale = draw(_steps())
    g.llm("agg", sim=draw(timings), join=join, prompt="moa-aggregate", steps=steps,
          step_scale_s=scale)
    g.connect("q", props)
    for p in props:
        g.connect(p, "agg", draw(triggers(TRIGGER_KINDS)))
    g.output("out")
    g.connect("agg", "out")
    return _drawn(g)
