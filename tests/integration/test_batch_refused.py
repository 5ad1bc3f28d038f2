"""`stairflow batch` against an endpoint that refuses every connection: it stops soon with a
one-line reason and records nothing; once a server answers there, the same command does every
prompt. Real sockets: a port bound but never listening, then a real HTTP server."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.cli.test_cli import cli

from .fake_openai import fake_openai, stream

pytestmark = pytest.mark.integration

GRAPH = ('name = "one"\n[nodes.q]\nkind = "input"\n[nodes.p]\nkind = "llm"\nmax_tokens = 4\n'
         '[nodes.o]\nkind = "output"\n[[edges]]\nfrom = "q"\nto = "p"\n[[edges]]\nfrom = "p"\n'
         'to = "o"\n')


def test_a_batch_on_a_refusing_endpoint_stops_unrecorded_then_resumes(tmp_path: Path):
    graph, prompts, out = tmp_path / "g.toml", tmp_path / "p.jsonl", tmp_path / "r.jsonl"
    graph.write_text(GRAPH)
    prompts.write_text("".join(json.dumps(f"question {i}") + "\n" for i in range(50)))
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        code, _, err = cli("batch", str(graph), str(prompts), "-o", str(out), "--base-url",
                           url, "--model", "m", "--retries", "0")
    assert code == 1
    assert (f"stopped: 8 prompts in a row could not reach their endpoint (each run tried 1 "
            f"time; the last: node 'p' failed: {url} (model 'm'): cannot connect (after 2 "
            "retries); is the server running?); they are not recorded: once the server is "
            "up, run the same command again to resume") in err
    assert "0 done, 0 failed" in err and "50 left of 50" in err
    assert out.read_text() == ""
    with fake_openai(stream(" fine")) as fake:
        code, _, err = cli("batch", str(graph), str(prompts), "-o", str(out), "--base-url",
                           fake.base_url, "--model", "m", "--retries", "0")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(1, 51))
    assert {(r["output"], r["error"], r["error_kind"]) for r in rows} == {(" fine", None, None)}
