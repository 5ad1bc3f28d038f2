"""The HTTP app of `stairflow serve`, driven in process over ASGI, in virtual time.

No sockets: each test calls the app as Hypercorn would (``scope``, ``receive``, ``send``)
with the simulated backend under Trio's MockClock, so times are exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

import stairflow as sf
from stairflow._serve.app import App, Limits, Served
from stairflow.testing import run_virtual

MOA = sf.resolve_graph("moa")
ASK = {"model": "moa", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}


class Counting:
    """The simulated backend, counting the model streams open at each moment."""

    name = "simulated (counting)"
    simulated = True

    def __init__(self, graph: sf.FrozenGraph, fail_after: int | None = None) -> None:
        self.inner = sf.SimBackend.for_graph(graph)
        self.open = 0
        self.requests: list[sf.Request] = []
        self.fail_after = fail_after

    def rates(self, node: str) -> Any:
        return self.inner.rates(node)

    @asynccontextmanager
    async def open_stream(self, request: sf.Request) -> AsyncIterator[Any]:
        self.open += 1
        self.requests.append(request)
        try:
            async with self.inner.open_stream(request) as stream:
                yield _Failing(stream, self.fail_after) if self.fail_after else stream
        finally:
            self.open -= 1


class _Failing:
    def __init__(self, stream: Any, after: int) -> None:
        self.stream, self.left = stream, after
        self.usage = stream.usage

    def __aiter__(self) -> _Failing:
        return self

    async def __anext__(self) -> str:
        self.left -= 1
        if self.left < 0:
            raise sf.BackendError("p1", "the model server closed the stream")
        token: str = await self.stream.__anext__()
        return token


@dataclass
class Response:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    times: list[float] = field(default_factory=list)  # when each body part was sent

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        """The server-sent events' data, parsed ([DONE] as the string)."""
        out = []
        for block in self.body.decode().split("\n\n"):
            if block:
                assert block.startswith("data: ")
                data = block[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
        return out


async def call(app: App, method: str, path: str, body: Any = None, *,
               headers: tuple[tuple[bytes, bytes], ...] = (),
               leave_after: Callable[[Response], bool] | None = None,
               response: Response | None = None,
               client: tuple[str, int] | None = ("127.0.0.1", 50000)) -> Response:
    """One request from ``client`` (an address and port, as the server saw them; None: not
    known); ``leave_after`` says when the client goes away (disconnects); the answer goes
    into ``response`` as it comes, if given."""
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    parts = [{"type": "http.request", "body": raw, "more_body": False}]
    gone = trio.Event()
    response = Response() if response is None else response

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = dict(message["headers"])
        else:
            response.body += message.get("body", b"")
            response.times.append(trio.current_time())
            if leave_after is not None and leave_after(response):
                gone.set()

    scope = {"type": "http", "method": method, "path": path, "client": client,
             "headers": [(b"content-length", str(len(raw)).encode()), *headers]}
    await app(scope, receive, send)
    return response


def serve(fn: Callable[[App, Counting], Any], *, graph: sf.FrozenGraph = MOA,
          fail_after: int | None = None, **kw: Any) -> Any:
    """Run ``fn(app, backend)`` in virtual time; the run starts at t = 0."""
    backend = Counting(graph, fail_after)
    app = App({graph.name: Served(graph, backend)}, **kw)  # type: ignore[arg-type]
    return trio.run(fn, app, backend, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_streamed_answer_has_the_in_process_ttft_exactly():
    ask = {**ASK, "stream": True, "stream_options": {"include_usage": True}}
    alone = run_virtual(MOA, "Why is the sky blue?")

    async def go(app: App, backend: Counting) -> Response:
        return await call(app, "POST", "/v1/chat/completions", ask)

    r = serve(go)
    assert r.status == 200 and r.headers[b"content-type"].startswith(b"text/event-stream")
    events = r.events()
    assert events[-1] == "[DONE]"
    first, *chunks, last_choice, usage, _ = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "moa" for e in chunks)
    assert {e["id"] for e in events[:-1]} == {first["id"]}
    text = "".join(e["choices"][0]["delta"]["content"] for e in chunks)
    assert text == alone.output
    assert last_choice["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == alone.output_tokens
    extra = usage["usage"]["stairflow"]
    assert extra["llm_calls"] == alone.llm_calls and extra["prompt_tokens"] == alone.prompt_tokens
    assert first["system_fingerprint"] == "stairflow-simulated"
    # the first text leaves the server at the graph's own TTFT: the server adds no time
    first_text = next(t for t, e in zip(r.times, events, strict=False)
                      if isinstance(e, dict) and e["choices"] and
                      e["choices"][0]["delta"].get("content"))
    assert first_text == pytest.approx(alone.ttft_s, abs=1e-9) and extra["ttft_s"] == alone.ttft_s


def test_a_whole_answer_and_max_tokens():
    async def go(app: App, backend: Counting) -> tuple[Response, Response, int, float]:
        whole = await call(app, "POST", "/v1/chat/completions", ASK)
        start = trio.current_time()
        capped = await call(app, "POST", "/v1/chat/completions", {**ASK, "max_tokens": 7})
        return whole, capped, backend.open, trio.current_time() - start

    whole, capped, still_open, took = serve(go)
    assert whole.status == 200
    answer = whole.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == run_virtual(
        MOA, "Why is the sky blue?").output
    assert answer["choices"][0]["finish_reason"] == "stop"
    cut = capped.json()
    assert cut["usage"]["completion_tokens"] == 7 and cut["choices"][0]["finish_reason"] == "length"
    assert len(cut["choices"][0]["message"]["content"].split()) == 7  # one word a token here
    # the capped run was cancelled at its 7th token (not at its end, 7.8 s in), its model
    # streams closed
    assert took < 0.5 and still_open == 0


def test_a_client_that_goes_away_cancels_its_run_and_every_model_stream():
    async def go(app: App, backend: Counting) -> tuple[Response, int, int, float]:
        r = await call(app, "POST", "/v1/chat/completions", {**ASK, "stream": True},
                       leave_after=lambda r: r.body.count(b"content") >= 4)
        return r, backend.open, len(backend.requests), trio.current_time()

    r, still_open, requests, ended = serve(go)
    assert r.status == 200 and b"[DONE]" not in r.body
    assert requests >= 4 and still_open == 0
    assert ended < 1.0  # the proposers would have written for 10 s


def test_temperature_applies_to_the_answering_node_only():
    async def go(app: App, backend: Counting) -> list[sf.Request]:
        await call(app, "POST", "/v1/chat/completions", {**ASK, "temperature": 1.5})
        return backend.requests

    temps = {r.node: r.temperature for r in serve(go)}
    assert temps == {"p1": 0.7, "p2": 0.7, "p3": 0.7, "agg": 1.5}


def test_earlier_turns_come_before_the_last_message():
    async def echo(inputs: sf.Inputs) -> AsyncIterator[str]:
        step = await inputs.collect()
        yield step.text["q"]

    g = sf.Graph("echo")
    q = g.input("q")
    f = g.fn("f", echo)
    g.connect(q, f)
    g.connect(f, g.output("o"))
    graph = g.build()
    turns = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
             {"role": "user", "content": "Why is the sky blue?"}]

    async def go(app: App, backend: Counting) -> Response:
        return await call(app, "POST", "/v1/chat/completions",
                          {"model": "echo", "messages": turns})

    answer = serve(go, graph=graph).json()["choices"][0]["message"]["content"]
    assert answer == "system: Be brief.\n\nuser: Hi\n\nassistant: Hello!\n\nWhy is the sky blue?"


def test_a_model_failing_mid_stream_is_an_error_not_a_short_answer():
    async def go(app: App, backend: Counting) -> tuple[Response, Response]:
        streamed = await call(app, "POST", "/v1/chat/completions", {**ASK, "stream": True})
        whole = await call(app, "POST", "/v1/chat/completions", ASK)
        return streamed, whole

    lines: list[str] = []
    streamed, whole = serve(go, fail_after=20, log=lines.append)
    events = streamed.events()
    assert events[-1] == "[DONE]" and "error" in events[-2]
    # the client learns where; the log why (an upstream's details stay on the server)
    assert re.fullmatch(r"the graph 'moa' failed at node 'p[123]'; the server's log says why",
                        events[-2]["error"]["message"])
    assert any("closed the stream" in line for line in lines)
    assert not any(e["choices"][0]["finish_reason"] for e in events[1:-2])
    assert whole.status == 502 and whole.json()["error"]["code"] == "upstream_error"


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (b"{not json", 400, "invalid_json", "not valid JSON"),
        ({"messages": ASK["messages"]}, 400, None, "'model'"),
        ({**ASK, "messages": []}, 400, None, "'messages'"),
        ({**ASK, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None,
         "'messages.0.role'"),
        ({**ASK, "max_tokens": "ten"}, 400, None, "'max_tokens'"),
        ({**ASK, "temperature": 3}, 400, None, "'temperature'"),
        ({**ASK, "stream": "yes"}, 400, None, "'stream'"),
        ({**ASK, "messages": [{"role": "assistant", "content": "hi"}]}, 400, None,
         "must be the user's"),
        ({**ASK, "max_tokens": 5000}, 400, None, "at most 4096"),
        ({**ASK, "max_completion_tokens": 5000}, 400, None,
         "'max_completion_tokens': 5000; this server allows at most 4096"),
        ({**ASK, "temperature": "0.5"}, 400, None,
         "'temperature': Input should be a number (got '0.5')"),
        ({**ASK, "messages": ASK["messages"] * 300}, 400, None, "at most 256"),
        ({**ASK, "model": "gpt-4"}, 404, "model_not_found", "'gpt-4' does not exist"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", "nests too deeply"),
        (b'{"model": "moa", "n": ' + b"1" * 5000 + b"}", 400, "invalid_json",
         "not valid JSON (Exceeds the limit"),
        ({**ASK, "messages": [{"role": "user", "content": "hi \ud800"}]}, 400, None,
         "unpaired surrogate"),
        ({**ASK, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, None,
         "text parts only"),
        ({**ASK, "stream_options": {"include_usage": True}}, 400, None,
         "only allowed when stream is true"),
        ({**ASK, "messages": [{"role": "user", "content": "x" * 2_000_000}]}, 413,
         "request_too_large", "over 1048576 bytes"),
    ],
)
def test_bad_requests_get_openai_style_errors(body, status, code, says):
    async def go(app: App, backend: Counting) -> tuple[Response, int]:
        return await call(app, "POST", "/v1/chat/completions", body), len(backend.requests)

    r, requests = serve(go)
    assert r.status == status and requests == 0
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert says in error["message"]


def test_keys_routes_and_methods():
    key = (b"authorization", b"Bearer s3cret")

    async def go(app: App, backend: Counting) -> list[Response]:
        return [
            await call(app, "POST", "/v1/chat/completions", ASK),
            await call(app, "POST", "/v1/chat/completions", ASK,
                       headers=((b"authorization", b"Bearer wrong"),)),
            await call(app, "GET", "/v1/models"),
            await call(app, "GET", "/health"),
            await call(app, "GET", "/v1/models", headers=(key,)),
            await call(app, "GET", "/v1/models/moa", headers=(key,)),
            await call(app, "GET", "/v1/models/nope", headers=(key,)),
            await call(app, "GET", "/v1/chat/completions", headers=(key,)),
            await call(app, "GET", "/elsewhere"),
            await call(app, "POST", "/v1/chat/completions", ASK, headers=(key,)),
            await call(app, "HEAD", "/health"),
            await call(app, "HEAD", "/v1/chat/completions", headers=(key,)),
        ]

    lines: list[str] = []
    (no_key, wrong, models_no_key, health, models, one, nope, method, route,
     ok, head, head_post) = serve(go, api_key="s3cret", log=lines.append)
    assert head.status == 200 and head.body == b""  # HEAD: a GET without its body
    assert head.headers[b"content-length"] == health.headers[b"content-length"]
    assert head_post.status == 405
    assert no_key.status == wrong.status == models_no_key.status == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert "s3cret" not in wrong.body.decode() and "wrong" not in wrong.body.decode()
    assert health.status == 200 and health.json()["status"] == "ok"
    assert [m["id"] for m in models.json()["data"]] == ["moa"]
    assert one.json()["id"] == "moa" and nope.status == 404
    assert method.status == 405 and method.headers[b"allow"] == b"POST"
    assert route.status == 404
    assert ok.status == 200
    # one line per request, without the key or the conversation
    assert len(lines) == 12 and not any("s3cret" in x or "sky" in x for x in lines)


def test_past_the_limit_of_runs_at_once_a_request_gets_429():
    async def go(app: App, backend: Counting) -> list[Response]:
        results: list[Response] = []
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(lambda: _append(results, app))
                await trio.testing.wait_all_tasks_blocked()
        return results

    results = serve(go, limits=Limits(max_concurrent=2))
    assert sorted(r.status for r in results) == [200, 200, 429]
    error = next(r for r in results if r.status == 429).json()["error"]
    assert error["code"] == "rate_limit_exceeded"


async def _append(results: list[Response], app: App) -> None:
    results.append(await call(app, "POST", "/v1/chat/completions", ASK))


def test_an_answer_its_node_cut_at_its_own_max_tokens_ends_with_length():
    capped = MOA.capped(30)  # as `stairflow serve moa --max-tokens 30`

    async def go(app: App, backend: Counting) -> Response:
        return await call(app, "POST", "/v1/chat/completions", ASK)

    answer = serve(go, graph=capped).json()
    assert answer["usage"]["completion_tokens"] == 30
    assert answer["choices"][0]["finish_reason"] == "length"


def test_a_server_shutting_down_ends_each_stream_with_an_error_event():
    async def go(app: App, backend: Counting) -> tuple[Response, int]:
        response = Response()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: call(app, "POST", "/v1/chat/completions",
                                            {**ASK, "stream": True}, response=response))
            await trio.sleep(1.0)  # virtual time: the answer is under way
            nursery.cancel_scope.cancel()  # as Hypercorn does past its grace period
        return response, backend.open

    r, still_open = serve(go)
    events = r.events()
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "server_shutdown"
    assert still_open == 0


def test_a_path_cannot_forge_a_log_line():
    lines: list[str] = []

    async def go(app: App, backend: Counting) -> Response:
        return await call(app, "GET", "/x\nstairflow serve: POST /v1/chat/completions 200")

    assert serve(go, log=lines.append).status == 404
    assert len(lines) == 1 and "\n" not in lines[0]


def test_a_body_that_never_ends_gets_408_after_the_timeout():
    async def go(app: App, backend: Counting) -> tuple[Response, float]:
        sent = trio.Event()  # the first part arrives; the rest never does

        async def receive() -> dict[str, Any]:
            if not sent.is_set():
                sent.set()
                return {"type": "http.request", "body": b'{"model": "moa", ', "more_body": True}
            await trio.sleep_forever()
            raise AssertionError

        response = Response()

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
            else:
                response.body += message.get("body", b"")

        await app({"type": "http", "method": "POST", "path": "/v1/chat/completions",
                   "headers": []}, receive, send)
        return response, trio.current_time()

    r, at = serve(go, limits=Limits(body_timeout_s=5))
    assert r.status == 408 and r.json()["error"]["code"] == "request_timeout" and at == 5


def test_a_whole_answer_cut_by_the_servers_shutdown_gets_503():
    async def go(app: App, backend: Counting) -> tuple[Response, int]:
        response = Response()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: call(app, "POST", "/v1/chat/completions", ASK,
                                            response=response))
            await trio.sleep(1.0)  # virtual time: the answer is under way
            nursery.cancel_scope.cancel()  # as Hypercorn does past its grace period
        return response, backend.open

    r, still_open = serve(go)
    assert r.status == 503 and r.json()["error"]["code"] == "server_shutdown"
    assert "retry" in r.json()["error"]["message"] and still_open == 0


