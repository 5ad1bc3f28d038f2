"""Against a real llama-server speaking the real OpenAI protocol (run by .ci/run).

The local model is a small base model run on concurrent slots, so these tests assert
structure and timing relations, never exact text (except one greedy request at a time).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import trio

import stairflow as sf
from stairflow import Endpoint, Message, OpenAIBackend

from .conftest import LOCAL_MODEL, Server

pytestmark = pytest.mark.integration

Q = (Message("user", "Question: Why is the sky blue?"),)


def backend(url: str, continuation: str = "chat-prefix", **kw: object) -> OpenAIBackend:
    return OpenAIBackend(Endpoint(url, LOCAL_MODEL, None, continuation,  # type: ignore[arg-type]
                                  "document", **kw))  # type: ignore[arg-type]


async def collect(b: OpenAIBackend, prefix: str = "", n: int = 16) -> tuple[str, sf.Usage, str | None]:
    req = sf.Request("node", Q, prefix, n, 0.0, LOCAL_MODEL)
    async with b.open_stream(req) as stream:
        text = "".join([t async for t in stream])
    await b.aclose()
    return text, stream.usage, stream.finish_reason


@pytest.mark.parametrize("mode", ["chat-prefix", "completions", "chat-restate"])
def test_streaming_with_usage(server: Server, mode: str):
    text, usage, finish = trio.run(collect, backend(server.base_url, mode))
    assert text.strip()
    assert finish in ("stop", "length")
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16


def test_continuing_a_partial_answer_picks_up_where_it_stopped(server: Server):
    async def main() -> tuple[str, str, str]:
        b = backend(server.base_url, "completions")
        whole, _, _ = await collect(b, "", 24)
        first, _, _ = await collect(b, "", 12)
        rest, _, _ = await collect(b, first, 12)
        return whole, first, rest

    whole, first, rest = trio.run(main)
    # greedy, one request at a time: the same prompt gives the same start ...
    assert whole.startswith(first)
    # ... and the continuation carries only new text, which goes on where the first part
    # stopped (its first word is the one the whole answer has there)
    assert rest.strip() and not rest.strip().startswith(first.strip())
    # (its punctuation may differ: the re-read prompt splits into tokens differently, and the
    # portable build's arithmetic can tip a greedy near-tie)
    punct = ".,;:!?\"'"
    assert rest.split()[0].strip(punct) == whole[len(first):].split()[0].strip(punct)


def test_chat_prefix_continuation_does_not_repeat_the_prefix(server: Server):
    async def main() -> str:
        text, _, _ = await collect(backend(server.base_url, "chat-prefix"),
                                   "The sky is blue because", 12)
        return text

    text = trio.run(main)
    assert text.strip() and not text.strip().startswith("The sky is blue because")


def local_graph(max_tokens: int = 48) -> sf.FrozenGraph:
    return sf.resolve_graph("moa").capped(max_tokens)


# ignore_eos: every node writes exactly max_tokens, so timings do not hinge on when a small
# base model happens to stop
STEADY = {"ignore_eos": True}


def on(server: Server, graph: sf.FrozenGraph) -> Any:
    """Every node of ``graph`` on ``server``, through the public backend resolution."""
    return sf.open_backend(graph, "openai", base_url=server.base_url, model=LOCAL_MODEL,
                           continuation="completions", prompt_format="document",
                           extra_body=STEADY)


def run_local(server: Server, graph: sf.FrozenGraph, mode: str = "staircase") -> sf.Report:
    async def main() -> sf.Report:
        async with on(server, graph) as b:
            with trio.fail_after(300):
                async with sf.open_run(graph, "Why is the sky blue?", backend=b,
                                       mode=mode) as run:
                    pass
            assert b.active == 0
        return run.report()

    return trio.run(main)


def test_three_proposers_and_an_aggregator_concurrently(server: Server):
    report = run_local(server, local_graph())
    assert not report.simulated and report.output.strip()
    for node in ("p1", "p2", "p3", "agg"):
        n = report.nodes[node]
        assert n.tokens > 0 and n.calls >= 1 and n.prompt_tokens > 0
    firsts = sorted(report.nodes[p].ttft_s for p in ("p1", "p2", "p3"))
    lasts = sorted(report.nodes[p].done_s for p in ("p1", "p2", "p3"))
    assert firsts[-1] < lasts[0]  # the proposers really ran side by side


def test_staircase_output_starts_before_the_slowest_proposer_ends(server: Server):
    report = run_local(server, local_graph(64))
    slowest = max(report.nodes[p].done_s for p in ("p1", "p2", "p3"))
    assert report.ttft_s < slowest


def slots_busy(server: Server) -> int:
    return sum(1 for s in json.loads(server.get("/slots")) if s.get("is_processing"))


def test_cancelling_a_run_frees_the_server_slots(server: Server):
    graph = local_graph(400)
    busy: list[int] = []
    active: list[int] = []

    async def main() -> None:
        async with on(server, graph) as b:
            async with sf.open_run(graph, "Why is the sky blue?", backend=b) as run:
                async for event in run:
                    if event.kind == "output":
                        busy.append(slots_busy(server))
                        run.cancel()
            active.append(b.active)
        assert run.trace.events[-1].kind == "run_cancel"

    trio.run(main)
    assert busy and busy[0] >= 3  # proposers (writing 400 tokens) and aggregator were busy
    assert active == [0]
    deadline = time.monotonic() + 5
    while slots_busy(server) and time.monotonic() < deadline:  # the server's own bookkeeping
        time.sleep(0.1)
    assert slots_busy(server) == 0


def test_server_killed_mid_stream_is_a_clear_error_not_a_hang(own_server: Server):
    graph = local_graph(400)

    async def main() -> None:
        with trio.fail_after(60):
            async with on(own_server, graph) as b, sf.open_run(
                    graph, "Why is the sky blue?", backend=b) as run:
                async for event in run:
                    if event.kind == "first_token" and event.node == "p1":
                        own_server.process.kill()

    with pytest.raises(sf.NodeError) as info:
        trio.run(main)
    message = str(info.value)
    assert info.value.node in ("p1", "p2", "p3", "agg")
    assert own_server.base_url in message and LOCAL_MODEL in message


def test_a_dropped_proposer_lets_the_run_finish_when_its_server_dies(own_server: Server,
                                                                      server: Server):
    g = sf.Graph("two-servers", defaults={"max_tokens": 48, "model": LOCAL_MODEL,
                                          "continuation": "completions",
                                          "prompt_format": "document"})
    g.input("q")
    g.llm("healthy", base_url=server.base_url)
    g.llm("doomed", base_url=own_server.base_url, on_error="drop", max_tokens=400)
    g.llm("agg", base_url=server.base_url, prompt="moa-aggregate")
    g.connect("q", ["healthy", "doomed"])
    g.connect(["healthy", "doomed"], "agg")
    g.connect("agg", g.output("out"))
    fg = g.build()

    async def main() -> sf.Report:
        with trio.fail_after(120):
            async with sf.open_run(fg, "Why is the sky blue?", extra_body=STEADY) as run:
                async for event in run:
                    if event.kind == "first_token" and event.node == "doomed":
                        own_server.process.kill()
        return run.report()

    report = trio.run(main)
    assert report.trace.of("node_error", "doomed")[0].data["dropped"]
    assert report.output.strip()


def test_unreachable_endpoint_and_wrong_model_are_clear_errors(server: Server):
    async def ask(url: str, model: str) -> None:
        b = OpenAIBackend(Endpoint(url, model, None, "chat-prefix", "chatml", 5.0, 0))
        async with b, b.open_stream(sf.Request("p1", Q, "", 4, 0.0, model)) as stream:
            async for _ in stream:
                pass

    with pytest.raises(sf.BackendError) as info:
        trio.run(ask, "http://127.0.0.1:9/v1", LOCAL_MODEL)
    assert str(info.value) == (f"node 'p1' failed: http://127.0.0.1:9/v1 (model '{LOCAL_MODEL}'): "
                               "cannot connect; is the server running?")
    with pytest.raises(sf.BackendError) as info:
        trio.run(ask, server.base_url, "gpt-17")
    assert "(model 'gpt-17'): the server has no such model; it serves gemma-3-270m" in str(info.value)


def test_api_keys_never_appear_in_errors(server: Server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STAIRFLOW_TEST_KEY", "sk-secret-123")

    async def ask() -> None:
        b = OpenAIBackend(Endpoint("http://127.0.0.1:9/v1", LOCAL_MODEL, "STAIRFLOW_TEST_KEY",
                                   "chat-prefix", "chatml", 5.0, 0))
        async with b, b.open_stream(sf.Request("p1", Q, "", 4, 0.0, LOCAL_MODEL)) as stream:
            async for _ in stream:
                pass

    with pytest.raises(sf.BackendError) as info:
        trio.run(ask)
    assert "sk-secret-123" not in str(info.value) and "sk-secret" not in repr(info.value)


def test_cli_runs_moa_on_the_local_model_and_prints_ttft(server: Server):
    import io

    from stairflow._cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(["run", "moa", "--base-url", server.base_url, "--model", LOCAL_MODEL,
                 "--continuation", "completions", "--prompt-format", "document",
                 "--max-tokens", "32", "--json"], out=out, err=err)
    assert code == 0, err.getvalue()
    data = json.loads(out.getvalue())
    assert data["simulated"] is False and data["ttft_s"] > 0 and data["llm_calls"] >= 4


def test_default_backend_starts_and_stops_its_own_local_server(tmp_path, monkeypatch):
    import io
    import tempfile

    from stairflow._cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the server's files go
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no `stairflow serve` to reuse
    out, err = io.StringIO(), io.StringIO()
    code = main(["run", "moa", "--max-tokens", "16"], out=out, err=err)
    assert code == 0, err.getvalue()
    assert err.getvalue().count("[local model gemma-3-270m (a small base model)") == 1
    assert "TTFT" in err.getvalue() and out.getvalue().strip()
    assert not list(tmp_path.glob("stairflow-llama-*"))  # its working directory is gone


def test_probe_reports_the_continuation_modes(server: Server):
    import io

    from stairflow._cli import main

    out = io.StringIO()
    code = main(["probe", server.base_url, "--model", LOCAL_MODEL], out=out)
    lines = out.getvalue().splitlines()
    assert code == 0
    assert [line.split()[0] for line in lines[:3]] == ["chat-prefix", "completions",
                                                      "chat-restate"]
    assert lines[0].split()[:2] == ["chat-prefix", "works"]  # llama.cpp continues natively
    assert lines[-3] == "use: --continuation chat-prefix"
    # and the endpoint's rates, measured on prompts of four sizes, remembered for later runs
    assert lines[-2].startswith(f"rates: {LOCAL_MODEL} at {server.base_url}: latency ")
    assert "?" not in lines[-2]
    assert lines[-2].endswith(" requests)")
    # and its slots, which nodes are pinned to (the test server has 4)
    assert lines[-1].startswith("prefix cache: llama.cpp, 4 slots; each node is pinned")


def test_serve_keeps_a_server_that_later_runs_reuse(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from stairflow._backends.local import free_port

    exe = str(Path(sys.executable).with_name("stairflow"))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    port = free_port()
    serve = subprocess.Popen([exe, "serve", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()  # printed once the server is healthy
        assert f"http://127.0.0.1:{port}/v1" in line
        result = subprocess.run([exe, "run", "moa", "--max-tokens", "8", "--json"], env=env,
                                capture_output=True, text=True, timeout=120, check=True)
        backend = json.loads(result.stdout)["backend"]
        assert backend == f"local gemma-3-270m at http://127.0.0.1:{port}/v1"
    finally:
        serve.terminate()
        serve.wait(30)
        serve.stdout.close()  # type: ignore[union-attr]
    assert serve.returncode == 0
    assert not (tmp_path / "stairflow" / "server.json").exists()  # it cleaned up


def test_a_batch_on_the_embedded_local_model_starts_it_once(tmp_path, monkeypatch):
    import io
    import tempfile

    from stairflow._cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no `stairflow local` to reuse
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"Why is the sky blue?"\n"Explain tides."\n"Name a tree."\n')
    out, err = io.StringIO(), io.StringIO()
    results = tmp_path / "r.jsonl"
    code = main(["batch", "moa", str(prompts), "-o", str(results), "--max-tokens", "16",
                 "--mode", "both"], out=out, err=err)
    assert code == 0, err.getvalue()
    text = err.getvalue()
    assert text.count("[local model gemma-3-270m (a small base model)") == 1
    # 4 slots, 4 llm nodes: one run at a time, each node on its own slot
    assert "up to 1 runs at once" in text and "6 done, 0 failed" in text
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 6 and all(r["output"].strip() and not r["simulated"] for r in rows)
    assert all(r["cached_tokens"] >= 0 and r["llm_calls"] >= 4 for r in rows)
    assert not list(tmp_path.glob("stairflow-llama-*"))  # the server it started is gone
