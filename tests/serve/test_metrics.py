"""`GET /metrics` of `stairflow serve`: Prometheus's text format, parsed with
prometheus-client's own parser; who may read it; labels that stay bounded and hold no
secret. In process over ASGI, in virtual time (see test_app)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import stairflow as sf
from stairflow._serve.app import App, Limits, Served
from stairflow._serve.metrics import endpoint_label

from .test_app import ASK, MOA, Counting, Response, call, serve


def samples(r: Response) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition: (name, sorted labels) -> value."""
    assert r.status == 200 and r.headers[b"content-type"].startswith(b"text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(r.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_ttft_tokens_and_429s():
    async def go(app: App, backend: Counting) -> tuple[list[Response], Response]:
        done: list[Response] = []

        async def one(body: Any) -> None:
            done.append(await call(app, "POST", "/v1/chat/completions", body))

        async with trio.open_nursery() as nursery:  # two at once, past the limit of one
            nursery.start_soon(one, {**ASK, "stream": True, "max_tokens": 12})
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(one, ASK)
        done.append(await call(app, "POST", "/v1/chat/completions", {**ASK, "max_tokens": 5}))
        done.append(await call(app, "POST", "/v1/chat/completions",
                               {**ASK, "model": "gpt-4-" + "x" * 5000}))
        done.append(await call(app, "GET", "/health"))
        return done, await call(app, "GET", "/metrics")

    done, metrics = serve(go, limits=Limits(max_concurrent=1))
    assert sorted(r.status for r in done) == [200, 200, 200, 404, 429]  # the 429 ends first
    m = samples(metrics)
    chat = (("graph", "moa"), ("route", "chat"))
    assert m[("stairflow_requests_total", (*chat, ("status", "200")))] == 2
    assert m[("stairflow_requests_total", (*chat, ("status", "429")))] == 1
    # a model the server lacks is counted under no graph: the client's string is no label
    assert m[("stairflow_requests_total", (("graph", ""), ("route", "chat"),
                                           ("status", "404")))] == 1
    assert "gpt-4" not in metrics.body.decode()
    assert m[("stairflow_requests_total", (("graph", ""), ("route", "health"),
                                           ("status", "200")))] == 1
    assert m[("stairflow_rate_limited_total", (("graph", "moa"),))] == 1
    assert m[("stairflow_runs_in_flight", (("graph", "moa"),))] == 0
    assert m[("stairflow_completion_tokens_total", (("graph", "moa"),))] == 12 + 5
    assert m[("stairflow_prompt_tokens_total", (("graph", "moa"),))] > 0
    moa = (("graph", "moa"),)
    assert m[("stairflow_ttft_seconds_count", moa)] == 2
    assert m[("stairflow_request_duration_seconds_count", moa)] == 2
    # virtual time: the first text leaves at the graph's own TTFT (0.244 s simulated)
    assert m[("stairflow_ttft_seconds_bucket", (*moa, ("le", "0.25")))] == 2
    assert m[("stairflow_ttft_seconds_bucket", (*moa, ("le", "0.1")))] == 0


def test_runs_in_flight_while_a_run_is_under_way():
    async def go(app: App, backend: Counting) -> Response:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, app, "POST", "/v1/chat/completions", ASK)
            await trio.sleep(1.0)  # virtual time: the run is under way
            metrics = await call(app, "GET", "/metrics")
            nursery.cancel_scope.cancel()
        return metrics

    assert samples(serve(go))[("stairflow_runs_in_flight", (("graph", "moa"),))] == 1


@pytest.mark.parametrize(("client", "status"), [
    (("127.0.0.1", 4000), 200), (("127.8.9.10", 4000), 200), (("::1", 4000), 200),
    (("::ffff:127.0.0.1", 4000), 200), (("10.1.2.3", 4000), 403), (("2001:db8::1", 4000), 403),
    (("::ffff:10.1.2.3", 4000), 403), (None, 403), (("not-an-address", 1), 403)])
