"""Fault injection: a backend wrapper that fails chosen nodes mid-stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from .._backends.base import Backend, Completion, Request, describe_backend

__all__ = ["FlakyBackend", "InjectedFault"]


class InjectedFault(ConnectionError):
    """The error a `FlakyBackend` raises."""


class _Flaky:
    def __init__(self, stream: Completion, tokens_left: int) -> None:
        self._stream = stream
        self._it = stream.__aiter__()
        self._left = tokens_left
        self.usage = stream.usage
        self.finish_reason: str | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._left <= 0:
            raise InjectedFault("injected failure: connection reset mid-stream")
        try:
            token = await self._it.__anext__()
        except StopAsyncIteration:
            self.finish_reason = self._stream.finish_reason
            raise
        self._left -= 1
        return token


class FlakyBackend:
    """Wraps a backend; node ``n`` in ``fail_after`` fails once it has streamed that many
    tokens in all (0: before its first token)."""

    def __init__(self, inner: Backend, fail_after: Mapping[str, int]) -> None:
        self.inner = inner
        self.fail_after = dict(fail_after)
        info = describe_backend(inner)
        self.name = f"flaky {info.name}"
        self.simulated = info.simulated

    @asynccontextmanager
    async def open_stream(self, request: Request) -> AsyncIterator[Any]:
        async with self.inner.open_stream(request) as stream:
            if request.node in self.fail_after:
                yield _Flaky(stream, self.fail_after[request.node] - request.position)
            else:
                yield stream
