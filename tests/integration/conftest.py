"""A real llama-server with the local model, started once for the integration tests."""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# the test servers are the local model's own llama-server command line (private: this is
# test infrastructure, not something a user calls)
from stairflow._backends.local import LOCAL_MODEL, free_port, server_command

__all__ = ["LOCAL_MODEL", "Server", "start_server"]


@dataclass
class Server:
    base_url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return bytes(r.read())


def start_server(alias: str = LOCAL_MODEL, api_key: str | None = None, slots: int = 4) -> Server:
    """A llama-server serving the local model under the name ``alias``; with ``api_key``,
    every request must carry it."""
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="stairflow-it-"))
    cmd = server_command(port, tmp, slots=slots, ctx=8192 * slots)
    cmd[cmd.index("--alias") + 1] = alias
    if api_key is not None:
        cmd += ["--api-key", api_key]
    with (tmp / "server.log").open("wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    server = Server(f"http://127.0.0.1:{port}/v1", port, proc, tmp / "server.log")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # an external process: poll its health endpoint
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited: {(tmp / 'server.log').read_text()[-2000:]}")
        try:
            if server.get("/health"):  # /health needs no key
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError("llama-server did not become healthy in 120 s")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = start_server()
    yield s
    s.stop()


@pytest.fixture
def own_server() -> Iterator[Server]:
    """A server of the test's own, for tests that kill it."""
    s = start_server()
    yield s
    s.stop()
