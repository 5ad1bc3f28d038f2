"""``stairflow check``, ``render`` and ``list``: graphs without running them."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from .._graphfile import bundled_graphs, resolve_graph
from .._render import FORMATS, render
from .common import GRAPH_HELP

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("check", help="validate a graph and print its layers")
    c.add_argument("graph", help=GRAPH_HELP)
    c.set_defaults(handler=_check)

    d = sub.add_parser("render", help="draw a graph with graphviz")
    d.add_argument("graph", help=GRAPH_HELP)
    d.add_argument("-o", "--output", required=True, help="output file (.svg, .png, .pdf, .dot)")
    d.add_argument("--format", choices=FORMATS, help="format (default: from the file suffix)")
    d.set_defaults(handler=_render)

    ls = sub.add_parser("list", help="list the bundled graphs")
    ls.set_defaults(handler=_list)


def _check(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    g = resolve_graph(args.graph)
    print(f"graph '{g.name}' is valid: {len(g.nodes)} nodes, {len(g.edges)} edges", file=out)
    for i, layer in enumerate(g.layers):
        print(f"  layer {i}: {', '.join(layer)}", file=out)
    return 0


def _render(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    path = render(resolve_graph(args.graph), args.output, args.format)
    print(f"wrote {path}", file=out)
    return 0


def _list(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    for name, path in bundled_graphs().items():
        print(f"{name:12} {resolve_graph(str(path)).description}", file=out)
    return 0
