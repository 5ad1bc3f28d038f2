"""The backend protocol: stream the tokens of one completion request.

A backend is any object with ``open_stream(request)``: it opens a stream for a `Request` as
an async context manager; iterating the stream gives tokens, one at a time (a server that
sends several in one piece has it split: see `stairflow._backends.openai.split_tokens`), never
more than the request's ``max_tokens`` (the runtime cuts a stream there anyway); after
iteration `finish_reason` is ``"stop"`` (the model ended its answer) or
``"length"`` (the step's budget ran out) and `usage` holds the token counts. Leaving the
context closes the request, also on cancellation.

Everything else is optional, with defaults (see `describe_backend`): ``name`` (shown to users;
default: the class name), ``simulated`` (True when text and timings are made up; default
False), ``secret_values()`` (strings to keep out of every message and trace; default none),
``async aclose()`` (called when a run that built the backend is done with it), ``async
warm_up(nodes)`` (called with the run's ``(node, model)`` pairs before the run starts: open
connections, check models), ``rates(node)`` (the node's prefill and decode rates as a
`Rates`, for the no-regret step policy in `stairflow._core.policy`; None if unknown; asked
again as the run goes, so measured rates apply as soon as they exist) and
``measured_rates()`` (what it measured of its endpoints, for the report: see
`stairflow._backends.meter`). A stream may also offer ``take(n, write)`` (the simulator's
does): hand over up to ``n`` tokens due now in one wake-up instead of one per token; the
runtime asks for it only in a node's final step, where no cut can fall between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import ConfigError
from .._prompts import Message

__all__ = ["Backend", "BackendInfo", "Completion", "Request", "Usage", "describe_backend"]


@dataclass(frozen=True)
class Request:
    """One step of one llm node."""

    node: str
    messages: tuple[Message, ...]
    prefix: str  # the node's answer so far, to be continued ("" starts a new answer)
    max_tokens: int
    temperature: float = 0.7
    model: str | None = None
    step: int = 0
    position: int = 0  # tokens the node has written before this request
    run_id: int = 0  # the run it belongs to: unique within the process (for caches, slots)

    def all_text(self) -> str:
        """All message text, for logs and tests."""
        return "\n".join(m.content for m in self.messages)


@dataclass
class Usage:
    """Token counts of one request (prompt tokens may be known before the stream ends)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


class Completion(Protocol):
    usage: Usage
    finish_reason: str | None

    def __aiter__(self) -> AsyncIterator[str]: ...


class Backend(Protocol):
    """What a run needs from a backend: one method. See the module docs for the optional
    attributes (``name``, ``simulated``, ``secret_values``, ``aclose``)."""

    def open_stream(self, request: Request) -> AbstractAsyncContextManager[Completion]: ...


@dataclass(frozen=True)
class BackendInfo:
    """A backend's optional attributes, with their defaults filled in."""

    name: str
    simulated: bool
    secrets: tuple[str, ...]


def describe_backend(backend: object) -> BackendInfo:
    """Check that ``backend`` can serve a run and read its optional attributes."""
    if isinstance(backend, type):
        raise ConfigError(f"backend={backend.__name__} is a class; pass an instance of it, "
                          f"e.g. backend={backend.__name__}(...)")
    if not callable(getattr(backend, "open_stream", None)):
        raise ConfigError(
            f"backend={backend!r} is not a backend: pass 'auto', 'local', 'openai' or 'sim', "
            "or an object with an open_stream(request) method (see docs/backends.md)"
        )
    name = getattr(backend, "name", None)
    secrets: Any = getattr(backend, "secret_values", None)
    found = tuple(s for s in (secrets() if callable(secrets) else ()) if isinstance(s, str) and s)
    return BackendInfo(
        name=name if isinstance(name, str) and name else type(backend).__name__,
        simulated=getattr(backend, "simulated", False) is True,
        secrets=found,
    )
