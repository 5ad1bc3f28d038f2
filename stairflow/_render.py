"""Diagrams with graphviz: nodes by kind, edges labelled with their triggers."""

from __future__ import annotations

import shutil
from pathlib import Path

import graphviz

from ._errors import ConfigError
from ._graph import FnNode, FrozenGraph, InputNode, LLMNode, OutputNode

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
        if node.join.policy != "all" or node.join.max_wait_s is not None:
            extra.append(f"join {node.join.describe()}")
        return f"{node.name}\n({', '.join(extra)})", {"shape": "box", "style": "rounded,filled",
                                                      "fillcolor": "#fef3c7"}
    assert isinstance(node, FnNode)
    return f"{node.name}\n(fn)", {"shape": "component", "style": "filled",
                                  "fillcolor": "#f3e8ff"}


def to_dot(graph: FrozenGraph) -> graphviz.Digraph:
    dot = graphviz.Digraph(graph.name, graph_attr={"rankdir": "LR", "label": graph.description,
                                                   "labelloc": "t", "fontname": "Helvetica"},
                           node_attr={"fontname": "Helvetica"},
                           edge_attr={"fontname": "Helvetica", "fontsize": "10"})
    for name in graph.order:
        label, attrs = _label(graph.nodes[name])
        dot.node(name, label, **attrs)
    for edge in graph.edges:
        dot.edge(edge.src, edge.dst, label=edge.trigger.describe())
    return dot


def render(graph: FrozenGraph, path: str | Path, fmt: str | None = None) -> Path:
    """Draw ``graph`` to ``path``; the format comes from ``fmt`` or the file's suffix."""
    out = Path(path)
    fmt = (fmt or out.suffix.lstrip(".") or "svg").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"cannot render to {fmt!r}; use one of {', '.join(FORMATS)}")
    dot = to_dot(graph)
    if fmt == "dot":
        out.write_text(dot.source)
        return out
    if shutil.which("dot") is None:
        raise ConfigError("graphviz's 'dot' program is not installed; apt-get install graphviz")
    out.write_bytes(dot.pipe(format=fmt))
    return out
