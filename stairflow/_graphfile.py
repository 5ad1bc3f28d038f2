"""Graph files (TOML), bundled graphs, and finding a graph from a command-line argument.

A file is read as UTF-8 and parsed with `tomllib`. This module checks only its layout (a
``name``, ``[nodes.NAME]`` tables with a ``kind``, ``[[edges]]`` with ``from`` and ``to``) and
hands every setting to the same `Graph` builder as Python code, which checks it against the
one schema in `stairflow._settings`. So a file and the same graph in Python accept and reject
the same values with the same message; a file's messages start with its path. Whatever is
wrong with a file (not UTF-8, nested thousands deep, a module that fails to import or calls
``sys.exit``) is a one-line `GraphFileError`, never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
import sys
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ._errors import GraphError, GraphFileError
from ._graph import FN_FIELDS, LLM_FIELDS, FrozenGraph, Graph
from ._settings import GraphSettings, fields_of, show, unknown_field

__all__ = ["bundled_graphs", "graph_from_data", "load_graph", "resolve_graph"]

_SETTINGS = tuple(k for k in fields_of(GraphSettings) if k != "name")
_TOP = ("name", *_SETTINGS, "nodes", "edges")
_KINDS = ("input", "output", "llm", "fn")
_EDGE_KEYS = ("from", "to", "trigger")
# module:attribute, each a dotted Python name (``pkg.graphs:moa``, ``mod:Graphs.main``)
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_REF = re.compile(rf"({_DOTTED}):({_DOTTED})\Z")


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 200 else text[:197] + "..."


def _failed_import(what: str, exc: BaseException) -> str:
    """Why importing user code failed, in one line (``what`` names the module or spec)."""
    if isinstance(exc, SystemExit):
        return (f"cannot import {what}: the module called sys.exit({exc.code!r}) while being "
                "imported; move that call under if __name__ == '__main__'")
    return f"cannot import {what} ({_one_line(exc)})"


def _import_fn(ref: Any, base: Path, at: str) -> Callable[..., Any]:
    match = _REF.match(ref) if isinstance(ref, str) else None
    if match is None:
        raise GraphError(f"{at}: fn={show(ref)}; write it as 'module:function'")
    module, attr = match.groups()
    local = base / (module.replace(".", "/") + ".py")
    try:
        if local.is_file():
            spec = importlib.util.spec_from_file_location(f"_stairflow_fn_{module}", local)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {local}")
            obj: Any = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(obj)
        else:
            obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as exc:  # user code: any failure is bad input
        raise GraphError(f"{at}: {_failed_import(repr(ref), exc)}") from None
    fn: Callable[..., Any] = obj
    return fn


def _add_node(g: Graph, name: str, table: Any, base: Path, where: str) -> None:
    at = f"{where}, node '{name}'"
    if not isinstance(table, dict):
        raise GraphError(f"{at}: {show(table)} is not a table; write [nodes.{name}] with "
                         "kind = 'llm' (or 'input', 'output', 'fn')")
    rest = dict(table)
    kind = rest.pop("kind", None)
    if kind not in _KINDS:
        raise GraphError(f"{at}: kind={show(kind)}; use 'input', 'output', 'llm' or 'fn'")
    # llm settings go to the schema as they are (it names unknown ones); the other kinds take
    # a few keyword arguments, so their keys are checked here
    takes = {"input": (), "output": (), "llm": LLM_FIELDS, "fn": ("fn", *FN_FIELDS)}[kind]
    for key in rest:
        if key not in takes and (kind != "llm" or key == "fn"):
            if key in LLM_FIELDS or key == "fn":
                raise GraphError(f"{at}: field {key!r} does not apply to an {kind} node; "
                                 "remove it")
            raise GraphError(unknown_field(at, key, takes or ("kind",)))
    if kind == "input":
        g.input(name)
    elif kind == "output":
        g.output(name)
    elif kind == "llm":
        g.llm(name, **rest)
    else:
        if "fn" not in rest:
            raise GraphError(f"{at}: an fn node needs fn = 'module:function'")
        ref = rest.pop("fn")
        g.fn(name, _import_fn(ref, base, at), ref=ref, **rest)


def _add_edges(g: Graph, edges: Any, where: str) -> None:
    if not isinstance(edges, list):
        raise GraphError(f"{where}: edges={show(edges)}; write each edge as an [[edges]] "
                         "table with from and to")
    for i, table in enumerate(edges, 1):
        at = f"{where}, [[edges]] #{i}"
        if not isinstance(table, dict):
            raise GraphError(f"{at}: {show(table)} is not a table; give it from and to")
        for key in table:
            if key not in _EDGE_KEYS:
                raise GraphError(unknown_field(at, key, _EDGE_KEYS))
        for key in ("from", "to"):
            if key not in table:
                raise GraphError(f"{at}: {key!r} is missing; name a node or a list of nodes")
        g.connect(table["from"], table["to"], table.get("trigger"))


def graph_from_data(data: dict[str, Any], base: Path = Path()) -> FrozenGraph:
    """Build a graph from parsed graph-file data (raises GraphError); ``base`` is where
    ``fn = "module:function"`` modules are looked for first."""
    if "name" not in data:
        raise GraphError('name is missing; start the file with name = "my-graph"')
    name = data["name"]
    where = f"graph '{name}'" if isinstance(name, str) else f"graph {show(name)}"
    for key in data:
        if key not in _TOP:
            raise GraphError(unknown_field(where, key, _TOP))
    g = Graph(name, **{k: data[k] for k in _SETTINGS if k in data})
    nodes = data.get("nodes", {})
    if not isinstance(nodes, dict):
        raise GraphError(f"{where}: nodes={show(nodes)}; write each node as a [nodes.NAME] "
                         "table")
    for node, table in nodes.items():
        _add_node(g, node, table, base, where)
    _add_edges(g, data.get("edges", []), where)
    return g.build()


_DEEP = "nested too deeply to read; a graph file needs only a few levels"


def load_graph(path: str | Path) -> FrozenGraph:
    """Load and validate a TOML graph file; errors are `GraphFileError` naming the file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise GraphFileError(str(p), f"cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise GraphFileError(
            str(p), f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); a graph file is TOML, saved as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GraphFileError(str(p), f"not valid TOML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise GraphFileError(str(p), _DEEP) from None
    try:
        return graph_from_data(data, p.parent)
    except GraphError as exc:
        raise GraphFileError(str(p), str(exc)) from None
    except RecursionError:
        raise GraphFileError(str(p), _DEEP) from None


def _bundled_dir() -> Path:
    packaged = Path(str(resources.files("stairflow"))) / "_bundled_graphs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "graphs"


def bundled_graphs() -> dict[str, Path]:
    """Names and paths of the graphs shipped with stairflow."""
    return {p.stem: p for p in sorted(_bundled_dir().glob("*.toml"))}


def resolve_graph(spec: str) -> FrozenGraph:
    """A graph from a file path, a bundled name (``moa``) or ``module:attribute``.

    ``module:attribute`` imports ``module`` (from the current directory first) and takes the
    `Graph` or `FrozenGraph` named by ``attribute``. Nothing found there is called: a
    function is an error, so ``json:dumps`` cannot run arbitrary code.
    """
    path = Path(spec)
    if path.is_file():
        return load_graph(path)
    bundled = bundled_graphs()
    if spec in bundled:
        return load_graph(bundled[spec])
    match = _REF.match(spec)
    if match:
        return _python_graph(spec, *match.groups())
    if ":" in spec:
        raise GraphError(f"graph {spec!r}: write a graph declared in Python as "
                         "module:attribute, e.g. mygraphs:graph")
    close = difflib.get_close_matches(spec, list(bundled), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise GraphError(
        f"graph {spec!r} not found: not a file, a bundled graph ({', '.join(bundled)}) or "
        f"module:attribute; {hint}"
        "check the path"
    )


def _python_graph(spec: str, module: str, attr: str) -> FrozenGraph:
    here = str(Path.cwd())
    sys.path.insert(0, here)
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as exc:  # user code: any failure is bad input
        raise GraphError(_failed_import(f"graph {spec!r}", exc)) from None
    finally:
        if here in sys.path:
            sys.path.remove(here)
    if isinstance(obj, Graph):
        return obj.build()
    if isinstance(obj, FrozenGraph):
        return obj
    what = "a function" if callable(obj) else f"a {type(obj).__name__}"
    raise GraphError(f"graph {spec!r} is {what}, not a stairflow Graph; name a Graph or "
                     "FrozenGraph object, e.g. graph = build_graph() at the module's top level")
