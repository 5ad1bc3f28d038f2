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
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

import networkx as nx
from typing_extensions import Unpack

from ._core.policy import Rates, auto_budget
from ._errors import GraphError
from ._joins import Join
from ._prompts import check_template
from ._settings import (
    CONTINUATIONS,
    PROMPT_FORMATS,
    Continuation,
    FnSettings,
    GraphSettings,
    LLMSettings,
    SimValue,
    fields_of,
    show,
    validate,
)
from ._triggers import Trigger, complete, parse_trigger, tokens

__all__ = [
    "CONTINUATIONS",
    "DEFAULT_TRIGGER",
    "INPUT_TRIGGER",
    "PROMPT_FORMATS",
    "Continuation",
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
# The input node sends the user's message as one token: a token schedule on its edges would
# describe cuts that never happen, while `complete` says what does (one chunk, at its end).
INPUT_TRIGGER = complete()
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


# the budgets of ``steps = "auto"`` on a backend that gives no rates
AUTO_FALLBACK = (32, 64, 128)


class _Frozen(dict[str, Any]):
    """A read-only mapping field on its way through pickle (which cannot take a
    ``MappingProxyType``): a graph goes to Ray workers and other processes whole."""


def _restore(cls: type[Any], values: dict[str, Any]) -> Any:
    obj = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, MappingProxyType(dict(value))
                           if isinstance(value, _Frozen) else value)
    return obj


