"""The graph model: declare nodes and edges with `Graph`, validate them into a `FrozenGraph`.

`Graph` is a small mutable builder; `Graph.build()` checks everything a run relies on and
returns an immutable `FrozenGraph` holding a frozen `networkx.DiGraph`. Graph files
(`load_graph`) go through the same builder, so both paths give the same graph and the same
errors. Every error names the graph, node or edge and says how to fix it.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

import networkx as nx

from ._errors import GraphError
from ._joins import Join, parse_join
from ._prompts import check_template
from ._triggers import Trigger, complete, parse_trigger, tokens

__all__ = [
    "DEFAULT_TRIGGER",
    "Edge",
    "FnNode",
    "FrozenGraph",
    "Graph",
    "InputNode",
    "LLMNode",
    "Node",
    "OutputNode",
]

# an async generator function taking the node's `Inputs` (typed in the runtime) and yielding text
FnCallable: TypeAlias = Callable[[Any], AsyncGenerator[str, None]]
Mode = Literal["staircase", "normal"]

DEFAULT_TRIGGER = tokens([8, 16, 32, 64])
OUTPUT_TRIGGER = tokens(1)
SIM_KEYS = frozenset({"latency_s", "prefill_tps", "decode_tps", "output_tokens", "seed"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


@dataclass(frozen=True)
class InputNode:
    """The user's message enters the graph here."""

    name: str
    kind: Literal["input"] = "input"


@dataclass(frozen=True)
class OutputNode:
    """What the caller receives: the text of its one input, streamed."""

    name: str
    kind: Literal["output"] = "output"


@dataclass(frozen=True)
class LLMNode:
    """An agent: a model prompted with its inputs, stepping in a staircase."""

    name: str
    model: str | None = None
    system: str = ""
    prompt: str | None = None  # bundled template name or template string; None: automatic
    temperature: float = 0.7
    max_tokens: int = 512
    steps: tuple[int, ...] = (32, 64)  # token budget of each step; the last repeats
    join: Join = field(default_factory=Join)
    on_error: Literal["fail", "drop"] = "fail"
    context: Literal["rebuild", "append"] = "rebuild"
    sim: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # where the model lives (OpenAI-compatible backend); None: the run's default endpoint
    base_url: str | None = None
    api_key_env: str | None = None  # the *name* of the environment variable with the key
    continuation: str | None = None  # "chat-prefix" | "completions" | "chat-restate"
    prompt_format: str | None = None  # for "completions": gemma | chatml | llama3 | document
    kind: Literal["llm"] = "llm"

    def step_budget(self, step: int) -> int:
        return self.steps[min(step, len(self.steps) - 1)]


@dataclass(frozen=True)
class FnNode:
    """User code: an async generator consuming `Inputs` step by step and yielding text."""

    name: str
    fn: FnCallable
    join: Join = field(default_factory=Join)
    on_error: Literal["fail", "drop"] = "fail"
    ref: str = ""  # "module:function" where it came from a graph file
    kind: Literal["fn"] = "fn"


Node: TypeAlias = InputNode | OutputNode | LLMNode | FnNode


@dataclass(frozen=True)
class Edge:
    """``src -> dst``, cut into chunks by ``trigger``."""

    src: str
    dst: str
    trigger: Trigger

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst}"


_LLM_FIELDS = (
    "model", "system", "prompt", "temperature", "max_tokens", "steps", "join", "on_error",
    "context", "sim", "base_url", "api_key_env", "continuation", "prompt_format",
)
# how a backend continues a partial answer, and how "completions" renders a prompt
Continuation = Literal["chat-prefix", "completions", "chat-restate"]
CONTINUATIONS: tuple[Continuation, ...] = ("chat-prefix", "completions", "chat-restate")
PROMPT_FORMATS = ("gemma", "chatml", "llama3", "document")


