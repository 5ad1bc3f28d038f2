"""Rates measured on a real HTTP server with known timing: the report carries them within 15%,
and ``steps = "auto"`` sizes a node's steps from them (longer on a server with more latency).

The stand-in server (tests/integration/fake_openai.py: real sockets, real SSE) answers each
request after ``latency + prompt_tokens / prefill`` seconds and then writes a token every
``1 / decode`` seconds: the timing model of a real server, slept for real (this is the
server's own pace, not a test waiting for concurrency).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

import stairflow as sf
from tests.integration.fake_openai import Exchange, Script, fake_openai

pytestmark = pytest.mark.integration

CHARS_PER_TOKEN = 4


def _prompt_chars(body: Any) -> int:
    if "messages" in body:
        return sum(len(m["content"]) for m in body["messages"])
    return len(body["prompt"])


def timed(latency: float, prefill: float, decode: float, tokens: int = 16) -> Script:
    def script(ex: Exchange) -> None:
        prompt = _prompt_chars(ex.body) // CHARS_PER_TOKEN
        n = min(tokens, int(ex.body.get("max_tokens") or tokens))
        time.sleep(latency + prompt / prefill)  # the server reads the prompt
        ex.sse()
        for i in range(n):
            if i:
                time.sleep(1 / decode)  # and writes a token at a time
            ex.token(" w")
        ex.token("", "length" if n < tokens else "stop")
        ex.event({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                  "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": n,
                                           "total_tokens": prompt + n}})
        ex.done()
    return script


def one_node() -> sf.Graph:
    g = sf.Graph("one")
    q = g.input("q")
    a = g.llm("a", max_tokens=16)
    g.connect(q, a)
    g.connect(a, g.output("out"))
    return g


@contextmanager
def server(latency: float, prefill: float = 4000.0, decode: float = 50.0
           ) -> Iterator[sf.OpenAIBackend]:
    with fake_openai(timed(latency, prefill, decode)) as fake:
        backend = sf.OpenAIBackend(sf.Endpoint(fake.base_url, "m"), remember_rates=False)
        try:
            yield backend
        finally:
            trio.run(backend.aclose)


def warm(backend: sf.OpenAIBackend) -> sf.Report:
    """Requests with prompts of 100 to 3,000 tokens (the sizes tell latency from prefill; the
    first request of a process also pays the client's own start, which the median outvotes)."""
    report = None
    for size in (100, 500, 1000, 1500, 2000, 3000):
        report = sf.run(one_node(), "x" * (CHARS_PER_TOKEN * size), backend=backend)
    assert report is not None
    return report


def test_the_report_carries_rates_within_15_percent_of_the_server_s_timing() -> None:
    with server(latency=0.3, prefill=4000.0, decode=50.0) as backend:
        report = warm(backend)
    assert len(report.rates) == 1
    rates = report.rates[0]
    assert rates["model"] == "m"
    assert rates["requests"] == 6
    assert rates["latency_s"] == pytest.approx(0.3, rel=0.15)
    assert rates["prefill_tps"] == pytest.approx(4000.0, rel=0.15)
    assert rates["decode_tps"] == pytest.approx(50.0, rel=0.15)
    assert report.to_dict()["rates"] == [dict(rates)]


def _first_budget(backend: sf.OpenAIBackend) -> int:
    """The budget of an auto-sized node's first step, taken while its input still streams,
    read from its trace."""
    g = sf.Graph("auto")
    q = g.input("q")
    p = g.llm("p", max_tokens=16)
    a = g.llm("a", steps="auto", max_tokens=4096)
    g.connect(q, p)
    g.connect(p, a, trigger=sf.tokens(2))
    g.connect(a, g.output("out"))
    report = sf.run(g, "x" * 400, backend=backend)
    steps = [e for e in report.trace.of("step_start") if e.node == "a"]
    assert not steps[0].data["final"]  # an early step, sized by the rates
    sent = [e for e in report.trace.of("request_sent") if e.node == "a"]
    return int(sent[0].data["max_tokens"])


def test_auto_steps_are_longer_on_a_server_with_more_latency() -> None:
    budgets = {}
    for latency in (0.02, 1.0):
        with server(latency=latency) as backend:
            before = backend.rates("a")
            warm(backend)
            rates = backend.rates("a")
            assert before is None
            assert rates is not None
            assert rates.latency_s == pytest.approx(latency, rel=0.15, abs=0.01)
            budgets[latency] = _first_budget(backend)
    assert budgets[1.0] > 2 * budgets[0.02]
