"""Choosing and building a run's backend: one resolution for the CLI and for Python.

Where each llm node's model lives, first match wins:

1. the node's own ``base_url`` (with its own ``model`` and ``api_key_env``) - a graph can spread
   its agents over several servers and models;
2. the run's default endpoint: ``--base-url``/``--model`` on the command line, or
   ``base_url=``/``model=`` passed to `run`/`open_run`/`open_backend`;
3. the embedded local model (llama.cpp serving Gemma 3 270M), started for the run, or the one
   ``stairflow local start`` keeps running.

``continuation``, ``prompt_format``, ``api_key_env`` and ``timeout_s`` follow the same order
(node, then run option, then the endpoint's default). The simulated backend is used only when
asked for (``"sim"``, a `SimBackend`, or the virtual clock). Every check that needs no network
(URLs, key variables, models) runs before the first request, and its error names the node.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from .._errors import ConfigError
from .._graph import CONTINUATIONS, PROMPT_FORMATS, FrozenGraph, Graph
from .._urls import ENV_NAME, display_url, url_problem
from .base import Backend, Completion, Request, describe_backend
from .sim import SimBackend

if TYPE_CHECKING:
    from .openai import Endpoint

__all__ = ["BackendChoice", "EndpointOptions", "needs_local_model", "open_backend",
           "plan_endpoints", "sharing_local_model"]

BackendChoice = Literal["auto", "local", "openai", "sim"]
CHOICES: tuple[BackendChoice, ...] = ("auto", "local", "openai", "sim")
LOCAL = "<local model>"  # stands for the local server's URL until it is known


class EndpointOptions(TypedDict, total=False):
    """The run's default endpoint and settings (the command line's ``--base-url`` etc.)."""

    base_url: str
    model: str
    api_key_env: str
    continuation: Literal["chat-prefix", "completions", "chat-restate"]
    prompt_format: Literal["gemma", "chatml", "llama3", "document"]
    timeout_s: float
    extra_body: Mapping[str, Any]  # extra request fields (e.g. {"ignore_eos": True})


@dataclass(frozen=True)
class Planned:
    """Where one node's requests go, before any server is started."""

    node: str
    base_url: str  # LOCAL for the embedded model
    model: str
    api_key_env: str | None
    continuation: str
    prompt_format: str
    timeout_s: float | None
    extra_body: Mapping[str, Any]


def _check_url(url: str, what: str) -> None:
    problem = url_problem(url)
    if problem is not None:
        raise ConfigError(f"{what} {display_url(url)!r} is not usable: {problem}; use one like "
                          "http://127.0.0.1:8000/v1")


def _check_names(opts: Mapping[str, Any]) -> None:
    known = set(EndpointOptions.__annotations__)
    for key in opts:
        if key not in known:
            hint = (" (virtual time: sf.run(..., virtual_clock=True), or open_run inside "
                    "trio.run(..., clock=trio.testing.MockClock(autojump_threshold=0)))"
                    if key == "virtual_clock" else "")
            raise ConfigError(f"unknown option {key!r}; the backend options are "
                              f"{', '.join(sorted(known))}{hint}")


def _check_options(opts: Mapping[str, Any]) -> None:
    _check_names(opts)
    for key, value in opts.items():
        if key == "timeout_s":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e9
            if not ok:
                raise ConfigError(f"timeout_s={value!r}; use a number of seconds > 0")
        elif key == "extra_body":
            if not isinstance(value, Mapping):
                raise ConfigError(f"extra_body={value!r}; use a mapping of request fields")
        elif not isinstance(value, str) or not value:
            raise ConfigError(f"{key}={value!r}; use a non-empty string")
    if "base_url" in opts:
        _check_url(opts["base_url"], "base_url")
    elif "model" in opts:
        raise ConfigError("a default model needs a default endpoint: give base_url (--base-url) "
                          "too; the local model serves only its own")
    if "api_key_env" in opts and not ENV_NAME.match(opts["api_key_env"]):
        raise ConfigError(f"api_key_env={opts['api_key_env']!r}; use the name of an "
                          "environment variable, e.g. OPENAI_API_KEY")
    for key, allowed in (("continuation", CONTINUATIONS), ("prompt_format", PROMPT_FORMATS)):
        if key in opts and opts[key] not in allowed:
            raise ConfigError(f"{key}={opts[key]!r}; use one of {', '.join(allowed)}")