def _interrupting() -> sf.FrozenGraph:
    async def interrupt(inputs: sf.Inputs) -> AsyncIterator[str]:
        yield "partial "
        raise KeyboardInterrupt

    g = sf.Graph("ki")
    q = g.input("q")
    f = g.fn("f", interrupt)
    g.connect(q, f)
    g.connect(f, g.output("o"))
    return g.build()


def test_an_fn_node_raising_keyboard_interrupt_is_a_node_error_502():
    async def go(app: App, backend: Counting) -> tuple[Response, Response]:
        ask = {**ASK, "model": "ki"}
        return (await call(app, "POST", "/v1/chat/completions", ask),
                await call(app, "POST", "/v1/chat/completions", {**ask, "stream": True}))

    lines: list[str] = []
    whole, streamed = serve(go, graph=_interrupting(), log=lines.append)
    assert whole.status == 502 and whole.json()["error"]["code"] == "upstream_error"
    assert "at node 'f'" in whole.json()["error"]["message"]
    events = streamed.events()
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_error"
    assert any("raised KeyboardInterrupt" in line for line in lines)


class _StalledClient:
    """A streamed request whose client stops reading at some point: from then on a send
    blocks, shielded from cancellation as Hypercorn's socket writes are, until the client
    goes away (``leave``)."""

    def __init__(self, stops: Callable[[Any], bool]) -> None:
        self.stops = stops
        self.parts = [{"type": "http.request",
                       "body": json.dumps({**ASK, "stream": True}).encode()}]
        self.left = trio.Event()
        self.blocked = trio.Event()
        self.blocked_at = 0.0

    async def receive(self) -> dict[str, Any]:
        if self.parts:
            return self.parts.pop(0)
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        if not self.left.is_set() and self.stops(message):
            if not self.blocked.is_set():
                self.blocked_at = trio.current_time()
                self.blocked.set()
            with trio.CancelScope(shield=True):
                await self.left.wait()

    def leave(self) -> None:
        self.left.set()

    async def request(self, app: App) -> None:
        await app({"type": "http", "method": "POST", "path": "/v1/chat/completions",
                   "headers": [], "client": ("127.0.0.1", 1)}, self.receive, self.send)


