"""The OpenAI-compatible backend: any server speaking the OpenAI API (vLLM, SGLang, llama.cpp,
Ollama, Together, OpenAI...), through the official ``openai`` package's `AsyncOpenAI`.

Continuing a node's partial answer at each staircase step, three ways (``continuation``):

- ``chat-prefix`` (default; vLLM, SGLang, llama.cpp): the partial answer is sent as a final
  assistant message with ``continue_final_message`` on and ``add_generation_prompt`` off; the
  stream carries only the new text.
- ``completions``: the raw ``/v1/completions`` endpoint on a prompt rendered here with
  ``prompt_format`` (``gemma``, ``chatml``, ``llama3``, or ``document`` - plain text for base
  models), ending with the partial answer.
- ``chat-restate`` (hosted APIs without assistant prefill): the partial answer goes into the
  user message with an instruction to continue it without repeating it. Works everywhere;
  the model may drift at the seam.

`stairflow probe URL` tells which work on an endpoint. Retries with backoff on connection
errors, 408/409/429 and 5xx before the first token come from the ``openai`` client
(``max_retries``); a failure mid-stream is an error naming the node, endpoint and model -
never a hang (``timeout_s`` bounds every wait) and never a silent truncation. API keys are
read from the environment variable named by ``api_key_env`` and never appear in errors,
logs or traces.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import openai
import trio

from .._errors import BackendError, ConfigError
from .._graph import CONTINUATIONS, PROMPT_FORMATS, Continuation
from .._prompts import Message
from .base import Request, Usage

if TYPE_CHECKING:
    from .._graph import FrozenGraph

__all__ = ["CONTINUATIONS", "PROMPT_FORMATS", "Endpoint", "OpenAIBackend", "render_prompt"]


RESTATE = (
    "Here is the beginning of your answer. Continue it exactly where it stops, without "
    "repeating any of it:\n\n{prefix}"
)


@dataclass(frozen=True)
class Endpoint:
    """Where and how an llm node reaches its model."""

    base_url: str
    model: str
    api_key_env: str | None = None  # the *name* of the variable holding the key
    continuation: Continuation = "chat-prefix"
    prompt_format: str = "chatml"  # for "completions"
    timeout_s: float = 60.0
    max_retries: int = 2
    extra_body: Mapping[str, Any] | None = None

    def describe(self) -> str:
        return f"{self.base_url} (model {self.model!r})"

    def check(self) -> Endpoint:
        if self.continuation not in CONTINUATIONS:
            raise ConfigError(f"continuation={self.continuation!r}; use one of "
                              f"{', '.join(CONTINUATIONS)}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format={self.prompt_format!r}; use one of "
                              f"{', '.join(PROMPT_FORMATS)}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url={self.base_url!r}; use an http(s):// URL ending in /v1")
        return self


def _system_and_turns(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    return system, [m for m in messages if m.role != "system"]


def render_prompt(fmt: str, messages: Sequence[Message], prefix: str) -> str:
    """A raw completion prompt for ``messages``, ending with the start of the answer."""
    system, turns = _system_and_turns(messages)
    if fmt == "document":  # plain text for base models: context, then "Question: ... Answer:"
        head = f"{system}\n\n" if system else ""
        body = "\n\n".join(t.content for t in turns)
        return f"{head}Question: {body}\nAnswer:{' ' if prefix else ''}{prefix}"
    if fmt == "gemma":  # no system role: the system text opens the first user turn
        parts = []
        for i, t in enumerate(turns):
            role = "model" if t.role == "assistant" else "user"
            text = f"{system}\n\n{t.content}" if i == 0 and system else t.content
            parts.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
        return "".join(parts) + f"<start_of_turn>model\n{prefix}"
    if fmt == "llama3":
        parts = ["<|begin_of_text|>"]
        for m in ([Message("system", system)] if system else []) + turns:
            parts.append(f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content}<|eot_id|>")
        return "".join(parts) + f"<|start_header_id|>assistant<|end_header_id|>\n\n{prefix}"
    parts = [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n"
             for m in ([Message("system", system)] if system else []) + turns]
    return "".join(parts) + f"<|im_start|>assistant\n{prefix}"


class _Stream:
    """Adapts an openai stream to the backend protocol; fixes the whitespace seam."""

    def __init__(self, chunks: Any, seam_ws: str, chat: bool, where: str, node: str) -> None:
        self._chunks = chunks.__aiter__()
        self._seam_ws = seam_ws  # whitespace stripped off the prefix before sending
        self._chat = chat
        self._where = where
        self._node = node
        self.usage = Usage()
        self.finish_reason: str | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                if self.finish_reason is None:
                    raise BackendError(self._node, f"{self._where}: the stream ended without a "
                                       "finish reason (connection cut mid-answer?)") from None
                raise
            except openai.OpenAIError as exc:
                raise _error(self._node, self._where, exc) from None
            if getattr(chunk, "usage", None):
                u = chunk.usage
                details = getattr(u, "prompt_tokens_details", None)
                self.usage = Usage(u.prompt_tokens or 0, getattr(details, "cached_tokens", 0) or 0,
                                   u.completion_tokens or 0)
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.finish_reason:
                self.finish_reason = "stop" if choice.finish_reason == "stop" else "length"
            text = (choice.delta.content if self._chat else choice.text) or ""
            if self._seam_ws and text:
                # the prefix lost its trailing whitespace; don't let the seam double it
                text = text.lstrip() if text[:1].isspace() else text
                self._seam_ws = ""
            if text:
                return text


def _error(node: str, where: str, exc: BaseException) -> BackendError:
    if isinstance(exc, openai.APIStatusError):
        what = f"HTTP {exc.status_code}"
        hint = {401: "check the API key variable", 404: "check the model name and base URL",
                429: "rate limited (retries exhausted)"}.get(exc.status_code, "")
        body = getattr(exc, "message", "") or ""
        return BackendError(node, f"{where}: {what} {body[:200]}{'; ' + hint if hint else ''}")
    if isinstance(exc, openai.APITimeoutError):
        return BackendError(node, f"{where}: timed out; raise timeout_s or check the server")
    if isinstance(exc, openai.APIConnectionError):
        return BackendError(node, f"{where}: cannot connect; is the server running?")
    return BackendError(node, f"{where}: {type(exc).__name__}: {exc}")


class OpenAIBackend:
    """Streams from OpenAI-compatible endpoints; nodes may use different endpoints."""

    simulated = False

    def __init__(self, default: Endpoint, nodes: Mapping[str, Endpoint] | None = None) -> None:
        self.default = default.check()
        self.nodes = {k: v.check() for k, v in (nodes or {}).items()}
        self.name = f"openai {default.base_url}"
        self._clients: dict[tuple[str, str | None, float, int], openai.AsyncOpenAI] = {}
        self._models: dict[str, set[str] | None] = {}  # per base URL; None: cannot list
        self.active = 0

    async def aclose(self) -> None:
        """Close the HTTP connection pools (also done by ``async with backend:``)."""
        clients, self._clients = list(self._clients.values()), {}
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.close()

    async def __aenter__(self) -> OpenAIBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def endpoint_for(self, node: str, model: str | None) -> Endpoint:
        ep = self.nodes.get(node, self.default)
        return replace(ep, model=model) if model and node not in self.nodes else ep

    def _client(self, ep: Endpoint) -> openai.AsyncOpenAI:
        key = (ep.base_url, ep.api_key_env, ep.timeout_s, ep.max_retries)
        if key not in self._clients:
            api_key = os.environ.get(ep.api_key_env, "") if ep.api_key_env else ""
            if ep.api_key_env and not api_key:
                raise ConfigError(f"environment variable {ep.api_key_env} (the API key for "
                                  f"{ep.base_url}) is not set")
            self._clients[key] = openai.AsyncOpenAI(
                base_url=ep.base_url, api_key=api_key or "not-needed",
                timeout=ep.timeout_s, max_retries=ep.max_retries)
        return self._clients[key]

    @asynccontextmanager
    async def open_stream(self, request: Request) -> AsyncIterator[_Stream]:
        ep = self.endpoint_for(request.node, request.model)
        where = ep.describe()
        try:
            client = self._client(ep)
        except ConfigError as exc:
            raise BackendError(request.node, str(exc)) from None
        await self._check_model(client, ep, request.node)
        prefix = request.prefix.rstrip()
        seam = request.prefix[len(prefix):]
        common: dict[str, Any] = {
            "model": ep.model, "max_tokens": request.max_tokens,
            "temperature": request.temperature, "stream": True,
            "stream_options": {"include_usage": True},
        }
        extra = dict(ep.extra_body or {})
        chat = ep.continuation != "completions"
        try:
            if ep.continuation == "completions":
                stream = await client.completions.create(
                    prompt=render_prompt(ep.prompt_format, request.messages, prefix),
                    extra_body=extra or None, **common)
            else:
                messages: list[Any] = [{"role": m.role, "content": m.content}
                                       for m in request.messages]
                if prefix and ep.continuation == "chat-prefix":
                    messages.append({"role": "assistant", "content": prefix})
                    extra |= {"continue_final_message": True, "add_generation_prompt": False}
                elif prefix:
                    messages[-1] = {"role": "user", "content": messages[-1]["content"] + "\n\n"
                                    + RESTATE.format(prefix=prefix)}
                stream = await client.chat.completions.create(
                    messages=messages, extra_body=extra or None, **common)
        except openai.OpenAIError as exc:
            raise _error(request.node, where, exc) from None
        self.active += 1
        try:
            yield _Stream(stream, seam if prefix else "", chat, where, request.node)
        finally:
            self.active -= 1
            # closing the response frees the server's slot; do it even when cancelled
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await stream.close()

    async def _check_model(self, client: openai.AsyncOpenAI, ep: Endpoint, node: str) -> None:
        """Fail early, and clearly, on a model the endpoint does not serve."""
        if ep.base_url not in self._models:
            try:
                listed = await client.models.list()
                self._models[ep.base_url] = {m.id for m in listed.data} or None
            except openai.APIStatusError:
                self._models[ep.base_url] = None  # the server cannot list models: skip
            except openai.OpenAIError as exc:
                raise _error(node, ep.describe(), exc) from None
        known = self._models[ep.base_url]
        if known is not None and ep.model not in known:
            shown = ", ".join(sorted(known)[:5]) + (" ..." if len(known) > 5 else "")
            raise BackendError(node, f"{ep.describe()}: the server has no such model; it "
                               f"serves {shown}")

    @classmethod
    def for_graph(
        cls, graph: FrozenGraph, *, base_url: str | None = None, model: str | None = None,
        api_key_env: str | None = None, continuation: Continuation | None = None,
        prompt_format: str | None = None, timeout_s: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> OpenAIBackend:
        """Endpoints for every llm node: the arguments (e.g. from the command line) win over
        what the graph sets per node."""
        nodes: dict[str, Endpoint] = {}
        for node in graph.llm_nodes():
            url = base_url or node.base_url
            name = model or node.model
            if not url:
                raise ConfigError(f"node '{node.name}' has no endpoint: set base_url in the "
                                  "graph or pass --base-url")
            if not name:
                raise ConfigError(f"node '{node.name}' has no model: set model in the graph "
                                  "or pass --model")
            cont = continuation or node.continuation or "chat-prefix"
            nodes[node.name] = Endpoint(
                url, name, api_key_env or node.api_key_env, cont,  # type: ignore[arg-type]
                prompt_format or node.prompt_format or "chatml", timeout_s,
                extra_body=extra_body)
        default = next(iter(nodes.values()), Endpoint(base_url or "http://127.0.0.1/v1",
                                                      model or "none"))
        return cls(default, nodes)
