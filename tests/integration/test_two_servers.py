"""Mixture-of-Agents across two real llama-server processes: the proposers' model on one, the
aggregator's on the other (behind an API key), chosen by the graph file alone.

Each server serves the local model under its own name (``--alias``), so a request that went
to the wrong server would fail the backend's model check; each server's log shows the
requests it answered. The key comes from the variable the node names and appears nowhere
in what stairflow prints or records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import stairflow as sf

from .conftest import Server, start_server

pytestmark = pytest.mark.integration

KEY = "sk-agg-7f3a9c2e51d4"  # what the aggregator's server demands
EXE = str(Path(sys.executable).with_name("stairflow"))


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    proposers = start_server("proposer-model", slots=3)
    aggregator = start_server("aggregator-model", api_key=KEY, slots=1)
    yield proposers, aggregator
    proposers.stop()
    aggregator.stop()


def graph_file(tmp_path: Path, proposers: Server, aggregator: Server) -> Path:
    path = tmp_path / "two-servers.toml"
    nodes = "".join(textwrap.dedent(f"""
        [nodes.p{i}]
        kind = "llm"
        base_url = "{proposers.base_url}"
        model = "proposer-model"
        """) for i in (1, 2, 3))
    path.write_text(textwrap.dedent("""
        name = "two-servers"
        default_input = "Why is the sky blue?"

        [defaults]
        max_tokens = 48
        continuation = "completions"
        prompt_format = "document"

        [nodes.question]
        kind = "input"
        """) + nodes + textwrap.dedent(f"""
        [nodes.agg]
        kind = "llm"
        prompt = "moa-aggregate"
        base_url = "{aggregator.base_url}"
        model = "aggregator-model"
        api_key_env = "SF_AGG_KEY"
        steps = [16, 32]

        [nodes.answer]
        kind = "output"

        [[edges]]
        from = "question"
        to = ["p1", "p2", "p3"]

        [[edges]]
        from = ["p1", "p2", "p3"]
        to = "agg"
        trigger = {{ tokens = [8, 16] }}

        [[edges]]
        from = "agg"
        to = "answer"
        """))
    return path


def posts(server: Server) -> int:
    """Completion requests the server has started so far (from its own log)."""
    log = server.log.read_text(errors="replace")
    return sum(1 for line in log.splitlines() if "launch_slot_" in line)


def test_the_graph_file_alone_routes_each_node_to_its_server(servers, tmp_path):
    proposers, aggregator = servers
    graph = graph_file(tmp_path, proposers, aggregator)
    env = {**os.environ, "SF_AGG_KEY": KEY,
           # the local model is not needed: were it asked for, this would fail the run
           "STAIRFLOW_LLAMA_SERVER": str(tmp_path / "no-llama-server")}
    before = posts(proposers), posts(aggregator)
    trace = tmp_path / "trace.json"
    result = subprocess.run([EXE, "run", str(graph), "--json", "--trace", str(trace)],
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["output"].strip() and not report["simulated"]
    assert report["backend"].startswith("openai (2 endpoints")
    calls = {n: report["nodes"][n]["calls"] for n in ("p1", "p2", "p3", "agg")}
    # the proposers' server answered the proposers' requests, the aggregator's the aggregator's
    assert posts(proposers) - before[0] == calls["p1"] + calls["p2"] + calls["p3"] >= 3
    assert posts(aggregator) - before[1] == calls["agg"] >= 1
    # a staircase: the aggregator's first request left before the proposers had all ended
    # (how many steps it then takes is the model's choice: it may stop in the first one)
    events = json.loads(trace.read_text())["events"]
    agg_sent = min(e["t"] for e in events if e["kind"] == "request_sent" and e["node"] == "agg")
    assert agg_sent < max(e["t"] for e in events
                          if e["kind"] in ("node_end", "node_cancel") and e["node"] != "agg"
                          and e["node"] in ("p1", "p2", "p3"))
    for text in (result.stdout, result.stderr, trace.read_text()):
        assert KEY not in text


def test_the_same_graph_runs_from_python_with_no_backend_argument(servers, tmp_path,
                                                                  monkeypatch):
    proposers, aggregator = servers
    monkeypatch.setenv("SF_AGG_KEY", KEY)
    monkeypatch.setenv("STAIRFLOW_LLAMA_SERVER", str(tmp_path / "no-llama-server"))
    report = sf.run(sf.load_graph(graph_file(tmp_path, proposers, aggregator)))
    assert report.output.strip() and report.nodes["agg"].calls >= 1  # it may stop in one step
    assert report.ttft_s is not None
    assert report.ttft_s < max(report.nodes[p].done_s or 0 for p in ("p1", "p2", "p3"))


def test_a_wrong_key_fails_naming_the_node_and_never_shows_the_key(servers, tmp_path):
    proposers, aggregator = servers
    graph = graph_file(tmp_path, proposers, aggregator)
    wrong = "sk-wrong-0b8e77d1c2"
    env = {**os.environ, "SF_AGG_KEY": wrong}
    trace = tmp_path / "trace.json"
    result = subprocess.run([EXE, "run", str(graph), "--trace", str(trace)], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1
    assert "node 'agg' failed" in result.stderr and "401" in result.stderr
    assert "SF_AGG_KEY" in result.stderr  # the hint names the variable, not its value
    for text in (result.stdout, result.stderr, trace.read_text()):
        assert wrong not in text and KEY not in text


def test_a_batch_routes_each_node_to_its_server_and_sizes_itself_to_their_slots(servers,
                                                                                 tmp_path):
    proposers, aggregator = servers
    graph = graph_file(tmp_path, proposers, aggregator)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"Why is the sky blue?"\n{"id": "tides", "prompt": "Explain tides."}\n'
                       '{"messages": [{"role": "user", "content": "Name a tree."}]}\n')
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "SF_AGG_KEY": KEY,
           "STAIRFLOW_LLAMA_SERVER": str(tmp_path / "no-llama-server")}
    before = posts(proposers), posts(aggregator)
    result = subprocess.run([EXE, "batch", str(graph), str(prompts), "-o", str(out)], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    # 3 slots for 3 proposers, 1 for the aggregator: one run at a time keeps every node pinned
    assert "up to 1 runs at once" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(str(r["id"]) for r in rows) == ["1", "3", "tides"]
    assert all(r["error"] is None and r["output"].strip() and not r["simulated"] for r in rows)
    assert posts(proposers) - before[0] >= 9 and posts(aggregator) - before[1] >= 3
    assert KEY not in out.read_text() + result.stderr + result.stdout