def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout():
    sent: list[Any] = []

    def stops(message: Any) -> bool:
        sent.append(message)
        return len(sent) > 3  # the second text: its socket buffer is full

    client = _StalledClient(stops)

    async def go(app: App, backend: Counting) -> list[tuple[int, int]]:
        seen = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.request, app)
            await client.blocked.wait()
            await trio.sleep_until(client.blocked_at + 4.999)  # virtual time
            seen.append((app.in_flight, backend.open))
            await trio.sleep_until(client.blocked_at + 5.001)
            seen.append((app.in_flight, backend.open))
            client.leave()  # the send returns only when the client goes away
        return seen

    lines: list[str] = []
    before, after = serve(go, limits=Limits(send_timeout_s=5), log=lines.append)
    assert 0.2 < client.blocked_at < 0.3
    # 5 s after the send blocked, the run is cancelled with every model stream and its slot
    # is free, though the send (shielded) is still blocked
    assert before[0] == 1 and before[1] > 0 and after == (0, 0)
    assert " 499 the client took nothing for 5 s (send timeout); run cancelled" in lines[-1]


def test_a_client_that_falls_too_far_behind_the_answer_is_cut_off():
    def stops(message: Any) -> bool:  # the first text never leaves
        return b'"content":"' in message.get("body", b"") and \
            b'"content":""' not in message["body"]

    client = _StalledClient(stops)

    async def go(app: App, backend: Counting) -> tuple[int, int]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.request, app)
            await client.blocked.wait()
            await trio.sleep_until(3)  # virtual time
            in_flight, still_open = app.in_flight, backend.open
            client.leave()
        return in_flight, still_open

    lines: list[str] = []
    in_flight, still_open = serve(go, limits=Limits(max_unsent_bytes=200), log=lines.append)
    # cut once 200 bytes of answer waited: before 3 s, long before the 30-s send timeout
    # and the 7.8-s answer's end; the run cancelled, its slot free
    assert in_flight == 0 and still_open == 0
    assert "fell over 200 bytes behind the answer (max_unsent_bytes)" in lines[-1]