@dataclass(frozen=True)
class FrozenGraph:
    """A validated, immutable graph, ready to run. Build one with `Graph.build()`."""

    name: str
    description: str
    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    dag: nx.DiGraph
    input: str
    output: str
    order: tuple[str, ...]  # topological
    sim: Mapping[str, float]
    default_input: str | None = None
    edge_buffer: int = 16
    mode: Mode = "staircase"
    declared_edges: tuple[Edge, ...] = ()  # the edges as declared, whatever the mode

    def inputs_of(self, name: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.dst == name)

    def outputs_of(self, name: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.src == name)

    @property
    def layers(self) -> list[list[str]]:
        """Nodes grouped by depth from the input (each layer only reads earlier ones)."""
        return [sorted(layer) for layer in nx.topological_generations(self.dag)]

    def llm_nodes(self) -> list[LLMNode]:
        return [n for n in (self.nodes[k] for k in self.order) if isinstance(n, LLMNode)]

    def capped(self, max_tokens: int) -> FrozenGraph:
        """The same graph with every llm node's answer capped at ``max_tokens``."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise GraphError(f"max_tokens={max_tokens!r}; use a whole number >= 1")
        nodes = {k: replace(n, max_tokens=min(n.max_tokens, max_tokens))
                 if isinstance(n, LLMNode) else n for k, n in self.nodes.items()}
        return replace(self, nodes=MappingProxyType(nodes))

    def with_mode(self, mode: Mode) -> FrozenGraph:
        """The same graph in ``normal`` mode (every edge between nodes waits for the complete
        stream; edges into the output keep streaming) or as declared (``staircase``)."""
        if mode not in ("staircase", "normal"):
            raise GraphError(f"unknown mode {mode!r}; use 'staircase' or 'normal'")
        if mode == self.mode:
            return self
        if mode == "staircase":
            return replace(self, edges=self.declared_edges, mode="staircase")
        edges = tuple(
            e if e.dst == self.output else replace(e, trigger=complete()) for e in self.edges
        )
        return replace(self, edges=edges, mode="normal")


class Graph:
    """Declare a graph in Python, then `build()` it (``sf.run`` builds it for you).

    ``defaults`` apply to every llm node that does not set the field itself; ``sim`` sets the
    simulated backend's timing for the whole graph (see `SimTiming`).
    """

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        defaults: Mapping[str, Any] | None = None,
        sim: Mapping[str, float] | None = None,
        default_input: str | None = None,
        edge_buffer: int = 16,
    ) -> None:
        self.name = name
        self.description = description
        self.defaults = dict(defaults or {})
        self.sim = dict(sim or {})
        self.default_input = default_input
        self.edge_buffer = edge_buffer
        self._nodes: dict[str, dict[str, Any]] = {}
        self._edges: list[tuple[str, str, Any]] = []

    def _add(self, name: str, kind: str, **fields: Any) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise GraphError(
                f"graph '{self.name}': node name {name!r} is not valid; use letters, digits, "
                "'_' and '-', starting with a letter or '_'"
            )
        if name in self._nodes:
            raise GraphError(f"graph '{self.name}': node '{name}' is declared twice; rename one")
        self._nodes[name] = {"kind": kind, **fields}
        return name

    def input(self, name: str = "question") -> str:
        """The node where the user's message enters."""
        return self._add(name, "input")

    def output(self, name: str = "answer") -> str:
        """The node whose text the caller receives."""
        return self._add(name, "output")

    def llm(self, name: str, **fields: Any) -> str:
        """An agent. Fields: model, system, prompt, temperature, max_tokens, steps, join,
        on_error ("fail" | "drop"), context ("rebuild" | "append"), sim."""
        return self._add(name, "llm", **fields)

    def fn(
        self, name: str, fn: FnCallable, *, join: Any = "all", on_error: str = "fail",
        ref: str = "",
    ) -> str:
        """A node running ``fn``, an async generator function taking `Inputs`, yielding text."""
        return self._add(name, "fn", fn=fn, join=join, on_error=on_error, ref=ref)

    def connect(
        self, src: str | Sequence[str], dst: str | Sequence[str], trigger: Any = None
    ) -> None:
        """Edges from every ``src`` to every ``dst``, cut by ``trigger`` (default: tokens
        8, 16, 32, 64 between nodes; every token into the output)."""
        for s in [src] if isinstance(src, str) else src:
            for d in [dst] if isinstance(dst, str) else dst:
                self._edges.append((s, d, trigger))

    # -- validation -------------------------------------------------------------------------

    def build(self) -> FrozenGraph:
        """Validate and freeze. Raises `GraphError` naming the node or edge and the fix."""
        where = f"graph '{self.name}'"
        self._check_defaults(where)
        nodes = {name: self._make_node(name, spec, where) for name, spec in self._nodes.items()}
        dag = nx.DiGraph()
        dag.add_nodes_from(nodes)
        edges = [self._make_edge(s, d, t, nodes, dag, where) for s, d, t in self._edges]
        if not nx.is_directed_acyclic_graph(dag):
            cycle = [u for u, _ in nx.find_cycle(dag)]
            path = " -> ".join([*cycle, cycle[0]])
            raise GraphError(f"{where} has a cycle: {path}; remove one of these edges")
        inp = self._single(nodes, "input", where)
        out = self._single(nodes, "output", where)
        self._check_degrees(nodes, dag, inp, out, where)
        for node in nodes.values():
            self._check_node_inputs(node, dag, where)
        if not isinstance(self.edge_buffer, int) or self.edge_buffer < 1:
            raise GraphError(f"{where}: edge_buffer={self.edge_buffer!r}; use a whole number >= 1")
        return FrozenGraph(
            name=self.name,
            description=self.description,
            nodes=MappingProxyType(nodes),
            edges=tuple(edges),
            declared_edges=tuple(edges),
            dag=nx.freeze(dag),
            input=inp,
            output=out,
            order=tuple(nx.lexicographical_topological_sort(dag)),
            sim=MappingProxyType(_check_sim(self.sim, where)),
            default_input=self.default_input,
            edge_buffer=self.edge_buffer,
        )

    def _check_defaults(self, where: str) -> None:
        unknown = sorted(set(self.defaults) - set(_LLM_FIELDS))
        if unknown:
            raise GraphError(
                f"{where}: unknown default {unknown[0]!r}; defaults may set "
                f"{', '.join(_LLM_FIELDS)}"
            )

    def _make_node(self, name: str, spec: dict[str, Any], where: str) -> Node:
        kind = spec["kind"]
        at = f"{where}, node '{name}'"
        if kind == "input":
            return InputNode(name)
        if kind == "output":
            return OutputNode(name)
        if kind == "fn":
            fn = spec["fn"]
            if not inspect.isasyncgenfunction(fn):
                raise GraphError(
                    f"{at}: fn must be an async generator function "
                    "(async def f(inputs): ... yield text), got {fn!r}"
                )
            return FnNode(name, fn, _parse(parse_join, spec["join"], at),
                          _on_error(spec["on_error"], at), spec.get("ref", ""))
        fields = {k: v for k, v in spec.items() if k != "kind"}
        unknown = sorted(set(fields) - set(_LLM_FIELDS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], _LLM_FIELDS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(_LLM_FIELDS)}"
            raise GraphError(f"{at}: unknown field {unknown[0]!r}; {hint}")
        merged = {**self.defaults, **fields}
        return _make_llm(name, merged, at)

    def _make_edge(
        self, src: str, dst: str, trig: Any, nodes: Mapping[str, Node], dag: nx.DiGraph,
        where: str,
    ) -> Edge:
        at = f"{where}, edge {src} -> {dst}"
        for end in (src, dst):
            if end not in nodes:
                close = difflib.get_close_matches(str(end), list(nodes), n=1, cutoff=0.5)
                hint = (f"did you mean '{close[0]}'?" if close
                        else "declare it as a node or fix the name")
                raise GraphError(f"{at}: unknown node '{end}'; {hint}")
        if dag.has_edge(src, dst):
            raise GraphError(f"{at} is declared twice; keep one")
        if src == dst:
            raise GraphError(f"{at} connects a node to itself; graphs must be acyclic")
        if isinstance(nodes[src], OutputNode):
            raise GraphError(f"{at}: the output node '{src}' cannot feed other nodes")
        if isinstance(nodes[dst], InputNode):
            raise GraphError(f"{at}: the input node '{dst}' cannot have inputs")
        if trig is None:
            trigger = OUTPUT_TRIGGER if isinstance(nodes[dst], OutputNode) else DEFAULT_TRIGGER
        else:
            trigger = _parse(parse_trigger, trig, at)
        dag.add_edge(src, dst)
        return Edge(src, dst, trigger)

    @staticmethod
    def _single(nodes: Mapping[str, Node], kind: str, where: str) -> str:
        found = [n.name for n in nodes.values() if n.kind == kind]
        if len(found) != 1:
            have = f"has {len(found)} ({', '.join(found)})" if found else "has none"
            raise GraphError(f"{where} needs exactly one {kind} node but {have}")
        return found[0]

    @staticmethod
    def _check_degrees(
        nodes: Mapping[str, Node], dag: nx.DiGraph, inp: str, out: str, where: str
    ) -> None:
        for name in nodes:
            if name != inp and dag.in_degree(name) == 0:
                raise GraphError(
                    f"{where}, node '{name}' has no inputs; add an edge into it, e.g. "
                    f"from '{inp}'"
                )
        if dag.in_degree(out) != 1:
            srcs = ", ".join(sorted(dag.predecessors(out)))
            raise GraphError(
                f"{where}, output node '{out}' must have exactly one input, has "
                f"{dag.in_degree(out)} ({srcs}); add a node that combines them"
            )
        reaching = nx.ancestors(dag, out) | {out}
        for name in nodes:
            if name not in reaching:
                raise GraphError(
                    f"{where}, node '{name}' does not lead to the output '{out}'; connect it "
                    "towards the output or remove it"
                )

    @staticmethod
    def _check_node_inputs(node: Node, dag: nx.DiGraph, where: str) -> None:
        if isinstance(node, LLMNode | FnNode) and node.join.policy == "quorum":
            n_in = dag.in_degree(node.name)
            if node.join.k > n_in:
                raise GraphError(
                    f"{where}, node '{node.name}': quorum({node.join.k}) but only {n_in} "
                    f"input(s); use k <= {n_in}"
                )
        if isinstance(node, LLMNode):
            try:
                check_template(node.prompt, sorted(dag.predecessors(node.name)))
            except ValueError as exc:
                raise GraphError(f"{where}, node '{node.name}': {exc}") from None


