"""Diagrams with graphviz: nodes by kind, edges labelled with their triggers."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import graphviz

from ._errors import ConfigError
from ._graph import Edge, FnNode, FrozenGraph, InputNode, LLMNode, OutputNode

__all__ = ["FORMATS", "render", "to_dot"]

FORMATS = ("svg", "png", "pdf", "dot")


def _label(node: object) -> tuple[str, dict[str, str]]:
    if isinstance(node, InputNode):
        return f"{node.name}\n(input)", {"shape": "invhouse", "style": "filled",
                                         "fillcolor": "#dbeafe"}
    if isinstance(node, OutputNode):
        return f"{node.name}\n(output)", {"shape": "house", "style": "filled",
                                          "fillcolor": "#dcfce7"}
    if isinstance(node, LLMNode):
        extra = [node.model or "llm"]
        if node.join.policy != "all" or node.join.waits:
            extra.append(f"join {node.join.describe()}")
        return f"{node.name}\n({', '.join(extra)})", {"shape": "box", "style": "rounded,filled",
                                                      "fillcolor": "#fef3c7"}
    if not isinstance(node, FnNode):
        raise TypeError(f"not a node: {node!r}")
    return f"{node.name}\n(fn)", {"shape": "component", "style": "filled",
                                  "fillcolor": "#f3e8ff"}


def _bundles(edges: tuple[Edge, ...]) -> tuple[list[list[Edge]], list[list[Edge]], list[Edge]]:
    """Edges grouped so every trigger label sits on one line that belongs to one group.

    Parallel edges with the same label converging on one node would put several identical
    labels side by side near it (which is which?); instead they meet at a junction and the
    label is drawn once, on the junction's edge into the node. Likewise for edges fanning out
    of one node. Returns (fan-ins, fan-outs, single edges).
    """
    by_dst: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    for edge in edges:
        by_dst[edge.dst, edge.trigger.describe()].append(edge)
    fan_in = [group for group in by_dst.values() if len(group) > 1]
    grouped = {id(e) for group in fan_in for e in group}
    by_src: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    for edge in edges:
        if id(edge) not in grouped:
            by_src[edge.src, edge.trigger.describe()].append(edge)
    fan_out = [group for group in by_src.values() if len(group) > 1]
    grouped |= {id(e) for group in fan_out for e in group}
    return fan_in, fan_out, [e for e in edges if id(e) not in grouped]


def to_dot(graph: FrozenGraph) -> graphviz.Digraph:
    dot = graphviz.Digraph(graph.name, graph_attr={"rankdir": "LR", "label": graph.description,
                                                   "labelloc": "t", "fontname": "Helvetica"},
                           node_attr={"fontname": "Helvetica"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "10"})
    for name in graph.order:
        label, attrs = _label(graph.nodes[name])
        dot.node(name, label, **attrs)
    fan_in, fan_out, single = _bundles(graph.edges)
    # junction names contain '~', which node names cannot, so they never clash
    for i, group in enumerate(fan_in):
        junction = f"~in~{group[0].dst}~{i}"
        dot.node(junction, "", shape="point", width="0.06")
        for edge in group:
            dot.edge(edge.src, junction, arrowhead="none")
        dot.edge(junction, group[0].dst, label=group[0].trigger.describe())
    for i, group in enumerate(fan_out):
        junction = f"~out~{group[0].src}~{i}"
        dot.node(junction, "", shape="point", width="0.06")
        dot.edge(group[0].src, junction, label=group[0].trigger.describe(), arrowhead="none")
        for edge in group:
            dot.edge(junction, edge.dst)
    for edge in single:
        dot.edge(edge.src, edge.dst, label=edge.trigger.describe())
    return dot


def render(graph: FrozenGraph, path: str | Path, fmt: str | None = None) -> Path:
    """Draw ``graph`` to ``path``; the format comes from ``fmt`` or the file's suffix.
    Raises `ConfigError` naming the file when it cannot be written."""
    out = Path(path)
    fmt = (fmt or out.suffix.lstrip(".") or "svg").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"cannot render to {fmt!r}; use one of {', '.join(FORMATS)}")
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a directory; give a file name, e.g. "
                          f"{out / (graph.name + '.' + fmt)}")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: the directory {out.parent} does not exist; "
                          "create it first")
    dot = to_dot(graph)
    if fmt == "dot":
        data = dot.source.encode("utf-8")
    elif shutil.which("dot") is None:
        raise ConfigError("graphviz's 'dot' program is not installed; apt-get install graphviz")
    else:
        data = dot.pipe(format=fmt)
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"cannot write {out} ({exc.strerror}); choose a path you can write "
                          "to") from None
    return out
