"""The ASGI app of `stairflow serve`: graphs answering as OpenAI chat models, on Trio.

    GET  /health                 200 {"status": "ok", "models", "runs_in_flight"} (no key)
    GET  /metrics                Prometheus metrics (`stairflow._serve.metrics`): loopback
                                 clients only, or with ``metrics_key`` to anyone sending it
    GET  /v1/models              one model per served graph, named as the graph
    GET  /v1/models/{name}
    POST /v1/chat/completions    the graph named by ``model`` runs on the conversation;
                                 its answer streams as server-sent events (``stream``) or
                                 comes whole
    HEAD on the GET routes       as GET, without the body
    WebSocket (any path)         refused: 400 with a JSON error

A request's run is cancelled, with every model request it made, as soon as its client goes
away (``http.disconnect``), or stops reading: nothing could be sent for ``send_timeout_s``,
or a stream's answer ran ``max_unsent_bytes`` ahead of what the client took. Past
``max_concurrent`` runs in flight a request gets 429 at once rather than a queue. A run cut
by the server's shutdown ends its answer with a 503 error (an ``error`` event in a stream).
Requests and answers are never logged unless ``log_prompts``; the client's text in the log
(the path) and in errors (a model's name) is escaped and cut short.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import trio
from pydantic import ValidationError

from .._backends.base import Backend, describe_backend
from .._errors import StairflowError
from .._graph import FrozenGraph, LLMNode
from .._metrics import Report
from .._runtime.run import Run, open_run
from .metrics import CONTENT_TYPE, Metrics
from .schema import ApiError, ChatRequest, clip, conversation, from_validation

__all__ = ["App", "Limits", "Served"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_answer_tokens: int = 4096  # the largest max_tokens a request may ask for
    max_concurrent: int = 32  # runs in flight; more get 429
    body_timeout_s: float = 30.0  # a request's body must arrive within this, or 408
    # a client that takes nothing of the answer for this long is gone: its run is cancelled
    send_timeout_s: float = 30.0
    # a stream's answer text produced but not yet taken by its client: past it, the same
    max_unsent_bytes: int = 1 << 20


@dataclass(frozen=True)
class Served:
    graph: FrozenGraph
    backend: Backend


class _Gone(Exception):
    """The client went away before its request was read."""


def _caller_trace(headers: Iterable[tuple[bytes, bytes]]) -> AbstractContextManager[None]:
    """The W3C trace context the request came with (``traceparent``), current for the block:
    the run's OpenTelemetry spans go under the caller's span. Nothing without OpenTelemetry
    (see `stairflow._otel`)."""
    if "opentelemetry.trace" not in sys.modules:
        return nullcontext()
    from .._otel import remote_parent

    return remote_parent(headers)


@dataclass
class _Seen:
    """What is known of a request, for its log line and the metrics."""

    start: float  # trio time, when it arrived
    route: str = "other"
    graph: str | None = None  # a served graph's name, once the request named one
    ran: bool = False  # its graph ran


class _Client:
    """A request's ``send``, watched: a client that takes nothing for ``timeout_s`` (its
    socket buffer is full: it stopped reading) is cut off (`cut`): the request's scope is
    cancelled, its run with it, its run slot freed (``on_cut``), and nothing more is sent.

    A timer (`watch`), not a timeout around the send: Hypercorn shields its socket writes
    from cancellation, so a send to a client that stopped reading cannot be cancelled; it
    stays blocked, holding only its connection, until the client goes away or the server
    stops, while the run and its slot are let go."""

    def __init__(self, send: Send, timeout_s: float) -> None:
        self.send, self.timeout_s = send, timeout_s
        self.scope = trio.CancelScope()
        self.why: str | None = None  # why it was cut off (None: it was not)
        self.on_cut: list[Callable[[], None]] = []
        self.sends = 0  # sends started
        self.busy_since: float | None = None  # when the send under way started

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if self.why is not None:
            return
        self.sends += 1
        self.busy_since = trio.current_time()
        try:
            await self.send(message)
        finally:
            self.busy_since = None

    async def watch(self) -> None:
        """Cut the client off once one send has waited ``timeout_s``."""
        while self.why is None:
            since, n = self.busy_since, self.sends
            if since is None:
                await trio.sleep(self.timeout_s)
                continue
            await trio.sleep_until(since + self.timeout_s)
            if self.busy_since == since and self.sends == n:
                self.cut(f"the client took nothing for {self.timeout_s:g} s (send timeout)")

    def cut(self, why: str) -> None:
        if self.why is None:
            self.why = why
            self.scope.cancel()
            for release in self.on_cut:
                release()


class App:
    def __init__(self, graphs: Mapping[str, Served], *, api_key: str | None = None,
                 limits: Limits = Limits(), log: Callable[[str], None] = lambda line: None,
                 log_prompts: bool = False, metrics_key: str | None = None) -> None:
        """``metrics_key``: anyone sending it (``Authorization: Bearer KEY``) may read
        ``/metrics``; without it, only clients on loopback may."""
        self.graphs = dict(graphs)
        self.limits = limits
        self.log = log
        self.log_prompts = log_prompts
        self.in_flight = 0
        self.created = int(time.time())
        self._key = None if api_key is None else api_key.encode()
        self._metrics_key = None if metrics_key is None else metrics_key.encode()
        self.metrics = Metrics(self.graphs)
        for served in self.graphs.values():  # an upstream's failures, as they happen
            listeners = getattr(served.backend, "error_listeners", None)
            if isinstance(listeners, list):
                listeners.append(self.metrics.upstream_error)
        # what each answer says it came from: a simulated backend's text is a placeholder
        self.fingerprints = {name: "stairflow-simulated" if describe_backend(s.backend).simulated
                             else "stairflow" for name, s in self.graphs.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        seen = _Seen(trio.current_time())
        client = _Client(send, self.limits.send_timeout_s)
        status, note = 500, ""
        try:
            async with trio.open_nursery() as watching:
                watching.start_soon(client.watch)
                try:
                    with client.scope:
                        status, note = await self._route(scope, receive, client, seen)
                    if client.why is not None:
                        status, note = 499, f"{client.why}; run cancelled"
                except ApiError as exc:
                    status, note = exc.status, exc.code or exc.kind
                    await _json(_headless(client) if scope["method"] == "HEAD" else client,
                                exc.status, exc.body(), exc.headers)
                except _Gone:
                    status, note = 499, "client went away"
                finally:
                    watching.cancel_scope.cancel()
        except BaseException as exc:
            if _cancelled(exc):
                status, note = 503, "cut by the server's shutdown"
            raise
        finally:
            self.metrics.request(seen.route, seen.graph, status)
            if seen.ran and seen.graph is not None:
                self.metrics.total.labels(seen.graph).observe(trio.current_time() - seen.start)
            path, method = _logged(scope["path"], 200), _logged(scope["method"], 20)
            self.log(f"{method} {path} {status} {note} "
                     f"{time.perf_counter() - start:.3f}s".replace("  ", " "))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake: refused with a JSON error (an HTTP answer where the server
        can send one, else a close, which the server answers with 403)."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        error = ApiError(400, "this server does not speak WebSocket; use HTTP: POST "
                              "/v1/chat/completions (with \"stream\": true for server-sent "
                              "events)", code="websocket_not_supported")
        if "websocket.http.response" in scope.get("extensions", {}):
            body = json.dumps(error.body()).encode()
            await send({"type": "websocket.http.response.start", "status": 400, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1003})
        self.metrics.request("other", None, 400)
        self.log(f"WebSocket {_logged(scope['path'], 200)} 400 websocket_not_supported")

    async def _route(self, scope: Scope, receive: Receive, send: _Client,
                     seen: _Seen) -> tuple[int, str]:
        method, path = scope["method"], scope["path"].rstrip("/")
        out: Send = send
        if method == "HEAD" and (path in ("/health", "/metrics") or path.startswith("/v1/models")):
            method, out = "GET", _headless(send)  # a GET's status and headers, no body
        if path == "/health":
            seen.route = "health"
            _allow(method, "GET")
            await _json(out, 200, {"status": "ok", "models": sorted(self.graphs),
                                   "runs_in_flight": self.in_flight})
            return 200, ""
        if path == "/metrics":
            seen.route = "metrics"
            _allow(method, "GET")
            self._check_metrics_access(scope)
            body = self.metrics.text()
            await out({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode())]})
            await out({"type": "http.response.body", "body": body, "more_body": False})
            return 200, ""
        if path == "/v1/models" or path.startswith("/v1/models/"):
            seen.route = "models"
            _allow(method, "GET")
            self._check_key(scope)
            if path == "/v1/models":
                await _json(out, 200, {"object": "list", "data": [
                    self._model(name) for name in sorted(self.graphs)]})
            else:
                await _json(out, 200, self._model(self._served(path[len("/v1/models/"):])[0]))
            return 200, ""
        if path == "/v1/chat/completions":
            seen.route = "chat"
            _allow(method, "POST")
            self._check_key(scope)
            request = self._parse(await self._body(scope, receive))
            name, served = self._served(request.model)
            seen.graph = name
            if self.in_flight >= self.limits.max_concurrent:
                self.metrics.rate_limited.labels(name).inc()
                raise ApiError(429, f"this server runs at most {self.limits.max_concurrent} "
                                    "requests at once; retry shortly", kind="requests",
                               code="rate_limit_exceeded")
            self.in_flight += 1
            gauge = self.metrics.in_flight.labels(name)
            gauge.inc()
            seen.ran = True
            released = False

            def release() -> None:  # once: at the end, or when the client is cut off
                nonlocal released
                if not released:
                    released = True
                    self.in_flight -= 1
                    gauge.dec()

            send.on_cut.append(release)
            try:
                with _caller_trace(scope["headers"]):  # a served run joins its caller's trace
                    return await self._complete(name, served, request, receive, send, seen)
            finally:
                release()
        raise ApiError(404, f"no route {clip(method, 20)} {clip(scope['path'], 200)}; this "
                            "server answers /v1/chat/completions, /v1/models, /health and "
                            "/metrics", code="not_found")

    # checks

    def _check_key(self, scope: Scope) -> None:
        if self._key is not None and not _bearer(scope, self._key):
            raise ApiError(401, "missing or incorrect API key: send the key given to this "
                                "server as 'Authorization: Bearer KEY'", code="invalid_api_key")

    def _check_metrics_access(self, scope: Scope) -> None:
        """With a metrics key, whoever sends it; without one, loopback clients only."""
        if self._metrics_key is not None:
            if not _bearer(scope, self._metrics_key):
                raise ApiError(401, "missing or incorrect metrics key: send the key given to "
                                    "this server with --metrics-key-env as 'Authorization: "
                                    "Bearer KEY'", code="invalid_api_key")
            return
        if not _loopback_client(scope):
            raise ApiError(403, "/metrics answers clients on this machine (loopback) only; "
                                "to let others read it, start the server with "
                                "--metrics-key-env VAR and send 'Authorization: Bearer KEY'",
                           kind="permission_error", code="metrics_loopback_only")

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = ApiError(413, f"the request body is over {limit} bytes",
                           code="request_too_large")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        with trio.move_on_after(self.limits.body_timeout_s):  # a client trickling its body
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Gone
                body += message.get("body", b"")
                if len(body) > limit:
                    raise too_big
                if not message.get("more_body", False):
                    return bytes(body)
        raise ApiError(408, f"the request body did not arrive within "
                            f"{self.limits.body_timeout_s:g} s", code="request_timeout")

    def _parse(self, body: bytes) -> ChatRequest:
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})",
                           code="invalid_json") from None
        except ValueError as exc:  # e.g. an integer of over 4,300 digits
            raise ApiError(400, f"the request body is not valid JSON ({str(exc)[:80]})",
                           code="invalid_json") from None
        except RecursionError:
            raise ApiError(400, "the request body nests too deeply", code="invalid_json") from None
        try:
            request = ChatRequest.model_validate(data)
        except ValidationError as exc:
            raise from_validation(exc) from None
        except RecursionError:
            raise ApiError(400, "the request body nests too deeply", code="invalid_json") from None
        if len(request.messages) > self.limits.max_messages:
            raise ApiError(400, f"'messages': {len(request.messages)} messages; this server "
                                f"takes at most {self.limits.max_messages}", param="messages")
        cap = request.answer_cap
        if cap is not None and cap > self.limits.max_answer_tokens:
            field = ("max_completion_tokens" if request.max_completion_tokens is not None
                     else "max_tokens")  # the one the client sent (it takes precedence)
            raise ApiError(400, f"'{field}': {cap}; this server allows at most "
                                f"{self.limits.max_answer_tokens}", param=field)
        return request

    def _served(self, model: str) -> tuple[str, Served]:
        if model not in self.graphs:
            raise ApiError(404, f"the model '{clip(model, 80)}' does not exist here; this server "
                                f"serves {', '.join(sorted(self.graphs))}", param="model",
                           code="model_not_found")
        return model, self.graphs[model]

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created,
                "owned_by": self.fingerprints[name]}

    # the run

    async def _complete(self, name: str, served: Served, request: ChatRequest,
                        receive: Receive, send: _Client, seen: _Seen) -> tuple[int, str]:
        message = conversation(request.messages)
        graph = _for_request(served.graph, request)
        answer = _Answer(request.answer_cap)
        fingerprint = self.fingerprints[name]
        reply = _Reply(send, name, fingerprint, request) if request.stream else None
        if reply is not None:
            await reply.start()
        runs: list[Run] = []
        error: str | None = None
        failed_node: str | None = None
        gone = False
        produced = 0  # bytes of answer text that reached the output (for a stream's bound)
        limit = self.limits.max_unsent_bytes
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:  # a client that goes away cancels its run
                    nonlocal gone
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    gone = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                try:
                    async with open_run(graph, message, backend=served.backend,
                                        mode=graph.mode) as run:
                        runs.append(run)
                        trace = run.trace

                        if reply is not None:
                            streaming = reply

                            def count() -> None:  # at each event: what the client has not taken
                                nonlocal produced
                                if trace.last_kind() == "output":
                                    produced += len(trace.events[-1].data["text"].encode())
                                    if produced - streaming.sent > limit:
                                        send.cut(f"the client fell over {limit} bytes behind "
                                                 "the answer (max_unsent_bytes)")

                            trace.wakers.append(count)
                        async for event in run:
                            if event.kind != "chunk" or event.data["edge"][1] != graph.output:
                                continue
                            piece = answer.take(event.data)
                            if piece and answer.first is None:
                                answer.first = trio.current_time()
                                self.metrics.ttft.labels(name).observe(answer.first - seen.start)
                            if reply is not None and piece:
                                await reply.delta(piece)
                            if answer.full:
                                run.cancel()
                                break
                except StairflowError as exc:
                    error = str(exc)
                    failed_node = getattr(exc, "node", None)
                except BaseException as exc:
                    # cancelled from outside: the server is shutting down (a client that went
                    # away, or stopped reading, cancels only its own scopes, and returns below)
                    if not gone and send.why is None and _cancelled(exc):
                        shutdown = ApiError(503, "the server is shutting down; retry the request",
                                            kind="server_error", code="server_shutdown")
                        with trio.move_on_after(1) as cleanup:
                            cleanup.shield = True
                            if reply is not None:
                                await reply.error(shutdown)
                            else:
                                await _json(send, 503, shutdown.body())
                    raise
                nursery.cancel_scope.cancel()
        finally:
            report = runs[0].report() if runs else None
            self.metrics.completion_tokens.labels(name).inc(answer.tokens)
            if report is not None:
                self.metrics.prompt_tokens.labels(name).inc(report.prompt_tokens)
        if gone:
            return 499, f"{name}: client went away, run cancelled"
        usage = _usage(answer, report)
        if self.log_prompts:
            self.log(f"prompt {json.dumps(message)} answer {json.dumps(answer.text)}")
        ttft = "-" if report is None or report.ttft_s is None else f"{report.ttft_s:.3f}s"
        note = f"{name} ttft={ttft} tokens={answer.tokens}"
        if error is not None:
            # where it failed for the client; why (endpoints, exceptions) only in the log
            self.log(f"{name} failed: {error}")
            where = f" at node '{failed_node}'" if failed_node else ""
            failure = ApiError(502, f"the graph '{name}' failed{where}; the server's log says "
                                    "why", kind="server_error", code="upstream_error")
            if reply is None:
                raise failure
            await reply.error(failure)
            return 200, f"{note} failed mid-stream"
        finish = "length" if answer.full or _at_its_limit(graph, report) else "stop"
        if reply is not None:
            await reply.finish(finish, usage)
        else:
            await _json(send, 200, {
                "id": _id(), "object": "chat.completion", "created": int(time.time()),
                "model": name, "system_fingerprint": fingerprint, "choices": [{
                    "index": 0, "finish_reason": finish, "logprobs": None,
                    "message": {"role": "assistant", "content": answer.text}}],
                "usage": usage})
        return 200, note


class _Answer:
    """The answer's text as it reaches the output, cut at ``cap`` tokens."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.text, self.tokens, self.full = "", 0, False
        self.first: float | None = None  # when its first text came (trio time)

    def take(self, chunk: Mapping[str, Any]) -> str:
        text, tokens = chunk["text"], chunk["tokens"]
        if self.cap is not None and self.tokens + tokens >= self.cap:
            keep = self.cap - self.tokens
            ends = chunk["token_ends"]
            if keep < len(ends):
                text = text[:ends[keep - 1]] if keep > 0 else ""
            tokens, self.full = keep, True
        self.text += text
        self.tokens += tokens
        return str(text)