def test_a_websocket_handshake_is_refused_with_a_json_error():
    async def handshake(app: App, extensions: dict[str, Any]) -> list[Any]:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: Any) -> None:
            sent.append(message)

        await app({"type": "websocket", "path": "/v1/chat/completions", "headers": [],
                   "extensions": extensions}, receive, send)
        return sent

    async def go(app: App, backend: Counting) -> tuple[list[Any], list[Any]]:
        return (await handshake(app, {"websocket.http.response": {}}),
                await handshake(app, {}))

    lines: list[str] = []
    denied, closed = serve(go, log=lines.append)
    start, body = denied
    assert start["type"] == "websocket.http.response.start" and start["status"] == 400
    error = json.loads(body["body"])["error"]
    assert error["code"] == "websocket_not_supported" and "POST /v1/chat/completions" in \
        error["message"]
    assert closed == [{"type": "websocket.close", "code": 1003}]
    assert lines == ["WebSocket /v1/chat/completions 400 websocket_not_supported"] * 2


def test_a_long_path_and_a_long_model_name_are_cut_short():
    lines: list[str] = []

    async def go(app: App, backend: Counting) -> tuple[Response, Response]:
        return (await call(app, "GET", "/" + "p" * 60_000),
                await call(app, "POST", "/v1/chat/completions", {**ASK, "model": "m" * 50_000}))

    route, model = serve(go, log=lines.append)
    assert route.status == 404 and len(route.body) < 600
    assert f"{'p' * 199}… (60001 characters)" in route.json()["error"]["message"]
    assert model.status == 404 and len(model.body) < 400
    assert f"'{'m' * 80}… (50000 characters)' does not exist" in model.json()["error"]["message"]
    assert all(len(line) < 400 for line in lines)
    assert "… (60001 characters) 404" in lines[0]