def _parse(parser: Callable[[Any], Any], value: Any, at: str) -> Any:
    try:
        return parser(value)
    except GraphError as exc:
        raise GraphError(f"{at}: {exc}") from None


def _on_error(value: Any, at: str) -> Literal["fail", "drop"]:
    if value not in ("fail", "drop"):
        raise GraphError(f"{at}: on_error={value!r}; use 'fail' or 'drop'")
    return "fail" if value == "fail" else "drop"


def _check_sim(sim: Mapping[str, Any], at: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in sim.items():
        if key not in SIM_KEYS:
            known = ", ".join(sorted(SIM_KEYS))
            raise GraphError(f"{at}: unknown sim setting {key!r}; use {known}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GraphError(f"{at}: sim {key} = {value!r} must be a number")
        if key in ("prefill_tps", "decode_tps") and value <= 0:
            raise GraphError(f"{at}: sim {key} = {value!r} must be > 0")
        if key in ("latency_s", "output_tokens") and value < 0:
            raise GraphError(f"{at}: sim {key} = {value!r} must be >= 0")
        out[key] = value
    return out


def _make_llm(name: str, f: Mapping[str, Any], at: str) -> LLMNode:
    base = LLMNode(name)
    temperature = f.get("temperature", base.temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        0 <= temperature <= 2
    ):
        raise GraphError(f"{at}: temperature={temperature!r}; use a number from 0 to 2")
    max_tokens = f.get("max_tokens", base.max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise GraphError(f"{at}: max_tokens={max_tokens!r}; use a whole number >= 1")
    steps = f.get("steps", base.steps)
    steps = (steps,) if isinstance(steps, int) and not isinstance(steps, bool) else steps
    if not isinstance(steps, Iterable) or isinstance(steps, str | bytes):
        raise GraphError(f"{at}: steps={steps!r}; use a whole number or a list like [32, 64]")
    steps = tuple(steps)
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
        raise GraphError(f"{at}: steps={list(steps)!r}; use whole numbers >= 1, like [32, 64]")
    context = f.get("context", base.context)
    if context not in ("rebuild", "append"):
        raise GraphError(f"{at}: context={context!r}; use 'rebuild' or 'append'")
    for key in ("model", "system", "prompt", "base_url", "api_key_env"):
        if f.get(key) is not None and not isinstance(f[key], str):
            raise GraphError(f"{at}: {key} must be a string, got {f[key]!r}")
    for key, allowed in (("continuation", CONTINUATIONS), ("prompt_format", PROMPT_FORMATS)):
        if f.get(key) is not None and f[key] not in allowed:
            raise GraphError(f"{at}: {key}={f[key]!r}; use one of {', '.join(allowed)}")
    url = f.get("base_url")
    if url is not None and not url.startswith(("http://", "https://")):
        raise GraphError(f"{at}: base_url={url!r}; use an http(s):// URL, e.g. "
                         "http://127.0.0.1:8080/v1")
    return LLMNode(
        name=name,
        model=f.get("model"),
        system=f.get("system") or "",
        prompt=f.get("prompt"),
        temperature=float(temperature),
        max_tokens=max_tokens,
        steps=steps,
        join=_parse(parse_join, f.get("join", "all"), at),
        on_error=_on_error(f.get("on_error", "fail"), at),
        context=context,
        sim=MappingProxyType(_check_sim(f.get("sim") or {}, at)),
        base_url=f.get("base_url"),
        api_key_env=f.get("api_key_env"),
        continuation=f.get("continuation"),
        prompt_format=f.get("prompt_format"),
    )