class _Picklable:
    """Pickles a frozen dataclass whose fields hold read-only mappings."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (type(self), {
            f.name: _Frozen(v) if isinstance(v := getattr(self, f.name), MappingProxyType)
            else v for f in fields(self)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class LLMNode(_Picklable):
    """An agent: a model prompted with its inputs, stepping in a staircase.

    The fields besides ``name`` and ``kind`` are the settings of `LLMSettings`, where each is
    declared and checked; here are their defaults and what the runtime reads.
    """

    name: str
    model: str | None = None
    system: str = ""
    prompt: str | None = None  # bundled template name or template string; None: automatic
    temperature: float = 0.7
    max_tokens: int = 512
    # token budget of each step, the last repeating; "auto": sized from the backend's rates
    steps: tuple[int, ...] | Literal["auto"] = (32, 64)
    step_scale_s: float = 16.0  # with "auto": larger, fewer and longer steps (see auto_budget)
    join: Join = field(default_factory=Join)
    on_error: Literal["fail", "drop"] = "fail"
    context: Literal["rebuild", "append"] = "rebuild"
    sim: Mapping[str, SimValue] = field(default_factory=lambda: MappingProxyType({}))
    # where the model lives (OpenAI-compatible backend); None: the run's default endpoint
    base_url: str | None = None
    api_key_env: str | None = None  # the *name* of the environment variable with the key
    continuation: str | None = None  # "chat-prefix" | "completions" | "chat-restate"
    prompt_format: str | None = None  # for "completions": gemma | chatml | llama3 | document
    timeout_s: float | None = None  # the deadline of one model request; None: the backend's
    kind: Literal["llm"] = "llm"

    def step_budget(self, step: int, prompt_tokens: int = 0, rates: Rates | None = None) -> int:
        """The budget of the node's early step number ``step`` (from 0), whose prompt has
        ``prompt_tokens``; ``steps = "auto"`` needs the backend's ``rates`` and, without them,
        takes the fixed `AUTO_FALLBACK` schedule."""
        if self.steps == "auto":
            if rates is None:
                return AUTO_FALLBACK[min(step, len(AUTO_FALLBACK) - 1)]
            return auto_budget(rates, prompt_tokens=prompt_tokens, scale_s=self.step_scale_s)
        return self.steps[min(step, len(self.steps) - 1)]


@dataclass(frozen=True)
class FnNode:
    """User code: an async generator consuming `Inputs` step by step and yielding text."""

    name: str
    fn: FnCallable
    join: Join = field(default_factory=Join)
    on_error: Literal["fail", "drop"] = "fail"
    ref: str = ""  # "module:function" where it came from a graph file
    timeout_s: float | None = None  # the deadline of the whole node; None: no deadline
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


@dataclass(frozen=True)
class FrozenGraph(_Picklable):
    """A validated, immutable graph, ready to run. Build one with `Graph.build()`."""

    name: str
    description: str
    nodes: Mapping[str, Node]
    edges: tuple[Edge, ...]
    dag: nx.DiGraph
    input: str
    output: str
    order: tuple[str, ...]  # topological
    sim: Mapping[str, SimValue]
    default_input: str | None = None
    edge_buffer: int = 16
    mode: Mode = "staircase"
    declared_edges: tuple[Edge, ...] = ()  # the edges as declared, whatever the mode

    def inputs_of(self, name: str) -> tuple[Edge, ...]:
        return self._edges_by_end[0].get(name, ())

    def outputs_of(self, name: str) -> tuple[Edge, ...]:
        return self._edges_by_end[1].get(name, ())

    @cached_property
    def _edges_by_end(self) -> tuple[dict[str, tuple[Edge, ...]], dict[str, tuple[Edge, ...]]]:
        # the runtime asks for a node's edges at every step: a scan of all edges each time
        # made a 5,000-node graph spend most of its run here
        ins: dict[str, list[Edge]] = {}
        outs: dict[str, list[Edge]] = {}
        for e in self.edges:
            ins.setdefault(e.dst, []).append(e)
            outs.setdefault(e.src, []).append(e)
        return ({k: tuple(v) for k, v in ins.items()}, {k: tuple(v) for k, v in outs.items()})

    @property
    def layers(self) -> list[list[str]]:
        """Nodes grouped by depth from the input (each layer only reads earlier ones)."""
        return [sorted(layer) for layer in nx.topological_generations(self.dag)]

    def llm_nodes(self) -> list[LLMNode]:
        return [n for n in (self.nodes[k] for k in self.order) if isinstance(n, LLMNode)]

    def capped(self, max_tokens: int) -> FrozenGraph:
        """The same graph with every llm node's answer capped at ``max_tokens``."""
        cap = validate(LLMSettings, {"max_tokens": max_tokens}, f"graph '{self.name}'")
        nodes = {k: replace(n, max_tokens=min(n.max_tokens, cap["max_tokens"]))
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


def _own(value: Any) -> Any:
    """A copy of a mapping the caller may change later; anything else as given (checked at
    `build`, so a wrong type gets the schema's message, not a TypeError here)."""
    return dict(value) if isinstance(value, Mapping) else value


class Graph:
    """Declare a graph in Python, then `build()` it (``sf.run`` builds it for you).

    ``defaults`` apply to every llm node that does not set the field itself; ``sim`` sets the
    simulated backend's timing for the whole graph (see `SimTiming`). Every setting is
    checked at `build()` against the same schema as graph files (`LLMSettings`).
    """

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        defaults: LLMSettings | None = None,
        sim: Mapping[str, SimValue] | None = None,
        default_input: str | None = None,
        edge_buffer: int = 16,
    ) -> None:
        self.name = name
        self.description = description
        self.defaults: Any = _own(defaults if defaults is not None else {})
        self.sim: Any = _own(sim if sim is not None else {})
        self.default_input = default_input
        self.edge_buffer = edge_buffer
        self._nodes: dict[str, dict[str, Any]] = {}
        self._edges: list[tuple[str, str, Any]] = []

    @property
    def _where(self) -> str:
        return f"graph '{self.name}'" if isinstance(self.name, str) else f"graph {show(self.name)}"

    def _add(self, name: str, kind: str, **fields: Any) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise GraphError(
                f"{self._where}: node name {show(name)} is not valid; use letters, digits, "
                "'_' and '-', starting with a letter or '_'"
            )
        if name in self._nodes:
            raise GraphError(f"{self._where}: node '{name}' is declared twice; rename one")
        self._nodes[name] = {"kind": kind, **fields}
        return name

    def input(self, name: str = "question") -> str:
        """The node where the user's message enters."""
        return self._add(name, "input")

    def output(self, name: str = "answer") -> str:
        """The node whose text the caller receives."""
        return self._add(name, "output")

    def llm(self, name: str, **settings: Unpack[LLMSettings]) -> str:
        """An agent. Settings (see `LLMSettings`): model, system, prompt, temperature,
        max_tokens, steps, join, on_error ("fail" | "drop"), context ("rebuild" | "append"),
        sim, base_url, api_key_env, continuation, prompt_format, timeout_s."""
        own = {k: _own(v) if k == "sim" else v for k, v in settings.items()}
        return self._add(name, "llm", settings=own)

    def fn(
        self, name: str, fn: FnCallable, *, join: Join | str | Mapping[str, Any] = "all",
        on_error: Literal["fail", "drop"] = "fail", ref: str = "",
        timeout_s: float | None = None,
    ) -> str:
        """A node running ``fn``, an async generator function taking `Inputs`, yielding text.
        ``timeout_s`` bounds the whole node (None: no deadline)."""
        settings: FnSettings = {"join": join, "on_error": on_error, "timeout_s": timeout_s}
        return self._add(name, "fn", fn=fn, ref=ref, settings=settings)

    def connect(
        self, src: str | Sequence[str], dst: str | Sequence[str], trigger: Any = None
    ) -> None:
        """Edges from every ``src`` to every ``dst``, cut by ``trigger`` (default: the whole
        message out of the input, every token into the output, tokens 8, 16, 32, 64
        elsewhere)."""
        for s in self._ends(src, "from"):
            for d in self._ends(dst, "to"):
                self._edges.append((s, d, trigger))

    def _ends(self, value: Any, end: str) -> list[str]:
        if isinstance(value, str):
            return [value]
        if (isinstance(value, Sequence) and value
                and all(isinstance(v, str) for v in value)):
            return list(value)
        raise GraphError(f"{self._where}: edge {end}={show(value)}; use a node name or a "
                         "non-empty list of node names")

    # -- validation -------------------------------------------------------------------------

    def build(self) -> FrozenGraph:
        """Validate and freeze. Raises `GraphError` naming the node or edge and the fix."""
        where = self._where
        settings = validate(GraphSettings, {
            "name": self.name, "description": self.description, "defaults": self.defaults,
            "sim": self.sim, "default_input": self.default_input,
            "edge_buffer": self.edge_buffer}, where)
        defaults = _llm_fields(settings["defaults"])
        nodes = {name: self._make_node(name, spec, defaults, where)
                 for name, spec in self._nodes.items()}
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
            sim=MappingProxyType(settings["sim"]),
            default_input=self.default_input,
            edge_buffer=self.edge_buffer,
        )

    @staticmethod
    def _make_node(
        name: str, spec: dict[str, Any], defaults: Mapping[str, Any], where: str
    ) -> Node:
        kind = spec["kind"]
        at = f"{where}, node '{name}'"
        if kind == "input":
            return InputNode(name)
        if kind == "output":
            return OutputNode(name)
        if kind == "fn":
            fn = spec["fn"]
            if not inspect.isasyncgenfunction(fn):
                raise GraphError(f"{at}: fn={_callable_name(fn)} is {_callable_kind(fn)}; make "
                                 "it an async generator function (async def f(inputs): ... "
                                 "yield text)")
            settings = validate(FnSettings, spec["settings"], at)
            return FnNode(name, fn, join=settings["join"], on_error=settings["on_error"],
                          ref=spec["ref"], timeout_s=settings["timeout_s"])
        own = _llm_fields(validate(LLMSettings, spec["settings"], at))
        return LLMNode(name=name, **{**defaults, **own})

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
        if trig is not None:
            trigger = _parse(parse_trigger, trig, at)
        elif isinstance(nodes[dst], OutputNode):
            trigger = OUTPUT_TRIGGER
        elif isinstance(nodes[src], InputNode):
            trigger = INPUT_TRIGGER
        else:
            trigger = DEFAULT_TRIGGER
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
        if isinstance(node, LLMNode) and node.base_url and not node.model:
            raise GraphError(f"{where}, node '{node.name}' sets base_url but no model; set "
                             "model (the name the server knows the model by)")
        if isinstance(node, LLMNode):
            try:
                check_template(node.prompt, sorted(dag.predecessors(node.name)))
            except ValueError as exc:
                raise GraphError(f"{where}, node '{node.name}': {exc}") from None


def _llm_fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Checked llm settings as `LLMNode` holds them (steps as a tuple, sim read-only)."""
    out = dict(settings)
    if "steps" in out:
        steps = out["steps"]
        if steps != "auto":
            out["steps"] = (steps,) if isinstance(steps, int) else tuple(steps)
    if "sim" in out:
        out["sim"] = MappingProxyType(dict(out["sim"]))
    return out


def _callable_name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or show(fn))


def _callable_kind(fn: Any) -> str:
    if inspect.iscoroutinefunction(fn):
        return "an async function that returns, not yields"
    if inspect.isgeneratorfunction(fn):
        return "a generator function, not an async one"
    if callable(fn):
        return "a plain callable"
    return f"of type {type(fn).__name__}, not a function"


def _parse(parser: Callable[[Any], Any], value: Any, at: str) -> Any:
    try:
        return parser(value)
    except GraphError as exc:
        raise GraphError(f"{at}: {exc}") from None


# the one list of llm settings, for callers that show or check it (e.g. a graph file's keys)
LLM_FIELDS = fields_of(LLMSettings)
FN_FIELDS = fields_of(FnSettings)