def plan_endpoints(
    graph: FrozenGraph, choice: BackendChoice, opts: Mapping[str, Any]
) -> list[Planned]:
    """Each llm node's endpoint, by the rules in the module docs (no network needed)."""
    _check_options(opts)
    default_url = opts.get("base_url")
    if choice == "local" and default_url:
        raise ConfigError("the local backend and a base URL contradict each other; drop one")
    planned = []
    for node in graph.llm_nodes():
        at = f"graph '{graph.name}', node '{node.name}'"
        if node.base_url:
            url, model, key = node.base_url, node.model or "", node.api_key_env  # build() checks
        else:
            if choice == "openai" and not default_url:
                raise ConfigError(f"{at} has no endpoint: set base_url for it in the graph, or "
                                  "give a default one (--base-url / base_url=)")
            url = default_url or LOCAL
            model = node.model or opts.get("model") or ("" if default_url else _local_model())
            if not model:
                raise ConfigError(f"{at} has no model: set model in the graph, or give a "
                                  "default one (--model / model=)")
            key = node.api_key_env or opts.get("api_key_env")
        _check_key(key, at)
        local = url == LOCAL
        planned.append(Planned(
            node.name, url, model, key,
            node.continuation or opts.get("continuation")
            or ("completions" if local else "chat-prefix"),
            node.prompt_format or opts.get("prompt_format") or ("document" if local else "chatml"),
            node.timeout_s or opts.get("timeout_s"),
            {**(_local_extra() if local else {}), **opts.get("extra_body", {})},
        ))
    return planned


def _check_key(var: str | None, at: str) -> None:
    if not var:
        return
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"{at}: environment variable {var} (its API key) is not set; "
                          "export it, or remove api_key_env")
    if not value:
        raise ConfigError(f"{at}: environment variable {var} (its API key) is empty; put the "
                          "key in it, or remove api_key_env")
    if not value.isprintable() or not value.isascii():
        raise ConfigError(f"{at}: environment variable {var} (its API key) holds characters "
                          "that cannot go in an HTTP header (a line break?); check its value")


def _local_extra() -> dict[str, Any]:
    from .local import LOCAL_SETTINGS

    return dict(LOCAL_SETTINGS["extra_body"])


def _local_model() -> str:
    from .local import LOCAL_MODEL

    return LOCAL_MODEL


def _endpoints(plan: list[Planned], local_url: str | None) -> dict[str, Endpoint]:
    from .openai import Endpoint

    out = {}
    for p in plan:
        local = p.base_url == LOCAL
        extra: dict[str, Any] = {"extra_body": p.extra_body} if p.extra_body else {}
        if p.timeout_s is not None:
            extra["timeout_s"] = p.timeout_s
        out[p.node] = Endpoint(
            local_url if local and local_url else p.base_url, p.model, p.api_key_env,
            p.continuation, p.prompt_format, **extra,  # type: ignore[arg-type]
        )
    return out


def _name(endpoints: Mapping[str, Endpoint], local_url: str | None) -> str:
    """The backend's name, as banners, reports and traces show it: no URL's credentials."""
    if local_url is not None and {e.base_url for e in endpoints.values()} == {local_url}:
        return f"local {_local_model()} at {local_url}"
    urls = sorted({display_url(e.base_url) for e in endpoints.values()})
    if len(urls) == 1:
        return f"openai {urls[0]}"
    return f"openai ({len(urls)} endpoints: {', '.join(urls)})"


