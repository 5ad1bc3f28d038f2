"""`stairflow local start|stop|status` judge a note the same way, and an unusable cache
directory is a one-line error naming it (no model server is started here)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stairflow._backends.openai import rates_file
from stairflow._backends.probe import state_file
from tests.cli.test_cli import cli


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def healthy_port() -> Iterator[int]:
    """Something answering /health on loopback, as a server on the note's port would."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def process(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def write_note(port: int, pid: int) -> None:
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(json.dumps({"base_url": f"http://127.0.0.1:{port}/v1",
                                        "port": port, "model": "gemma-3-270m", "pid": pid}))


@pytest.mark.integration  # the note's server is asked for its health, on loopback
def test_a_healthy_port_under_a_pid_not_ours_is_a_stale_note_for_status_and_stop():
    with healthy_port() as port, process() as other:  # someone else's program
        write_note(port, other.pid)
        code, out, _ = cli("local", "status")
        assert code == 1
        assert out == ("not running ('stairflow local start' starts it; the note a stopped "
                       "server left is stale: 'stairflow local stop' removes it)\n")
        code, out, _ = cli("local", "stop")
        assert (code, out) == (0, "no local model server is running (removed a stale note)\n")
        assert other.poll() is None and not state_file().exists()  # signalled nothing


@pytest.mark.integration
def test_a_healthy_port_under_our_own_server_is_running_for_status_and_stop():
    with healthy_port() as port, process("stairflow", "local", "start") as ours:
        write_note(port, ours.pid)
        code, out, _ = cli("local", "status")
        assert (code, out) == (0, f"running: gemma-3-270m at http://127.0.0.1:{port}/v1 "
                                  f"(pid {ours.pid})\n")
        reaper = threading.Thread(target=ours.wait)  # as its parent would: no zombie left
        reaper.start()
        code, out, _ = cli("local", "stop")
        reaper.join(5)
        assert (code, out) == (0, f"stopped (pid {ours.pid})\n")
        assert ours.returncode == -15


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_cache_path_that_is_a_file_is_a_one_line_error_naming_it(tmp_path, monkeypatch,
                                                                    foreground):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    code, _, err = cli("local", "start", *(["--foreground"] if foreground else []))
    assert code == 2
    assert err == (f"stairflow: error: cannot keep the local server's note in "
                   f"{tmp_path}/file/stairflow (Not a directory); set XDG_CACHE_HOME to a "
                   "writable directory\n")


@pytest.mark.parametrize("value", ["", "relative/cache"])
def test_an_empty_or_relative_cache_home_is_ignored_as_the_xdg_spec_says(tmp_path, monkeypatch,
                                                                         value):
    monkeypatch.setenv("XDG_CACHE_HOME", value)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_file() == tmp_path / ".cache" / "stairflow" / "server.json"
    assert rates_file() == tmp_path / ".cache" / "stairflow" / "rates.json"  # the same rule
