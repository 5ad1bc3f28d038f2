"""The latency proxy (benchmarks/latency_proxy.py) in front of the real llama-server: it adds
its delay to every request and nothing else, and stairflow measures the added latency and
keeps the staircase on such a server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import stairflow as sf
from stairflow import Endpoint, OpenAIBackend

from .conftest import LOCAL_MODEL, Server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DELAY_S = 0.5


@pytest.fixture
def proxy(server: Server) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "latency_proxy.py"),
                             "--upstream", f"http://127.0.0.1:{server.port}",
                             "--delay", str(DELAY_S)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once it listens
    assert line.startswith("listening on "), line
    yield line.split()[-1] + "/v1"
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


def _backend(url: str) -> OpenAIBackend:
    return OpenAIBackend(Endpoint(url, LOCAL_MODEL, None, "completions", "document",
                                  extra_body={"ignore_eos": True}), remember_rates=False)


def _moa() -> sf.Graph:
    g = sf.Graph("moa")
    q = g.input("q")
    ps = [g.llm(f"p{i}", max_tokens=64, temperature=0.0) for i in range(3)]
    agg = g.llm("agg", prompt="moa-aggregate", max_tokens=32, temperature=0.0)
    g.connect(q, ps)
    g.connect(ps, agg, trigger=sf.tokens([8, 16, 32, 64]))
    g.connect(agg, g.output("answer"))
    return g


def test_the_proxy_adds_its_delay_and_streams_unbuffered(server: Server, proxy: str) -> None:
    reports = {}
    for name, url in (("direct", server.base_url), ("proxy", proxy)):
        backend = _backend(url)
        reports[name] = [sf.run(_moa(), "Why is the sky blue?", backend=backend,
                                mode="normal") for _ in range(2)][-1]
        trio.run(backend.aclose)
    direct, through = reports["direct"].nodes["p1"], reports["proxy"].nodes["p1"]
    assert direct.ttft_s is not None and through.ttft_s is not None
    assert through.ttft_s - direct.ttft_s == pytest.approx(DELAY_S, abs=0.25)
    # tokens keep the server's pace: the proxy buffers nothing
    assert direct.done_s is not None and through.done_s is not None
    writing_direct, writing_proxy = direct.done_s - direct.ttft_s, through.done_s - through.ttft_s
    assert writing_proxy < 1.5 * writing_direct + 0.1


def test_rates_measured_through_the_proxy_include_its_latency(proxy: str) -> None:
    backend = _backend(proxy)
    try:
        for mode in ("normal", "staircase", "normal", "staircase"):
            report = sf.run(_moa(), "Why is the sky blue?", backend=backend, mode=mode)
            if mode == "normal":
                normal = report
            else:
                staircase = report
        rates = report.rates[0]
        assert rates["latency_s"] is not None
        assert rates["latency_s"] == pytest.approx(DELAY_S, abs=0.25)
        assert rates["decode_tps"] is not None and rates["decode_tps"] > 5
        assert rates["prefill_tps"] is not None and rates["prefill_tps"] > 0
        assert staircase.ttft_s is not None and normal.ttft_s is not None
        assert staircase.ttft_s < normal.ttft_s
    finally:
        trio.run(backend.aclose)