@asynccontextmanager
async def open_backend(
    graph: Graph | FrozenGraph,
    backend: BackendChoice | Backend | None = "auto",
    **options: Any,
) -> AsyncIterator[Backend]:
    """The backend a run of ``graph`` uses, ready for requests; closed (and a local server it
    started, stopped) when the block ends. A `Backend` object is used as given (a
    `SimBackend` takes the graph's timing settings) and left open: its owner closes it.
    ``options`` are the run's default endpoint and settings (see `EndpointOptions`)."""
    choice = "auto" if backend is None else backend
    _check_names(options)
    if isinstance(graph, Graph):
        graph = graph.build()
    if not isinstance(choice, str):
        describe_backend(choice)
        if options:
            raise ConfigError(f"{next(iter(options))}= applies to the built-in backends, not "
                              "to a backend object; configure the object instead")
        if isinstance(choice, SimBackend):
            choice.attach(graph)
        yield choice
        return
    if choice in ("sim", "simulated"):
        if options:
            raise ConfigError(f"{next(iter(options))}= does not apply to the simulated backend")
        yield SimBackend.for_graph(graph)
        return
    if choice not in CHOICES:
        raise ConfigError(f"unknown backend {choice!r}; use one of {', '.join(CHOICES)}, or "
                          "pass a Backend object")
    plan = plan_endpoints(graph, choice, options)
    if not plan:  # no llm nodes: nothing to connect to
        yield NoModels()
        return
    if any(p.base_url == LOCAL for p in plan):
        async with _local_url() as url, _openai(plan, url) as built:
            yield built
    else:
        async with _openai(plan, None) as built:
            yield built


class NoModels:
    """The backend of a graph without llm nodes: it is never asked for anything."""

    name = "none (no llm nodes)"
    simulated = False

    def open_stream(self, request: Request) -> AbstractAsyncContextManager[Completion]:
        raise ConfigError(f"node '{request.node}' asked for a model, but the graph has no "
                          "llm nodes")


_SHARED_LOCAL: ContextVar[str | None] = ContextVar("stairflow_shared_local", default=None)


def needs_local_model(graph: FrozenGraph, choice: BackendChoice | Backend | None,
                      options: Mapping[str, Any]) -> bool:
    """Whether `open_backend` would start (or reuse) the local model for ``graph``."""
    if not isinstance(choice, str) or choice in ("sim", "simulated"):
        return False
    return any(p.base_url == LOCAL for p in plan_endpoints(graph, choice, options))


@asynccontextmanager
async def sharing_local_model() -> AsyncIterator[str]:
    """The local model, started once (or the one ``stairflow local start`` keeps) for every
    backend opened within the block: a process that serves several graphs runs one
    llama-server, not one per graph. Yields its URL."""
    async with _local_url() as url:
        token = _SHARED_LOCAL.set(url)
        try:
            yield url
        finally:
            _SHARED_LOCAL.reset(token)


@asynccontextmanager
async def _local_url() -> AsyncIterator[str]:
    from .local import open_local_server
    from .probe import running_server_url

    url = _SHARED_LOCAL.get() or await running_server_url()
    if url is not None:
        yield url
        return
    async with open_local_server() as server:
        yield server.base_url


@asynccontextmanager
async def _openai(plan: list[Planned], local_url: str | None) -> AsyncIterator[Backend]:
    from .openai import Endpoint, OpenAIBackend

    endpoints = _endpoints(plan, local_url)
    default = next(iter(endpoints.values()), Endpoint("http://127.0.0.1/v1", "none"))
    built = OpenAIBackend(default, endpoints)
    built.name = _name(endpoints, local_url)
    if local_url is not None:  # a new port each time: remember its rates by what it is
        built.cache_names[local_url] = "local"
    try:
        yield built
    finally:
        await built.aclose()
