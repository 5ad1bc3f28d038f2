"""`stairflow serve` as a real process, used through the official `openai` client.

On the simulated backend (real time) and on a real llama-server: the answer streams with the
graph's own TTFT, and clients that go away leave no model request open.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import LOCAL_MODEL, Server

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Why is the sky blue?"}]
PROCS: dict[str, subprocess.Popen[str]] = {}


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``stairflow serve ARGS --port 0`` in its own process; yields its /v1 URL (the process
    in ``PROCS[url]``)."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: nothing blocks its logging
        proc = subprocess.Popen([sys.executable, "-m", "stairflow", "serve", *args, "--port",
                                 "0"], stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, **(env or {})})
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # printed once it listens
            log.seek(0)
            assert "/v1" in line, log.read()
            url = line.split(" at ")[1].split()[0]
            PROCS[url] = proc
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=15)
        assert proc.returncode == 0  # SIGTERM stops it cleanly


def health(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=5) as r:
        data: dict[str, object] = json.load(r)
        return data


def stream_ttft(client: openai.OpenAI, **kw: object) -> tuple[float, float, str]:
    """The client's time to the first text, the graph's own TTFT, and the answer."""
    start = time.perf_counter()
    first, text, graph_ttft = None, "", None
    for chunk in client.chat.completions.create(
            model="moa", messages=ASK, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, max_tokens=16,  # ends the run soon after
            **kw):  # type: ignore[call-overload]
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - start
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            graph_ttft = (chunk.usage.model_extra or {})["stairflow"]["ttft_s"]
    assert first is not None and graph_ttft is not None
    return first, graph_ttft, text


def test_the_openai_client_streams_with_the_graphs_own_ttft_simulated():
    with serving("moa", "--backend", "sim") as url:
        client = openai.OpenAI(base_url=url, api_key="unused")
        assert [m.id for m in client.models.list()] == ["moa"]
        stream_ttft(client)  # the first request also opens the connection
        for _ in range(3):
            client_ttft, graph_ttft, text = stream_ttft(client)
            # the simulated staircase TTFT is 0.244 s; the server streams it as it comes (a
            # buffered answer would arrive after the whole 7.8-s run)
            assert graph_ttft == pytest.approx(0.244, abs=0.03)
            assert 0 <= client_ttft - graph_ttft < 0.05
            assert text
        whole = client.chat.completions.create(model="moa", messages=ASK,  # type: ignore[arg-type]
                                               max_tokens=5)
        assert whole.usage is not None and whole.usage.completion_tokens == 5
        assert whole.system_fingerprint == "stairflow-simulated"


def test_a_wrong_key_and_an_unknown_model_through_the_client():
    with serving("moa", "--backend", "sim", "--server-key-env", "SERVE_KEY",
                 env={"SERVE_KEY": "k3y"}) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="nope").models.list()
        client = openai.OpenAI(base_url=url, api_key="k3y")
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="gpt-4", messages=ASK)  # type: ignore[arg-type]


def local_args(server: Server) -> list[str]:
    return ["--base-url", server.base_url, "--model", LOCAL_MODEL, "--continuation",
            "completions", "--prompt-format", "document", "--max-tokens", "48"]


def test_the_openai_client_streams_with_the_graphs_own_ttft_on_the_local_model(
        server: Server):
    with serving("moa", *local_args(server)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused")
        stream_ttft(client)
        client_ttft, graph_ttft, text = stream_ttft(client)
        assert 0 <= client_ttft - graph_ttft < 0.05 and text


def slots_busy(server: Server) -> int:
    return sum(1 for s in json.loads(server.get("/slots")) if s.get("is_processing"))


def test_a_hundred_cancelled_streams_leave_no_model_request_open(server: Server):
    with serving("moa", *local_args(server)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        busy_seen: list[int] = []

        def leave_early(n: int) -> None:
            stream = client.chat.completions.create(model="moa", messages=ASK, stream=True)  # type: ignore[arg-type]
            next(iter(stream))  # the answer has begun: the run is under way
            # the client's own think time, not a wait for the server: it leaves at a moment of
            # its choosing, with the proposers' requests queued, prefilling or writing
            time.sleep(random.Random(n).uniform(0.0, 0.6))
            busy_seen.append(slots_busy(server))
            stream.close()  # the client goes away mid-answer

        for round_ in range(10):
            threads = [threading.Thread(target=leave_early, args=(round_ * 10 + k,))
                       for k in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert max(busy_seen) > 0  # the runs were talking to the model when they were left
        # stairflow's side, at once: no run in flight, no connection to the model server open
        # (every request the runs made was cancelled: none completed, so none was pooled)
        deadline = time.monotonic() + 0.5
        while (upstream_connections(PROCS[url].pid, server.port) or health(url)["runs_in_flight"]) \
                and time.monotonic() < deadline:  # another process's bookkeeping: poll it
            time.sleep(0.02)
        assert upstream_connections(PROCS[url].pid, server.port) == 0
        assert health(url)["runs_in_flight"] == 0
        # llama-server's side: it drops what it had queued for the closed connections when it
        # reaches them (about a second here)
        deadline = time.monotonic() + 10
        while slots_busy(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slots_busy(server) == 0


def upstream_connections(pid: int, port: int) -> int:
    """Open TCP connections from process ``pid`` to ``port`` on loopback (Linux /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    sockets = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:["):-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[9] in sockets and remote_port == port and fields[3] == "01":  # ESTABLISHED
                count += 1
    return count


def test_the_client_example_in_the_serving_docs_works(capsys: pytest.CaptureFixture[str]):
    docs = (Path(__file__).parents[2] / "docs" / "serving.md").read_text()
    (example,) = re.findall(r"```python client\n(.*?)```", docs, flags=re.S)
    with serving("moa", "--backend", "sim") as url:
        exec(compile(example.replace("http://127.0.0.1:8000/v1", url), "serving.md", "exec"),
             {})
    printed = capsys.readouterr().out
    assert "'llm_calls':" in printed and "'ttft_s':" in printed


def test_a_taken_port_and_a_public_address_without_a_key():
    with serving("moa", "--backend", "sim") as url:
        port = url.rsplit(":", 1)[1].split("/")[0]
        taken = subprocess.run([sys.executable, "-m", "stairflow", "serve", "moa", "--backend",
                                "sim", "--port", port], capture_output=True, text=True,
                               timeout=60, check=False)
        assert taken.returncode == 2
        assert taken.stderr.startswith(f"stairflow: error: cannot listen on 127.0.0.1:{port}")
    proc = subprocess.Popen([sys.executable, "-m", "stairflow", "serve", "moa", "--backend",
                             "sim", "--host", "0.0.0.0", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert "/v1" in proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "serving on 0.0.0.0 without --server-key-env" in err


def test_the_load_script_runs_and_reports_each_row(tmp_path):
    # a short run of the script that writes docs/serving.md's figures, into a copy
    doc = tmp_path / "serving.md"
    doc.write_text("before\n<!-- load:begin -->\nold\n<!-- load:end -->\nafter\n")
    script = Path(__file__).parents[2] / "benchmarks" / "serve_load.py"
    done = subprocess.run([sys.executable, str(script), "--seconds", "1", "--levels", "1,3",
                           "--write", str(doc)], capture_output=True, text=True, timeout=120,
                          check=True)
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| [13] \|", line)]
    assert len(rows) == 2 and all(line.endswith("| 0 |") for line in rows)  # no errors
    text = doc.read_text()
    assert text.startswith("before\n<!-- load:begin -->\nMeasured ") and "old" not in text
    assert text.endswith("<!-- load:end -->\nafter\n") and "the server and the client add" in text


def test_sigterm_ends_an_answer_in_progress_with_an_error_the_client_sees():
    with serving("moa", "--backend", "sim", "--shutdown-grace", "0.5") as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="moa", messages=ASK, stream=True)  # type: ignore[arg-type]

        def read_and_stop_the_server() -> None:
            for n, _ in enumerate(stream):
                if n == 4:  # the answer is under way: stop the server
                    os.kill(PROCS[url].pid, signal.SIGTERM)

        with pytest.raises(openai.APIError, match="shutting down"):
            read_and_stop_the_server()
        PROCS[url].wait(15)  # and it exits, cleanly (checked on leaving)


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url.removesuffix("/v1") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_through_hypercorn_parse_with_prometheus_client():
    from prometheus_client.parser import text_string_to_metric_families

    with serving("moa", "--backend", "sim") as url:
        client = openai.OpenAI(base_url=url, api_key="unused")
        client.chat.completions.create(model="moa", messages=ASK, max_tokens=5)  # type: ignore[arg-type]
        status, text = get(url, "/metrics")  # from loopback: no key needed
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"stairflow_runs_in_flight", "stairflow_requests", "stairflow_ttft_seconds",
            "stairflow_request_duration_seconds", "stairflow_prompt_tokens",
            "stairflow_completion_tokens", "stairflow_rate_limited",
            "stairflow_upstream_errors"} <= set(families)
    (done,) = [s for s in families["stairflow_requests"].samples
               if s.name == "stairflow_requests_total" and s.labels["route"] == "chat"]
    assert done.labels == {"route": "chat", "graph": "moa", "status": "200"} and done.value == 1


def test_metrics_with_a_metrics_key():
    with serving("moa", "--backend", "sim", "--metrics-key-env", "METRICS_KEY",
                 env={"METRICS_KEY": "m3trics"}) as url:
        assert get(url, "/metrics")[0] == 401
        status, text = get(url, "/metrics", {"Authorization": "Bearer m3trics"})
    assert status == 200 and "stairflow_runs_in_flight" in text


def test_a_websocket_handshake_under_hypercorn_gets_a_json_error():
    with serving("moa", "--backend", "sim") as url:
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
            answer = b""
            while b"}}" not in answer:
                part = s.recv(4096)
                if not part:
                    break
                answer += part
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert json.loads(body)["error"]["code"] == "websocket_not_supported"


BIG = """name = "big"
[sim]
latency_s = 0.0
decode_tps = 200000
output_tokens = 200000
[defaults]
max_tokens = 200000
[nodes.q]
kind = "input"
[nodes.a]
kind = "llm"
[nodes.out]
kind = "output"
[[edges]]
from = "q"
to = "a"
[[edges]]
from = "a"
to = "out"
"""


def test_a_client_that_stops_reading_frees_its_run_slot_after_the_send_timeout(tmp_path):
    # a long simulated answer (200,000 tokens, written at once) to a client that reads
    # nothing: Hypercorn's write blocks once the socket buffers are full, and cannot be
    # cancelled; the app lets the run and its slot go after --send-timeout
    graph = tmp_path / "big.toml"
    graph.write_text(BIG)
    with serving(str(graph), "--backend", "sim", "--send-timeout", "1", "--max-unsent-bytes",
                 "1000000000", "--shutdown-grace", "0.5") as url:
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        body = json.dumps({"model": "big", "messages": ASK, "stream": True}).encode()
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            deadline = time.monotonic() + 30
            while health(url)["runs_in_flight"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)  # another process: poll it
            assert health(url)["runs_in_flight"] == 1  # under way, then stuck
            while health(url)["runs_in_flight"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert health(url)["runs_in_flight"] == 0  # the slot is free; the client still
            # holds its connection, reading nothing


def test_sigterm_ends_a_whole_answer_in_progress_with_a_503():
    with serving("moa", "--backend", "sim", "--shutdown-grace", "0.5") as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        errors: list[openai.APIStatusError] = []

        def ask() -> None:  # the simulated answer takes 7.8 s
            try:
                client.chat.completions.create(model="moa", messages=ASK)  # type: ignore[arg-type]
            except openai.APIStatusError as exc:
                errors.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        deadline = time.monotonic() + 10
        while not health(url)["runs_in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)  # another process: poll it
        os.kill(PROCS[url].pid, signal.SIGTERM)
        asking.join(15)
        PROCS[url].wait(15)  # and it exits, cleanly (checked on leaving)
    (error,) = errors
    assert error.status_code == 503 and "shutting down" in error.message
    assert error.code == "server_shutdown"