class _Reply:
    """A streamed answer: OpenAI's ``chat.completion.chunk`` server-sent events."""

    def __init__(self, send: Send, model: str, fingerprint: str, request: ChatRequest) -> None:
        self.send, self.model, self.fingerprint = send, model, fingerprint
        self.id, self.created = _id(), int(time.time())
        self.sent = 0  # bytes of answer text the client has taken
        options = request.stream_options
        self.include_usage = bool(options and options.include_usage)

    async def start(self) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
        await self._chunk({"role": "assistant", "content": ""})

    async def delta(self, text: str) -> None:
        await self._chunk({"content": text})
        self.sent += len(text.encode())

    async def finish(self, reason: str, usage: dict[str, Any]) -> None:
        await self._chunk({}, reason)
        if self.include_usage:
            await self._event({**self._head(), "choices": [], "usage": usage})
        await self._end()

    async def error(self, error: ApiError) -> None:
        await self._event(error.body())
        await self._end()

    def _head(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": self.fingerprint}

    async def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> None:
        await self._event({**self._head(), "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **({"usage": None} if self.include_usage else {})})

    async def _event(self, data: dict[str, Any]) -> None:
        body = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def _end(self) -> None:
        await self.send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                         "more_body": False})


def _for_request(graph: FrozenGraph, request: ChatRequest) -> FrozenGraph:
    """The graph with the request's temperature on the llm nodes whose answer is the
    reply (the others keep theirs: a Mixture-of-Agents wants its proposers' variety)."""
    if request.temperature is None:
        return graph
    answering = {e.src for e in graph.inputs_of(graph.output)}
    nodes = {n: replace(v, temperature=float(request.temperature))
             if isinstance(v, LLMNode) and n in answering else v
             for n, v in graph.nodes.items()}
    return replace(graph, nodes=nodes)


def _cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is Trio's cancellation, alone or in groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _at_its_limit(graph: FrozenGraph, report: Report | None) -> bool:
    """Whether the llm node whose answer is the reply wrote its whole ``max_tokens``."""
    for edge in graph.inputs_of(graph.output):
        node = graph.nodes[edge.src]
        if isinstance(node, LLMNode) and report is not None and edge.src in report.nodes:
            return bool(report.nodes[edge.src].tokens >= node.max_tokens)
    return False


def _usage(answer: _Answer, report: Report | None) -> dict[str, Any]:
    prompt = report.prompt_tokens if report is not None else 0
    extra = {} if report is None else {
        "graph": report.graph, "mode": report.mode, "simulated": report.simulated,
        "ttft_s": report.ttft_s, "total_s": report.total_s, "llm_calls": report.llm_calls,
        "prompt_tokens": report.prompt_tokens, "cached_tokens": report.cached_tokens}
    return {"prompt_tokens": prompt, "completion_tokens": answer.tokens,
            "total_tokens": prompt + answer.tokens,
            "prompt_tokens_details": {"cached_tokens": extra.get("cached_tokens", 0)},
            "stairflow": extra}


def _id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _headless(send: Send) -> Send:
    """``send`` for a HEAD request: the response's start as it is, its body dropped."""
    async def headless(message: Any) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)
    return headless


def _logged(text: str, limit: int) -> str:
    """The client's ``text`` fit for the log: escaped, on one line, cut short (`clip`)."""
    escaped = json.dumps(text[:limit])[1:-1]
    return escaped if len(text) <= limit else f"{escaped}… ({len(text)} characters)"


def _bearer(scope: Scope, key: bytes) -> bool:
    """Whether the request sends ``Authorization: Bearer KEY`` (compared in constant time)."""
    given = dict(scope["headers"]).get(b"authorization", b"")
    scheme, _, token = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)


def _loopback_client(scope: Scope) -> bool:
    """Whether the client's address (as the server saw it) is a loopback one."""
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(str(client[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise ApiError(405, f"use {allowed} here, not {method}", code="method_not_allowed",
                       headers={"allow": allowed})


async def _json(send: Send, status: int, data: dict[str, Any],
                headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in (headers or {}).items())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