def test_without_a_metrics_key_only_loopback_clients_read_metrics(client, status):
    async def go(app: App, backend: Counting) -> tuple[Response, Response]:
        return (await call(app, "GET", "/metrics", client=client),
                await call(app, "HEAD", "/metrics", client=client))

    got, head = serve(go, api_key="api-key")  # the API key does not open /metrics
    assert got.status == head.status == status and head.body == b""
    if status == 403:
        error = got.json()["error"]
        assert error["code"] == "metrics_loopback_only" and "--metrics-key-env" in error["message"]


def test_with_a_metrics_key_anyone_sending_it_reads_metrics_and_no_one_else():
    key = (b"authorization", b"Bearer m3trics")
    remote = ("10.1.2.3", 4000)

    async def go(app: App, backend: Counting) -> list[Response]:
        return [await call(app, "GET", "/metrics", headers=(key,), client=remote),
                await call(app, "GET", "/metrics"),  # loopback, no key
                await call(app, "GET", "/metrics", client=remote,
                           headers=((b"authorization", b"Bearer api-key"),)),
                await call(app, "POST", "/metrics", headers=(key,))]

    ok, loopback, api_key, post = serve(go, api_key="api-key", metrics_key="m3trics")
    assert ok.status == 200 and samples(ok)
    assert loopback.status == api_key.status == 401
    assert loopback.json()["error"]["code"] == "invalid_api_key"
    assert "m3trics" not in loopback.body.decode()
    assert post.status == 405 and post.headers[b"allow"] == b"GET"


class FailingUpstream:
    """A backend whose endpoint fails every request (rate limited), telling its listeners
    as the OpenAI-compatible backend does."""

    name = "failing"

    def __init__(self, url: str) -> None:
        self.url = url
        self.error_listeners: list[Any] = []

    @asynccontextmanager
    async def open_stream(self, request: sf.Request) -> AsyncIterator[Any]:
        for listener in self.error_listeners:
            listener(self.url, "http_429")
        raise sf.BackendError(request.node, "HTTP 429 rate limited")
        yield


def test_upstream_errors_are_counted_by_endpoint_and_kind_with_no_secret():
    url = "https://user:pa55word@models.example:8443/v1?api-key=s3cret#frag"
    backend = FailingUpstream(url)
    app = App({"moa": Served(MOA, backend)})  # type: ignore[arg-type]

    async def go() -> tuple[Response, Response]:
        return (await call(app, "POST", "/v1/chat/completions", ASK),
                await call(app, "GET", "/metrics"))

    failed, metrics = trio.run(go, clock=trio.testing.MockClock(autojump_threshold=0))
    assert failed.status == 502
    m = samples(metrics)
    endpoint = "https://[redacted]@models.example:8443/v1"
    assert m[("stairflow_upstream_errors_total", (("endpoint", endpoint),
                                                  ("kind", "http_429")))] >= 1
    assert m[("stairflow_requests_total", (("graph", "moa"), ("route", "chat"),
                                           ("status", "502")))] == 1
    text = metrics.body.decode()
    assert "pa55word" not in text and "s3cret" not in text and "frag" not in text


@pytest.mark.parametrize(("url", "label"), [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://k3y@h/v1", "http://[redacted]@h/v1"),
    ("https://h/v1?key=abc", "https://h/v1"),
    ("https://h/openai#x", "https://h/openai")])
def test_endpoint_labels(url, label):
    assert endpoint_label(url) == label


def test_two_apps_in_one_process_have_their_own_metrics():
    async def go() -> tuple[Response, Response]:
        one = App({"moa": Served(MOA, Counting(MOA))})  # type: ignore[arg-type]
        two = App({"moa": Served(MOA, Counting(MOA))})  # type: ignore[arg-type]
        await call(one, "POST", "/v1/chat/completions", {**ASK, "max_tokens": 3})
        return await call(one, "GET", "/metrics"), await call(two, "GET", "/metrics")

    one, two = trio.run(go, clock=trio.testing.MockClock(autojump_threshold=0))
    tokens = ("stairflow_completion_tokens_total", (("graph", "moa"),))
    assert samples(one)[tokens] == 3 and samples(two)[tokens] == 0
