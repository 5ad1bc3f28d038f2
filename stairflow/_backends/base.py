"""The backend protocol: stream the tokens of one completion request.

A backend opens a stream for a `Request` as an async context manager; iterating the stream
gives token deltas (one streamed delta is one "token"); after iteration `finish_reason` is
``"stop"`` (the model ended its answer) or ``"length"`` (the step's budget ran out) and
`usage` holds the token counts. Leaving the context closes the request, also on cancellation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from .._prompts import Message

__all__ = ["Backend", "Completion", "Request", "Usage"]


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

    def all_text(self) -> str:
        """All message text, for logs and tests."""
        return "\n".join(m.content for m in self.messages)


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


class Completion(Protocol):
    usage: Usage
    finish_reason: str | None

    def __aiter__(self) -> AsyncIterator[str]: ...


class Backend(Protocol):
    name: str  # shown to users, e.g. "simulated" or "openai http://..."
    simulated: bool  # True when text and timings are made up

    def open_stream(self, request: Request) -> AbstractAsyncContextManager[Completion]: ...
