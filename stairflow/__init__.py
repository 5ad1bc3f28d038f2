"""stairflow: low-latency multi-agent LLM graphs with staircase streaming on Trio.

Declare a graph (`Graph`, or a TOML file via `load_graph`), run it (`run` from plain code,
`open_run` inside Trio), read its `Report`; run it over many prompts (`run_batch`,
`open_batch`), resumably; from asyncio, `stairflow.aio` (`aio.open_run`, `aio.run`).
Backends: each node's own endpoint, a default endpoint, the local model, or the simulator
(`open_backend`, `OpenAIBackend`, `SimBackend`, or your own `Backend`). Test helpers live in
`stairflow.testing`.
"""

import typing as _typing

from ._backends.base import Backend, Completion, Request, Usage
from ._backends.select import BackendChoice, EndpointOptions, open_backend
from ._backends.sim import SimBackend, SimTiming
from ._batch.runner import Batch, BatchSummary, open_batch, run_batch
from ._core.inbox import Step
from ._core.policy import Rates
from ._errors import (
    BackendError,
    ConfigError,
    GraphError,
    GraphFileError,
    InternalError,
    NodeError,
    RunError,
    StairflowError,
)
from ._graph import Edge, FnNode, FrozenGraph, Graph, InputNode, LLMNode, OutputNode
from ._graphfile import bundled_graphs, load_graph, resolve_graph
from ._joins import Join, join_all, join_any, quorum
from ._metrics import NodeReport, Read, Report
from ._prompts import Message
from ._runtime.inbox import Inputs
from ._runtime.run import Run, open_run, run
from ._settings import LLMSettings, SimSettings
from ._trace import Event, Trace
from ._triggers import (
    Buffer,
    Trigger,
    complete,
    interval,
    paragraph,
    regex,
    sentence,
    tokens,
)

if _typing.TYPE_CHECKING:
    from ._backends.openai import Endpoint, OpenAIBackend

__version__ = "0.1.0"

_LAZY = {"Endpoint", "OpenAIBackend"}  # the openai package takes a while to import


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        from ._backends import openai

        return getattr(openai, name)
    raise AttributeError(f"module 'stairflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)


__all__ = [
    "Backend",
    "BackendChoice",
    "BackendError",
    "Batch",
    "BatchSummary",
    "Buffer",
    "Completion",
    "ConfigError",
    "Edge",
    "Endpoint",
    "EndpointOptions",
    "Event",
    "FnNode",
    "FrozenGraph",
    "Graph",
    "GraphError",
    "GraphFileError",
    "InputNode",
    "Inputs",
    "InternalError",
    "Join",
    "LLMNode",
    "LLMSettings",
    "Message",
    "NodeError",
    "NodeReport",
    "OpenAIBackend",
    "OutputNode",
    "Rates",
    "Read",
    "Report",
    "Request",
    "Run",
    "RunError",
    "SimBackend",
    "SimSettings",
    "SimTiming",
    "StairflowError",
    "Step",
    "Trace",
    "Trigger",
    "Usage",
    "__version__",
    "bundled_graphs",
    "complete",
    "interval",
    "join_all",
    "join_any",
    "load_graph",
    "open_backend",
    "open_batch",
    "open_run",
    "paragraph",
    "quorum",
    "regex",
    "resolve_graph",
    "run",
    "run_batch",
    "sentence",
    "tokens",
]
