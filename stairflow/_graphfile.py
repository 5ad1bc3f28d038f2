"""Graph files (TOML), bundled graphs, and finding a graph from a command-line argument.

A file is parsed with `tomllib`, its shape checked by pydantic models (unknown keys are
errors), then handed to the same `Graph` builder as Python code, so both paths share one set
of checks. Every error is one line starting with the file's path.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import GraphError, GraphFileError
from ._graph import FrozenGraph, Graph

__all__ = ["bundled_graphs", "load_graph", "resolve_graph"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class _Node(_Strict):
    kind: Literal["input", "output", "llm", "fn"]
    model: str | None = None
    system: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    steps: int | list[int] | None = None
    join: str | dict[str, Any] | None = None
    on_error: str | None = None
    context: str | None = None
    sim: dict[str, float] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    continuation: str | None = None
    prompt_format: str | None = None
    fn: str | None = None


class _Edges(_Strict):
    src: str | list[str] = Field(alias="from")
    dst: str | list[str] = Field(alias="to")
    trigger: str | dict[str, Any] | None = None


class _File(_Strict):
    name: str
    description: str = ""
    default_input: str | None = None
    edge_buffer: int = 16
    defaults: dict[str, Any] = Field(default_factory=dict)
    sim: dict[str, float] = Field(default_factory=dict)
    nodes: dict[str, _Node]
    edges: list[_Edges] = Field(default_factory=list)


_ONLY = {
    "input": set(),
    "output": set(),
    "fn": {"fn", "join", "on_error"},
    "llm": set(_Node.model_fields) - {"kind", "fn"},
}


def _pydantic_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field; check its spelling against docs/graph-files.md"
    if err["type"] == "missing":
        return f"{loc}: required field is missing"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def _import_fn(ref: str, base: Path, where: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise GraphError(f"{where}: fn = {ref!r}; write it as 'module:function'")
    local = base / (module.replace(".", "/") + ".py")
    try:
        if local.is_file():
            spec = importlib.util.spec_from_file_location(f"_stairflow_fn_{module}", local)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
        fn: Callable[..., Any] = getattr(mod, attr)
    except (ImportError, AttributeError) as exc:
        raise GraphError(f"{where}: cannot import {ref!r} ({exc})") from None
    return fn


def graph_from_data(data: dict[str, Any], base: Path = Path()) -> FrozenGraph:
    """Build a graph from parsed graph-file data (raises GraphError)."""
    try:
        spec = _File.model_validate(data)
    except ValidationError as exc:
        raise GraphError(_pydantic_message(exc)) from None
    g = Graph(spec.name, description=spec.description, defaults=spec.defaults, sim=spec.sim,
              default_input=spec.default_input, edge_buffer=spec.edge_buffer)
    for name, node in spec.nodes.items():
        given = {k: v for k, v in node.model_dump(exclude={"kind"}).items() if v is not None}
        extra = sorted(set(given) - _ONLY[node.kind])
        if extra:
            raise GraphError(
                f"nodes.{name}: field {extra[0]!r} does not apply to an {node.kind} node; "
                "remove it"
            )
        if node.kind == "input":
            g.input(name)
        elif node.kind == "output":
            g.output(name)
        elif node.kind == "fn":
            if node.fn is None:
                raise GraphError(f"nodes.{name}: an fn node needs fn = 'module:function'")
            fn = _import_fn(node.fn, base, f"nodes.{name}")
            g.fn(name, fn, join=given.get("join", "all"), on_error=given.get("on_error", "fail"),
                 ref=node.fn)
        else:
            g.llm(name, **given)
    for edges in spec.edges:
        g.connect(edges.src, edges.dst, edges.trigger)
    return g.build()


def load_graph(path: str | Path) -> FrozenGraph:
    """Load and validate a TOML graph file; errors are `GraphFileError` naming the file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GraphFileError(str(p), f"cannot read the file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise GraphFileError(str(p), f"not valid TOML: {exc}") from None
    try:
        return graph_from_data(data, p.parent)
    except GraphError as exc:
        raise GraphFileError(str(p), str(exc)) from None


def _bundled_dir() -> Path:
    packaged = Path(str(resources.files("stairflow"))) / "_bundled_graphs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "graphs"


def bundled_graphs() -> dict[str, Path]:
    """Names and paths of the graphs shipped with stairflow."""
    return {p.stem: p for p in sorted(_bundled_dir().glob("*.toml"))}


def resolve_graph(spec: str) -> FrozenGraph:
    """A graph from a file path, a bundled name (``moa``) or ``module:attribute``."""
    path = Path(spec)
    if path.is_file():
        return load_graph(path)
    bundled = bundled_graphs()
    if spec in bundled:
        return load_graph(bundled[spec])
    if ":" in spec and not path.suffix:
        module, _, attr = spec.partition(":")
        sys.path.insert(0, str(Path.cwd()))
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise GraphError(f"cannot import graph {spec!r} ({exc})") from None
        finally:
            sys.path.pop(0)
        obj = obj() if callable(obj) and not isinstance(obj, Graph) else obj
        if isinstance(obj, Graph):
            return obj.build()
        if isinstance(obj, FrozenGraph):
            return obj
        raise GraphError(f"{spec!r} is a {type(obj).__name__}, not a stairflow Graph")
    close = difflib.get_close_matches(spec, list(bundled), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise GraphError(
        f"graph {spec!r} not found: not a file, a bundled graph ({', '.join(bundled)}) or "
        f"module:attribute; {hint}"
        "check the path"
    )
