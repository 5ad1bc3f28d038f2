"""stairflow: low-latency multi-agent LLM graphs with staircase streaming on Trio.

Declare a graph (`Graph`, or a TOML file via `load_graph`), run it (`run` from plain code,
`open_run` inside Trio), read its `Report`. Test helpers live in `stairflow.testing`.
"""

from ._backends.base import Backend, Completion, Request, Usage
from ._backends.sim import SimBackend, SimTiming
from ._core.inbox import Step
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
from ._metrics import NodeReport, Report
from ._prompts import Message
from ._runtime.inbox import Inputs
from ._runtime.run import Run, open_run, run
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

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "Buffer",
    "Completion",
    "ConfigError",
    "Edge",
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
    "Message",
    "NodeError",
    "NodeReport",
    "OutputNode",
    "Report",
    "Request",
    "Run",
    "RunError",
    "SimBackend",
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
    "open_run",
    "paragraph",
    "quorum",
    "regex",
    "resolve_graph",
    "run",
    "sentence",
    "tokens",
]
