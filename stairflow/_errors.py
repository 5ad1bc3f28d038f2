"""The one exception tree of stairflow.

    StairflowError                 base of everything stairflow raises on purpose
    ├── GraphError                 the graph as declared is wrong (names node or edge, and the fix)
    │   └── GraphFileError         ... and it came from a graph file (names the file too)
    ├── ConfigError                a bad option or combination of options (CLI, run arguments)
    ├── RunError                   a run failed
    │   └── NodeError              ... because one node failed (``.node`` names it)
    │       └── BackendError       ... because its model endpoint failed (names endpoint and model)
    └── InternalError              a bug in stairflow itself: please report it

Every message is one line that says what is wrong and how to fix it. ``trio.Cancelled`` is
never caught or wrapped.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendError",
    "ConfigError",
    "GraphError",
    "GraphFileError",
    "InternalError",
    "NodeError",
    "RunError",
    "StairflowError",
    "unwrap",
]


class StairflowError(Exception):
    """Base class of every error stairflow raises on purpose."""


class GraphError(StairflowError):
    """The graph as declared is invalid; the message names the node or edge and the fix."""


class GraphFileError(GraphError):
    """A graph file is invalid; the message starts with the file's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle call __init__ so
        return type(self), (self.path, self.message), self.__dict__


class ConfigError(StairflowError):
    """An option or a combination of options is invalid."""


class RunError(StairflowError):
    """A run did not complete."""


class NodeError(RunError):
    """A node failed during a run."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"node '{node}' failed: {message}")
        self.node = node
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle (Ray) call __init__ so
        return type(self), (self.node, self.reason), self.__dict__


class BackendError(NodeError):
    """A node's model backend failed (unreachable, refused, broke mid-stream).

    ``transient``: the same request may well succeed later (the server was unreachable,
    overloaded, timed out or broke the connection), as opposed to one it refused for what the
    request is (an unknown model, a bad key, malformed data). `stairflow.run_batch` retries a
    prompt whose run failed with a transient error. ``kind``: what failed, in a word
    (``connect``, ``read_timeout``, ``http_429``, ...: see docs/serving.md#metrics), or
    ``other``."""

    def __init__(self, node: str, message: str, *, transient: bool = False,
                 kind: str = "other") -> None:
        super().__init__(node, message)
        self.transient = transient
        self.kind = kind


class InternalError(StairflowError):
    """A bug in stairflow; the message says what invariant broke."""


def unwrap(exc: BaseException) -> BaseException:
    """The one exception a nursery wrapped in groups of one (a caller expects the error or
    ``KeyboardInterrupt`` a block raised, not a group); a group of several stays a group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
